"""Confusion matrices: one heatmap per label level, and beside Celler's the best baseline's on the same test
cells (same rows and columns in the same order, one colour scale), so that shared errors line up."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from celler.report.plots.base import (
    CONTINUOUS,
    PAGE_WIDTH_IN,
    empty_figure,
    text_colour,
    text_width,
    tick_size,
)

#: Up to this many classes each cell prints its count and row share.
PRINT_CELLS = 25
#: Smallest cell (inches) of a side-by-side pair: with numbers printed, and without.
MIN_PAIR_CELL = {True: 0.28, False: 0.12}
#: Room (inches) a heatmap needs besides its cells and row labels: axis label, colour bar, margins.
_MARGIN = 2.0


def fraction_label(v: float) -> str:
    """A row fraction as printed in a cell: '1' only when exact, '>.99' just below, '<.01' just above 0."""
    if v >= 1:
        return "1"
    if v >= 0.995:
        return ">.99"
    if v < 0.005:
        return "<.01" if v > 0 else "0"
    return f"{v:.2f}"[1:]


def align(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two confusion tables over the same rows and columns in the same order: ``a``'s, then those only ``b``
    has (absent cells count 0), so that cell (i, j) is the same true and predicted label in both."""
    rows = [*a.index, *(r for r in b.index if r not in set(a.index))]
    cols = [*a.columns, *(c for c in b.columns if c not in set(a.columns))]
    return (
        a.reindex(index=rows, columns=cols, fill_value=0),
        b.reindex(index=rows, columns=cols, fill_value=0),
    )


