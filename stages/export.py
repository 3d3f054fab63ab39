"""DVC stage `export`: the headline PTQ model and the fine-tuned one as packed integer files, one per
scale precision, with the PTQ model's weights beside them; each file's bytes and bits per weight are
the stage's metrics."""

from fgq_pipeline.project import resolve_path
from fgq_pipeline.runner import run_stage
from fgq_pipeline.tasks.export import export_all

if __name__ == "__main__":
    run_stage("export", lambda cfg, log: export_all(cfg, log, resolve_path(cfg.paths.exports)),
              metrics_path_key="export_metrics")
