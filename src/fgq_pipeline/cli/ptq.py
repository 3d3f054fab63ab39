"""`fgq-ptq`: post-training FGQ of the configured model at `quant.*`; sweep with -m."""

from ..tasks import run_ptq
from .app import hydra_app

main = hydra_app("fgq-ptq", lambda cfg, _run_dir: run_ptq(cfg))

if __name__ == "__main__":
    main()
