"""DVC stage `cost_table`: the paper's cost table for ImageNet-scale torchvision architectures."""

import mlflow
from omegaconf import OmegaConf

from fgq_pipeline import tracking
from fgq_pipeline.cost_table import write_cost_table
from fgq_pipeline.experiment import resolve_path
from fgq_pipeline.params import load_params
from fgq_pipeline.validation import exit_on_user_error


@exit_on_user_error("stage cost_table")
def main() -> None:
    cfg = load_params()
    params = OmegaConf.to_container(cfg.cost_table, resolve=True)
    with tracking.tracked_run(cfg.mlflow.experiment, "cost_table", OmegaConf.masked_copy(cfg, ["cost_table"])):
        paths = write_cost_table(
            resolve_path(cfg.paths.cost_tables),
            archs=tuple(params["archs"]),
            group_sizes=tuple(params["group_sizes"]),
            policies=tuple(params["policies"]),
            scale_bits=tuple(params["scale_bits"]),
        )
        for path in paths.values():
            mlflow.log_artifact(str(path))


if __name__ == "__main__":
    main()
