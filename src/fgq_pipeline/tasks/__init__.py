"""Pure task functions (config in, metrics out) shared by the DVC stages and the Hydra apps."""

from .baseline import train_baseline
from .bench import run_bench
from .finetune import evaluate_finetuned, run_finetune
from .ptq import run_ptq, run_ptq_grid

__all__ = ["evaluate_finetuned", "run_bench", "run_finetune", "run_ptq", "run_ptq_grid", "train_baseline"]
