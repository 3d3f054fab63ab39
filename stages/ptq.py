"""DVC stage `ptq`: the post-training grid (group size x act bits x solver x repairs); the headline
configuration (`quant`) is the stage's metrics."""

from fgq_pipeline.project import write_json
from fgq_pipeline.runner import run_stage
from fgq_pipeline.tasks.ptq import headline_record, run_ptq_grid


def ptq(cfg, log) -> dict:
    records = run_ptq_grid(cfg, log)
    log.log_artifact(write_json(cfg.paths.ptq_results, records))
    return headline_record(cfg, records)


if __name__ == "__main__":
    run_stage("ptq", ptq, metrics_path_key="ptq_metrics")
