"""How every committed report renders: markdown tables, CSV floats and PNG figures.

The outputs under ``reports/`` are committed, so equal inputs must give equal bytes: one table
format, one float format and PNGs without the software-version tag, each written atomically. No
torch here, so the benchmark and cost-table reports stay light to import.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .atomic import atomic_path

CSV_FLOAT_FORMAT = "%.6f"
MISSING_CELL = "—"
LEFT = ":---"
RIGHT = "---:"


def _table_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def markdown_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    text_columns: Collection[str],
    left: str = LEFT,
) -> str:
    """A pipe table: ``text_columns`` (by header name) aligned left with ``left``, numbers right."""
    alignment = [left if name in text_columns else RIGHT for name in header]
    lines = [_table_row(header), "|" + "|".join(alignment) + "|", *map(_table_row, rows)]
    return "\n".join(lines)


def new_figure(**kwargs) -> Figure:
    """A figure drawn with Agg without touching pyplot's global state (nothing to close later)."""
    figure = Figure(**kwargs)
    FigureCanvasAgg(figure)
    return figure


def save_png(figure: Figure, path: str | os.PathLike, dpi: int) -> Path:
    """PNG without the software-version tag so the bytes depend only on the data."""
    with atomic_path(path) as temp:
        figure.savefig(temp, format="png", dpi=dpi, metadata={"Software": None})
    return Path(path)