def confusion_heatmap(
    confusion: pd.DataFrame,
    *,
    title: str = "Confusion matrix",
    ax=None,
    colorbar: bool = True,
    row_labels: bool = True,
):
    """Heatmap of a true x predicted count table: colour = share of the true class (row, 0 to 1 on viridis
    whatever the table), each cell printed with its count and row fraction (up to :data:`PRINT_CELLS`
    classes); rows are labelled with their cell counts (``row_labels=False``: not at all, for the right-hand
    panel of a pair). Returns the figure (a new one without ``ax``)."""
    if confusion.empty:
        return empty_figure("no test cells")
    counts = confusion.to_numpy(dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    norm = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    n_rows, n_cols = norm.shape
    fs = tick_size(max(n_rows, n_cols))
    rows = [f"{r} ({int(t):,})" for r, t in zip(confusion.index, totals.ravel(), strict=True)]
    fig = (
        ax.get_figure() if ax is not None else Figure(figsize=confusion_size(confusion), layout="constrained")
    )
    ax = ax if ax is not None else fig.add_subplot()
    cmap = colormaps[CONTINUOUS]
    im = ax.imshow(norm, cmap=cmap, vmin=0, vmax=1, aspect="equal", interpolation="nearest")
    ax.set_xticks(range(n_cols), labels=[str(c) for c in confusion.columns], rotation=90, fontsize=fs)
    ax.set_yticks(range(n_rows), labels=rows if row_labels else [""] * n_rows, fontsize=fs)
    ax.set(xlabel="predicted", ylabel="true (test cells)" if row_labels else "")
    ax.set_title(title, fontsize=10.5)
    if max(n_rows, n_cols) <= PRINT_CELLS:
        n = max(n_rows, n_cols)
        small = 6.5 if n > 12 else 7.5 if n > 8 else 8.5
        for (i, j), v in np.ndenumerate(norm):
            if counts[i, j] > 0:
                ax.text(
                    j,
                    i,
                    f"{int(counts[i, j]):,}\n{fraction_label(v)}",
                    ha="center",
                    va="center",
                    fontsize=small,
                    linespacing=0.95,
                    color=text_colour(cmap(v)),
                )
    if colorbar:
        fig.colorbar(im, ax=ax, shrink=0.6, aspect=20, label="share of the true class")
    return fig


def _cell(n: int) -> float:
    return float(np.clip(9 / max(n, 1), 0.3, 0.6)) if n <= PRINT_CELLS else 0.22


def confusion_size(confusion: pd.DataFrame) -> tuple[float, float]:
    n_rows, n_cols = confusion.shape
    cell = _cell(max(n_rows, n_cols))
    fs = tick_size(max(n_rows, n_cols))
    width = cell * n_cols + text_width([f"{r} (10,000)" for r in confusion.index], fs) + _MARGIN
    height = cell * n_rows + text_width(confusion.columns, fs) + 1.1
    return width, height


def pair_size(confusion: pd.DataFrame) -> tuple[float, float] | None:
    """Size of two heatmaps of ``confusion``'s shape side by side (one set of row labels, one colour bar),
    their cells shrunk to fit the page; None when even :data:`MIN_PAIR_CELL` does not fit."""
    n_rows, n_cols = confusion.shape
    n = max(n_rows, n_cols)
    fs = tick_size(n)
    labels = text_width([f"{r} (10,000)" for r in confusion.index], fs)
    cell = min(_cell(n), (PAGE_WIDTH_IN - labels - _MARGIN - 0.5) / (2 * n_cols))
    if cell < MIN_PAIR_CELL[n <= PRINT_CELLS]:
        return None
    width = 2 * cell * n_cols + labels + _MARGIN + 0.5
    height = cell * n_rows + text_width(confusion.columns, fs) + 1.1
    return width, height


def confusion_figure(
    confusions: Mapping[str, pd.DataFrame],
    *,
    title: str = "Celler confusion matrix",
    baselines: Mapping[str, pd.DataFrame] | None = None,
    baseline: str = "",
) -> Figure:
    """One confusion heatmap per label level (the finer first), side by side, or one above the other when
    that is wider than the page. With ``baselines`` (level -> the ``baseline`` method's table on the same test
    cells), each level's Celler heatmap has the baseline's beside it (below it where the pair would not fit
    the page), over the same rows and columns (:func:`align`) and one colour scale."""
    items = [(k, v) for k, v in confusions.items() if not v.empty]
    if not items:
        return empty_figure("no test cells")
    baselines = baselines or {}
    blocks = []  # (level, celler, baseline or None, layout, size)
    for level, conf in items:
        other = baselines.get(level)
        if other is None or other.empty:
            blocks.append((level, conf, None, "single", confusion_size(conf)))
            continue
        conf, other = align(conf, other)
        side = pair_size(conf)
        if side is not None:
            blocks.append((level, conf, other, "pair", side))
        else:
            w, h = confusion_size(conf)
            blocks.append((level, conf, other, "stacked", (w, 2 * h)))
    if len(blocks) == 1 and blocks[0][3] == "single":
        level, conf = items[0]
        return confusion_heatmap(conf, title=f"{title} ({level})")
    sizes = [b[4] for b in blocks]
    if sum(w for w, _ in sizes) > PAGE_WIDTH_IN or len(blocks) == 1:  # one above the other
        fig = Figure(figsize=(max(w for w, _ in sizes), sum(h for _, h in sizes)), layout="constrained")
        subs = fig.subfigures(len(blocks), 1, height_ratios=[h for _, h in sizes], squeeze=False).ravel()
    else:
        fig = Figure(figsize=(sum(w for w, _ in sizes), max(h for _, h in sizes)), layout="constrained")
        subs = fig.subfigures(1, len(blocks), width_ratios=[w for w, _ in sizes], squeeze=False).ravel()
    for sub, (level, conf, other, layout, _) in zip(subs, blocks, strict=True):
        if layout == "single":
            confusion_heatmap(conf, title=f"{title} ({level})", ax=sub.add_subplot())
            continue
        axes = sub.subplots(1, 2) if layout == "pair" else sub.subplots(2, 1)  # same shape: the rows line up
        confusion_heatmap(conf, title=f"{title} ({level})", ax=axes[0], colorbar=False)
        confusion_heatmap(other, title=f"{baseline}, best baseline ({level})", ax=axes[1], colorbar=False,
                          row_labels=layout == "stacked")
        # one colour bar for both: the same scale (row share, 0 to 1) by construction
        sub.colorbar(axes[0].get_images()[0], ax=list(axes), shrink=0.6, aspect=20, label="share of the true class")
    return fig
