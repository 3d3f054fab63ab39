"""DVC stage `report`: results.csv, the paper-shaped table and the plots under reports/."""

from fgq_pipeline.project import read_json, resolve_path
from fgq_pipeline.report import write_report
from fgq_pipeline.runner import run_stage


def report(cfg, log) -> dict:
    records = read_json(cfg.paths.ptq_results) + read_json(cfg.paths.finetune_results)
    verified = read_json(cfg.paths.verify_results)
    for path in write_report(records, resolve_path(cfg.paths.reports), verified).values():
        log.log_artifact(path)
    return {"rows": len(records)}


if __name__ == "__main__":
    run_stage("report", report)
