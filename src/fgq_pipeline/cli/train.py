"""`fgq-train`: train the FP32 baseline (or score `model.checkpoint`) and save it to `paths.fp32_weights`."""

from ..tasks.baseline import train_baseline
from .app import hydra_app

main = hydra_app("fgq-train", "baseline", train_baseline, lambda cfg: f"baseline {cfg.model.name}")

if __name__ == "__main__":
    main()
