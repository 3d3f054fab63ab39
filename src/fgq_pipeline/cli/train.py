"""`fgq-train`: train the FP32 baseline and write it to `model.checkpoint`."""

from ..tasks import train_baseline
from .app import hydra_app

main = hydra_app("fgq-train", lambda cfg, _run_dir: train_baseline(cfg))

if __name__ == "__main__":
    main()
