"""`fgq-export`: one quantized model (`export.source`, from `export.weights` if set) as a packed integer
file with `export.scale_dtype` scales, written into the job's run directory, never the pipeline's."""

from ..tasks.export import export_one, source_quant_config
from ..tasks.records import run_name
from .app import hydra_app, job_dir


def _run_name(cfg) -> str:
    source = cfg.export.source
    return f"export {source} {run_name(source_quant_config(cfg, source))} {cfg.export.scale_dtype}"


main = hydra_app("fgq-export", "export", lambda cfg, log: export_one(cfg, log, job_dir()), _run_name)

if __name__ == "__main__":
    main()
