"""`fgq-bench`: the Numba ternary path timed against torch fp32 and int8 (`bench.*`); the report
goes to the job's output directory, the timings to MLflow."""

from ..tasks import run_bench
from .app import hydra_app

main = hydra_app("fgq-bench", run_bench)

if __name__ == "__main__":
    main()
