"""DVC stage `bench`: measured speed of the integer path, into reports/ and MLflow."""

from fgq_pipeline.project import resolve_path
from fgq_pipeline.runner import run_stage
from fgq_pipeline.tasks.bench import run_bench

if __name__ == "__main__":
    run_stage("bench", lambda cfg, log: run_bench(cfg, log, resolve_path(cfg.paths.bench_reports)),
              metrics_path_key="bench_metrics")
