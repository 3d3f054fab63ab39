"""DVC stage `evaluate`: reload the fine-tuned weights into a fresh model and score them."""

from omegaconf import OmegaConf

from fgq_pipeline import tracking
from fgq_pipeline.experiment import read_json, write_json
from fgq_pipeline.params import load_params
from fgq_pipeline.tasks import evaluate_finetuned
from fgq_pipeline.validation import exit_on_user_error


@exit_on_user_error("stage evaluate")
def main() -> None:
    cfg = load_params()
    training = read_json(cfg.paths.finetune_metrics)
    with tracking.tracked_run(cfg.mlflow.experiment, "evaluate", OmegaConf.masked_copy(cfg, ["quant", "finetune", "seed"])):
        record = evaluate_finetuned(cfg, training["fp32_top1"], training["extra_training_fraction"])
        tracking.log_metrics(record)
        write_json(cfg.paths.finetune_results, [record])


if __name__ == "__main__":
    main()
