"""DVC stage `ptq`: the post-training grid (group size x act bits x solver x repairs)."""

import mlflow
from omegaconf import OmegaConf

from fgq_pipeline import tracking
from fgq_pipeline.experiment import quant_config, write_json
from fgq_pipeline.params import load_params
from fgq_pipeline.tasks import run_ptq_grid
from fgq_pipeline.validation import exit_on_user_error


@exit_on_user_error("stage ptq")
def main() -> None:
    cfg = load_params()
    with tracking.tracked_run(cfg.mlflow.experiment, "ptq", OmegaConf.masked_copy(cfg, ["quant", "ptq", "calibration", "seed"])):
        records = run_ptq_grid(cfg)
        headline = quant_config(cfg).to_dict()
        metrics = next(r for r in records if all(r[k] == v for k, v in headline.items()))
        tracking.log_metrics(metrics)
        write_json(cfg.paths.ptq_results, records)
        write_json(cfg.paths.ptq_metrics, metrics)
        mlflow.log_artifact(str(cfg.paths.ptq_results))


if __name__ == "__main__":
    main()
