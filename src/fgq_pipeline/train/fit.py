"""One place that builds the Trainer, so every stage trains on CPU with the same settings."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl

LOG_EVERY_N_STEPS = 10


def fit(
    module: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    epochs: int,
    logger=None,
    default_root_dir: str | Path | None = None,
    ckpt_path: str | Path | None = None,
    enable_progress_bar: bool = True,
    callbacks: list[pl.Callback] | None = None,
) -> pl.Trainer:
    """Train deterministically; checkpoints are only written when there is a directory for them."""
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=logger if logger is not None else False,
        enable_checkpointing=bool(default_root_dir),
        enable_progress_bar=enable_progress_bar,
        enable_model_summary=False,
        deterministic=True,
        default_root_dir=default_root_dir,
        callbacks=callbacks,
        log_every_n_steps=LOG_EVERY_N_STEPS,
    )
    module.train()  # Lightning keeps the modes it is given; BatchNorm must train with the weights
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    return trainer
