"""DVC stage `finetune`: quantization-aware fine-tuning at the `finetune` group size and bits."""

from omegaconf import OmegaConf

from fgq_pipeline import tracking
from fgq_pipeline.experiment import resolve_path, write_json
from fgq_pipeline.params import load_params
from fgq_pipeline.tasks import run_finetune
from fgq_pipeline.validation import exit_on_user_error


@exit_on_user_error("stage finetune")
def main() -> None:
    cfg = load_params()
    with tracking.tracked_run(cfg.mlflow.experiment, "finetune", OmegaConf.masked_copy(cfg, ["quant", "finetune", "trainer", "calibration", "seed"])):
        metrics = run_finetune(cfg, checkpoint_dir=str(resolve_path(cfg.paths.finetune_checkpoints)),
                               weights_path=resolve_path(cfg.paths.finetuned_weights))
        tracking.log_metrics(metrics)
        write_json(cfg.paths.finetune_metrics, metrics)


if __name__ == "__main__":
    main()
