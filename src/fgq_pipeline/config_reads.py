"""Which config keys a task reads, recorded while ``FGQ_TRACE_DIR`` is set.

Every read of an OmegaConf value goes through ``DictConfig._get_node``; wrapping it for the length
of a task lists the keys the task used (``to_container`` and ``instantiate`` read each leaf). The
dependency test compares these lists with the params ``dvc.yaml`` declares, so a stage cannot read a
parameter that DVC does not track.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig

from .project import write_json

TRACE_DIR_ENV = "FGQ_TRACE_DIR"


@contextmanager
def recording_config_reads(cfg: DictConfig, stage: str) -> Iterator[None]:
    """Write the sorted keys of ``cfg`` read inside the block to ``$FGQ_TRACE_DIR/<stage>.json``
    (reads of other configs, e.g. the ones Hydra's instantiate builds, are not counted); no-op when unset."""
    trace_dir = os.environ.get(TRACE_DIR_ENV)
    if not trace_dir:
        yield
        return
    reads: set[str] = set()
    original = DictConfig._get_node
    naming = False  # _get_full_key reads nodes itself: those reads are not the task's

    def recording_get_node(self, key, *args, **kwargs):
        nonlocal naming
        node = original(self, key, *args, **kwargs)
        if not naming and not isinstance(node, DictConfig) and self._get_root() is cfg:
            naming = True
            try:
                reads.add(self._get_full_key(key).split("[")[0])
            finally:
                naming = False
        return node

    DictConfig._get_node = recording_get_node
    try:
        yield
    finally:
        DictConfig._get_node = original
        write_json(Path(trace_dir) / f"{stage}.json", sorted(reads))
