"""DVC stage `evaluate`: reload the fine-tuned weights into a fresh model and score them."""

from fgq_pipeline.project import read_json, write_json
from fgq_pipeline.runner import run_stage
from fgq_pipeline.tasks.finetune import evaluate_finetuned


def evaluate(cfg, log) -> dict:
    training = read_json(cfg.paths.finetune_metrics)
    record = evaluate_finetuned(cfg, training["fp32_top1"], training["extra_training_fraction"])
    write_json(cfg.paths.finetune_results, [record])
    return record


if __name__ == "__main__":
    run_stage("evaluate", evaluate)
