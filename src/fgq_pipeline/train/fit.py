"""One place that builds the Trainer, so every stage trains with the same settings.

``trainer_options`` (the config's ``trainer`` group) picks the hardware and scale-out: the default
is one CPU process; ``devices: 2, strategy: ddp_spawn`` runs two CPU processes over gloo, and on
GPU machines ``accelerator: gpu, devices: 8, num_nodes: 2, strategy: ddp`` spreads across nodes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import pytorch_lightning as pl
from pytorch_lightning.loggers import MLFlowLogger

if TYPE_CHECKING:
    from ..tracking import RunLog

LOG_EVERY_N_STEPS = 10


def fit(
    module: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    epochs: int,
    log: RunLog | None = None,
    default_root_dir: str | Path | None = None,
    ckpt_path: str | Path | None = None,
    enable_progress_bar: bool = True,
    callbacks: list[pl.Callback] | None = None,
    trainer_options: Mapping | None = None,
) -> pl.Trainer:
    """Train deterministically; checkpoints are only written when there is a directory for them.

    Training curves go to ``log``'s MLflow run when one is given.
    """
    hardware = {"accelerator": "cpu", "devices": 1, "num_nodes": 1, "strategy": "auto", **(trainer_options or {})}
    trainer = pl.Trainer(
        max_epochs=epochs,
        **hardware,
        logger=MLFlowLogger(tracking_uri=log.tracking_uri, run_id=log.run_id) if log else False,
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
