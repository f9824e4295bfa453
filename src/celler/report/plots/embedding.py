"""The embedding figure: UMAP panels coloured by label, and where the misclassified cells sit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from celler.report.plots.base import palette, text_width


def umap_embedding(
    coords: np.ndarray,
    labels: Mapping[str, Sequence[str]],
    *,
    order: Sequence[str] | None = None,
    wrong: np.ndarray | None = None,
) -> Figure:
    """Scatter of 2-D ``coords`` (n x 2), one panel per entry of ``labels`` (e.g. true, predicted), plus,
    with ``wrong`` (a per-cell mask), a panel with the misclassified cells in black over the others in grey.

    All label panels share one colour per label (``order``: the label order, default sorted) and one legend,
    which lists the labels that occur.
    """
    coords = np.asarray(coords, dtype=float)
    values = {k: np.asarray(v).astype(str) for k, v in labels.items()}
    present = set().union(*map(set, values.values()))
    cats = [c for c in (order if order is not None else sorted(present)) if c in present]
    cats += sorted(present - set(cats))
    colours = dict(zip(cats, palette(len(cats)), strict=True))
    n_panels = len(values) + int(wrong is not None)
    width = 3.9 * n_panels + 0.5
    ncol = max(1, min(len(cats), int(width / (0.55 + text_width(cats, 8)))))
    fig = Figure(figsize=(width, 4.4 + 0.2 * np.ceil(len(cats) / ncol)), layout="constrained")
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    size = float(np.clip(12000 / max(len(coords), 1), 2, 30))
    for ax, (name, vals) in zip(axes, values.items(), strict=False):
        ax.scatter(
            coords[:, 0], coords[:, 1], c=[colours[v] for v in vals], s=size, linewidths=0, rasterized=True
        )
        ax.set_title(f"{name} label", fontsize=11)
    if wrong is not None:
        wrong = np.asarray(wrong, dtype=bool)
        ax = axes[-1]
        ax.scatter(coords[~wrong, 0], coords[~wrong, 1], c="0.85", s=size, linewidths=0, rasterized=True)
        ax.scatter(
            coords[wrong, 0], coords[wrong, 1], c="black", s=max(size, 6), linewidths=0, rasterized=True
        )
        ax.set_title(
            f"misclassified: {int(wrong.sum()):,} of {len(wrong):,} ({wrong.mean():.1%})", fontsize=11
        )
    for ax in axes:
        ax.set(xticks=[], yticks=[], xlabel="UMAP 1", ylabel="UMAP 2", aspect="equal", adjustable="datalim")
    handles = [Line2D([], [], ls="", marker="o", color=colours[c], label=c) for c in cats]
    fig.legend(handles=handles, loc="outside lower center", fontsize=8, ncol=ncol, frameon=False)
    return fig
