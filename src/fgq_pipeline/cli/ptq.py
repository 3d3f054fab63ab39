"""`fgq-ptq`: post-training FGQ of the configured model at `quant.*`; sweep with -m."""

from ..tasks.ptq import run_ptq
from ..tasks.ptq_grid import quant_config
from ..tasks.records import run_name
from .app import hydra_app

main = hydra_app("fgq-ptq", "ptq", run_ptq, lambda cfg: f"ptq {run_name(quant_config(cfg))}")

if __name__ == "__main__":
    main()
