"""DVC stage `finetune`: quantization-aware fine-tuning at the `finetune` group size and bits."""

from fgq_pipeline.project import resolve_path
from fgq_pipeline.runner import run_stage
from fgq_pipeline.tasks.finetune import run_finetune


def finetune(cfg, log) -> dict:
    return run_finetune(cfg, log, checkpoint_dir=resolve_path(cfg.paths.finetune_checkpoints),
                        weights_path=resolve_path(cfg.paths.finetuned_weights))


if __name__ == "__main__":
    run_stage("finetune", finetune, metrics_path_key="finetune_metrics")
