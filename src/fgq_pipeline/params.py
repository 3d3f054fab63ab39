"""params.yaml: the composed default of conf/, the form DVC stages read their parameters in."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from .project import project_root

PARAMS_FILE = "params.yaml"


def config_dir() -> str:
    return str(project_root() / "conf")


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """Compose conf/ the way DVC's Hydra composition does (resolved, without the hydra node)."""
    with initialize_config_dir(config_dir=config_dir(), version_base=None):
        cfg = compose(config_name="config", overrides=overrides or [])
    OmegaConf.resolve(cfg)
    return cfg


def load_params() -> DictConfig:
    """params.yaml, the parameters of every DVC stage."""
    path = project_root() / PARAMS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run `python -m fgq_pipeline.params` to write it from conf/")
    return OmegaConf.load(path)


def main() -> None:
    """Rewrite params.yaml from conf/ (what `dvc exp run` does before it runs)."""
    (project_root() / PARAMS_FILE).write_text(OmegaConf.to_yaml(compose_config()), encoding="utf-8")


if __name__ == "__main__":
    main()
