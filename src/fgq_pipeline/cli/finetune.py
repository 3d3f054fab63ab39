"""`fgq-finetune`: quantization-aware fine-tuning at `finetune.group_size` / `finetune.act_bits`;
checkpoints and the fine-tuned weights go to the job's run directory."""

from ..tasks import run_finetune
from .app import hydra_app

FINETUNED_WEIGHTS = "finetuned.safetensors"

main = hydra_app("fgq-finetune", lambda cfg, run_dir: run_finetune(
    cfg, checkpoint_dir=str(run_dir / "checkpoints"), weights_path=run_dir / FINETUNED_WEIGHTS))

if __name__ == "__main__":
    main()
