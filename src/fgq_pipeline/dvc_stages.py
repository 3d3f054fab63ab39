"""What ``dvc.yaml`` declares for each stage, read back so the stage's MLflow run records exactly
the parameters DVC tracks for it (and a test can hold the declarations to what the stage reads)."""

from __future__ import annotations

import yaml
from omegaconf import DictConfig, OmegaConf

from .project import project_root
from .tracking import flatten

DVC_FILE = "dvc.yaml"


def declared_params(stage: str) -> list[str]:
    """The dotted parameter keys ``dvc.yaml`` lists under ``stage``."""
    stages = yaml.safe_load((project_root() / DVC_FILE).read_text())["stages"]
    if stage not in stages:
        raise ValueError(f"{DVC_FILE} has no stage {stage!r}; stages are {sorted(stages)}")
    return [key for entry in stages[stage].get("params", []) for key in _keys(entry)]


def stage_params(cfg: DictConfig, stage: str) -> dict[str, str]:
    """``cfg``'s values of the keys ``stage`` declares, flattened as MLflow params."""
    params: dict[str, str] = {}
    for key in declared_params(stage):
        value = OmegaConf.select(cfg, key)
        if isinstance(value, DictConfig):
            params.update(flatten(OmegaConf.to_container(value, resolve=True), f"{key}."))
        else:
            params.update(flatten({key: OmegaConf.to_container(value) if OmegaConf.is_config(value) else value}))
    return params


def _keys(entry) -> list[str]:
    """A params entry is a key, or {params file: [keys]}."""
    if isinstance(entry, str):
        return [entry]
    return [key for keys in entry.values() for key in keys]
