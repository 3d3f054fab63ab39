"""DVC stage `baseline`: train the FP32 model, save its weights, record its accuracy."""

from omegaconf import OmegaConf

from fgq_pipeline import tracking
from fgq_pipeline.experiment import write_json
from fgq_pipeline.params import load_params
from fgq_pipeline.tasks import train_baseline
from fgq_pipeline.validation import exit_on_user_error


@exit_on_user_error("stage baseline")
def main() -> None:
    cfg = load_params()
    with tracking.tracked_run(cfg.mlflow.experiment, "baseline", OmegaConf.masked_copy(cfg, ["data", "model", "baseline", "seed"])):
        metrics = train_baseline(cfg)
        tracking.log_metrics(metrics)
        write_json(cfg.paths.fp32_metrics, metrics)


if __name__ == "__main__":
    main()
