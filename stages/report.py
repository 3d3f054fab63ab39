"""DVC stage `report`: results.csv, the paper-shaped table and the plots under reports/."""

import mlflow

from fgq_pipeline import tracking
from fgq_pipeline.experiment import read_json, resolve_path
from fgq_pipeline.params import load_params
from fgq_pipeline.report import write_report
from fgq_pipeline.validation import exit_on_user_error


@exit_on_user_error("stage report")
def main() -> None:
    cfg = load_params()
    records = read_json(cfg.paths.ptq_results) + read_json(cfg.paths.finetune_results)
    with tracking.tracked_run(cfg.mlflow.experiment, "report", {"rows": len(records)}):
        for path in write_report(records, resolve_path(cfg.paths.reports)).values():
            mlflow.log_artifact(str(path))


if __name__ == "__main__":
    main()
