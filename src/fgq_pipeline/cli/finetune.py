"""`fgq-finetune`: quantization-aware fine-tuning at `finetune.group_size` / `finetune.act_bits`."""

from ..tasks import run_finetune
from .app import hydra_app

main = hydra_app("fgq-finetune", lambda cfg, run_dir: run_finetune(cfg, checkpoint_dir=str(run_dir / "checkpoints")))

if __name__ == "__main__":
    main()
