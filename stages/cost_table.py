"""DVC stage `cost_table`: the paper's cost table for ImageNet-scale torchvision architectures."""

from fgq_pipeline.cost_table import write_cost_table
from fgq_pipeline.project import resolve_path
from fgq_pipeline.runner import run_stage


def cost_table(cfg, log) -> dict:
    settings = cfg.cost_table
    paths = write_cost_table(resolve_path(cfg.paths.cost_tables), archs=tuple(settings.archs),
                             group_sizes=tuple(settings.group_sizes), policies=tuple(settings.policies),
                             scale_bits=tuple(settings.scale_bits))
    for path in paths.values():
        log.log_artifact(path)
    return {}


if __name__ == "__main__":
    run_stage("cost_table", cost_table)
