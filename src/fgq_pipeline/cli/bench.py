"""`fgq-bench`: the Numba ternary path timed against torch fp32 and int8 and ONNX Runtime int8
(`bench.*`); the report goes to the job's output directory, the timings to MLflow."""

from ..tasks.bench import run_bench
from .app import hydra_app, job_dir

main = hydra_app("fgq-bench", "bench", lambda cfg, log: run_bench(cfg, log, job_dir()))

if __name__ == "__main__":
    main()
