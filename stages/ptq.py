"""DVC stage `ptq`: the post-training grid (group size x act bits x solver x repairs); the headline
configuration (`quant`) is the stage's metrics. A killed run, run again, resumes the grid."""

from fgq_pipeline.project import resolve_path
from fgq_pipeline.runner import run_stage
from fgq_pipeline.tasks.ptq_grid_run import headline_record, run_ptq_grid


def ptq(cfg, log) -> dict:
    records = run_ptq_grid(cfg, log, results=resolve_path(cfg.paths.ptq_results),
                           progress=resolve_path(cfg.paths.ptq_progress))
    return headline_record(cfg, records)


if __name__ == "__main__":
    run_stage("ptq", ptq, metrics_path_key="ptq_metrics")
