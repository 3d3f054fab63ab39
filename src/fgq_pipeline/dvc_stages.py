"""What ``dvc.yaml`` declares for each stage, read back so the stage's MLflow run records exactly
the parameters DVC tracks for it (and a test can hold the declarations to what the stage uses)."""

from __future__ import annotations

import yaml
from omegaconf import DictConfig, OmegaConf

from .project import project_root
from .tracking import flatten

DVC_FILE = "dvc.yaml"


def dvc_stages() -> dict:
    """The ``stages`` mapping of the project's ``dvc.yaml``."""
    return yaml.safe_load((project_root() / DVC_FILE).read_text())["stages"]


def declared_params(stage: dict) -> list[str]:
    """The dotted parameter keys of a stage entry (each a key, or {params file: [keys]})."""
    return [key for entry in stage.get("params", [])
            for key in ([entry] if isinstance(entry, str) else [k for keys in entry.values() for k in keys])]


def stage_params(cfg: DictConfig, stage: str) -> dict[str, str]:
    """``cfg``'s values of the keys DVC stage ``stage`` declares, flattened as MLflow params."""
    stages = dvc_stages()
    if stage not in stages:
        raise ValueError(f"{DVC_FILE} has no stage {stage!r}; stages are {sorted(stages)}")
    params: dict[str, str] = {}
    for key in declared_params(stages[stage]):
        value = OmegaConf.select(cfg, key)
        value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        params.update(flatten(value, f"{key}.") if isinstance(value, dict) else flatten({key: value}))
    return params
