"""DVC stage `prepare`: make the dataset's splits available and record a manifest of them."""

from fgq_pipeline.runner import run_stage
from fgq_pipeline.tasks.prepare import prepare_data

if __name__ == "__main__":
    run_stage("prepare", prepare_data, metrics_path_key="data_manifest")
