"""DVC stage `baseline`: train the FP32 model (or take a pretrained one), save its weights, score it."""

from fgq_pipeline.runner import run_stage
from fgq_pipeline.tasks.baseline import train_baseline

if __name__ == "__main__":
    run_stage("baseline", train_baseline, metrics_path_key="fp32_metrics")
