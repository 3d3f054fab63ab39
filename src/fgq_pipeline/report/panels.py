"""Which variants the plots show: a bounded number of panels, shared fairly between models."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .frame import PANEL_KEYS
from .labels import model_label

MAX_PANELS = 4


@dataclass(frozen=True, eq=False)
class Panel:
    """One plotted variant of one model: its post-training rows plus fine-tuned rows put on it."""

    key: tuple
    rows: pd.DataFrame
    mean_top1: float


def row_panel_key(row: pd.Series) -> tuple:
    return tuple(row[key] for key in PANEL_KEYS)


def _full_grid_panels(frame: pd.DataFrame) -> list[Panel]:
    """A panel per post-training variant run at several group sizes; a single point is no curve."""
    post_training = frame[~frame["finetuned"].astype(bool)]
    return [
        Panel(key, rows, float(rows["top1"].mean()))
        for key, rows in post_training.groupby(PANEL_KEYS, sort=True)
        if rows["group_size"].nunique() > 1
    ]


def _finetuned_home(row_key: tuple, panels: list[Panel]) -> Panel | None:
    """The panel of the fine-tuned row's own variant if shown, else its model's best panel."""
    model_panels = [panel for panel in panels if panel.key[:2] == row_key[:2]]
    same_variant = [panel for panel in model_panels if panel.key == row_key]
    if same_variant:
        return same_variant[0]
    return max(model_panels, key=lambda panel: panel.mean_top1, default=None)


def _with_finetuned(panels: list[Panel], frame: pd.DataFrame) -> list[Panel]:
    finetuned = frame[frame["finetuned"].astype(bool)]
    homes = {
        label: _finetuned_home(row_panel_key(row), panels) for label, row in finetuned.iterrows()
    }
    placed = []
    for panel in panels:
        labels = [*panel.rows.index, *(label for label, home in homes.items() if home is panel)]
        placed.append(Panel(panel.key, frame.loc[labels], panel.mean_top1))
    return placed


def choose_panels(frame: pd.DataFrame) -> tuple[list[Panel], list[str]]:
    """Up to MAX_PANELS panels shared fairly between models, and a note for each model cut short.

    Each model keeps its variants with the highest mean top-1 (ties broken by variant order), so
    the plots stay readable however large the grid grows; fine-tuned rows join a shown panel.
    """
    candidates = _full_grid_panels(frame)
    if not candidates:
        raise ValueError(
            "no post-training variant run at more than one group size (finetuned == False) to plot"
        )
    model_keys = sorted({panel.key[:2] for panel in candidates})
    per_model = max(1, MAX_PANELS // len(model_keys))
    chosen, notes = [], []
    for model_key in model_keys:
        variants = [panel for panel in candidates if panel.key[:2] == model_key]
        best = sorted(variants, key=lambda panel: -panel.mean_top1)[:per_model]
        chosen += sorted(best, key=lambda panel: panel.key)
        if len(variants) > per_model:
            notes.append(
                f"{model_label(model_key)}: best {per_model} of {len(variants)} variants; "
                "all are in results.csv"
            )
    return _with_finetuned(chosen, frame), notes
