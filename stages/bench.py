"""DVC stage `bench`: measured speed of the integer path, into reports/ and MLflow."""

from omegaconf import OmegaConf

from fgq_pipeline import tracking
from fgq_pipeline.experiment import resolve_path, write_json
from fgq_pipeline.params import load_params
from fgq_pipeline.tasks import run_bench
from fgq_pipeline.validation import exit_on_user_error


@exit_on_user_error("stage bench")
def main() -> None:
    cfg = load_params()
    with tracking.tracked_run(cfg.mlflow.experiment, "bench", OmegaConf.masked_copy(cfg, ["bench"])):
        summary = run_bench(cfg, resolve_path(cfg.paths.bench_reports))
        tracking.log_metrics(summary)
        write_json(cfg.paths.bench_metrics, summary)


if __name__ == "__main__":
    main()
