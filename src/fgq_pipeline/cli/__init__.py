"""Hydra apps over the task functions: `fgq-train`, `fgq-ptq`, `fgq-finetune`, `fgq-export` (multirun-ready)."""
