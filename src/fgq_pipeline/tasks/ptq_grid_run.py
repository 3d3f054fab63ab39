"""The PTQ grid of the `ptq` stage, resumable: a killed run, run again, measures only what it had not.

Each finished configuration is kept (``ptq_progress``) until the grid's results are written; a rerun
with the same inputs takes those records as they are and measures the rest. Every configuration is
reseeded (``PostTrainingQuantizer``), so the results are the bytes an uninterrupted run writes.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig
from tqdm.auto import tqdm

from ..project import write_json
from ..tracking import RunLog, end_interrupted_runs
from .ptq import PostTrainingQuantizer, fp32_reference
from .ptq_grid import ptq_grid, quant_config
from .ptq_progress import FinishedConfigs, grid_inputs
from .records import run_name

RESUMED_TAG = "resumed_from"  # on a configuration's child run: the run that measured its record


def run_ptq_grid(cfg: DictConfig, log: RunLog, results: Path, progress: Path) -> list[dict]:
    """Every config of ``cfg.ptq`` (and ``cfg.quant``), each a child run of ``log``, written to ``results``.

    A config finished by an earlier, interrupted run with the same inputs (kept under ``progress``)
    is not measured again: its child run carries that run's metrics and a ``resumed_from`` tag, and
    the interrupted run, with its configuration under way, is ended as KILLED in MLflow (also one
    killed before it finished any configuration).
    """
    datamodule, model, fp32_top1 = fp32_reference(cfg)
    quantizer = PostTrainingQuantizer(cfg, model, datamodule, log)
    finished = FinishedConfigs(progress, grid_inputs(cfg, model), quantizer.reconstruct)
    grid = ptq_grid(cfg)
    entries = {quant: finished.load(quant) for quant in grid}
    resumed = sum(entry is not None for entry in entries.values())
    tqdm.write(f"PTQ grid: {resumed} of {len(grid)} configurations resumed from {finished.directory}")
    killed = end_interrupted_runs(log, finished.grid_runs())
    finished.add_grid_run(log.run_id)
    if killed:
        tqdm.write(f"PTQ grid: {len(killed)} runs the interrupted grid left RUNNING marked KILLED in MLflow")
    log.set_tags({"resumed_configs": str(resumed)})
    records = []
    for quant in tqdm(grid, desc="PTQ grid", unit="config", mininterval=2.0):
        with log.child_run("ptq", quant.to_dict(), run_name(quant)) as child:
            entry = entries[quant]
            if entry is None:
                record = quantizer.evaluate(quant, fp32_top1)
                finished.save(quant, record, child.run_id)
            else:
                record = entry["record"]
                child.set_tags({RESUMED_TAG: entry["run_id"]})
            child.log_metrics(record)
        records.append(record)
    log.log_artifact(write_json(results, records))
    finished.discard()
    return records


def headline_record(cfg: DictConfig, records: list[dict]) -> dict:
    """The grid's record of ``cfg.quant``, the configuration the stage's metrics report."""
    headline = quant_config(cfg).to_dict()
    return next(r for r in records if all(r[k] == v for k, v in headline.items()))
