"""`fgq-finetune`: quantization-aware fine-tuning at `finetune.group_size` / `finetune.act_bits`;
checkpoints and the fine-tuned weights go to the job's run directory."""

from ..tasks.finetune import run_finetune
from ..tasks.ptq_grid import finetune_quant_config
from ..tasks.records import run_name
from .app import hydra_app, job_dir

FINETUNED_WEIGHTS = "finetuned.safetensors"


def finetune_job(cfg, log) -> dict:
    return run_finetune(cfg, log, checkpoint_dir=job_dir() / "checkpoints", weights_path=job_dir() / FINETUNED_WEIGHTS,
                        split=cfg.evaluate_on)


main = hydra_app("fgq-finetune", "finetune", finetune_job,
                 lambda cfg: f"finetune {run_name(finetune_quant_config(cfg))} {cfg.finetune.epochs} epochs")

if __name__ == "__main__":
    main()
