"""The configs in conf/: every experiment, debug and PTQ grid file composes and passes validation, and
params.yaml is the composed default."""

import itertools

import pytest
from conftest import REPO
from omegaconf import OmegaConf

from fgq_pipeline.params import compose_config
from fgq_pipeline.validation import validate_config

EXPERIMENTS = [None, *sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))]
DEBUGS = [None, *sorted(p.stem for p in (REPO / "conf" / "debug").glob("*.yaml"))]
PTQ_GRIDS = sorted(p.stem for p in (REPO / "conf" / "ptq").glob("*.yaml"))


def test_params_yaml_is_the_composed_default_config():
    assert OmegaConf.to_container(compose_config()) == OmegaConf.to_container(OmegaConf.load(REPO / "params.yaml"))


@pytest.mark.parametrize(("experiment", "debug"), list(itertools.product(EXPERIMENTS, DEBUGS)))
def test_every_experiment_and_debug_config_composes_and_validates(experiment, debug):
    overrides = [f"{group}={name}" for group, name in (("experiment", experiment), ("debug", debug)) if name]
    cfg = compose_config(overrides)
    validate_config(cfg)
    if experiment:
        assert cfg.paths.reports == f"reports/{cfg.data.name}-{cfg.model.name}"
    if debug == "smoke":
        assert cfg.ptq.group_size == [1, 4, 64, "filter"] and cfg.bench.rounds == 2


@pytest.mark.parametrize("grid", PTQ_GRIDS)
def test_every_ptq_grid_composes_and_validates(grid):
    cfg = compose_config(["experiment=cifar10_resnet", f"ptq={grid}"])
    validate_config(cfg)
    assert cfg.ptq.variants
