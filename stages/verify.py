"""DVC stage `verify`: every exported file over the whole test set, integer path against the torch twin."""

from fgq_pipeline.project import write_json
from fgq_pipeline.runner import run_stage
from fgq_pipeline.tasks.verify import verify_exports, verify_metrics


def verify(cfg, log) -> dict:
    records = verify_exports(cfg)
    write_json(cfg.paths.verify_results, records)
    return verify_metrics(records)


if __name__ == "__main__":
    run_stage("verify", verify, "verify_metrics")
