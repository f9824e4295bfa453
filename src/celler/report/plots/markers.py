"""The marker-gene bubble plot (rows: cell groups, columns: genes)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from celler.report.plots.base import CONTINUOUS, PAGE_WIDTH_IN, empty_figure, footnote, text_width, tick_size

#: Width of one gene column / group row (inches).
DOT_CELL = 0.26
MIN_DOT_CELL = 0.12  # inches: below this a dot is too small to read its size


def marker_dotplot(
    table: pd.DataFrame,
    *,
    markers: pd.DataFrame | None = None,
    title: str = "",
    scale: pd.Series | None = None,
    note: str = "",
) -> Figure:
    """Bubble plot: rows = ``table.group`` (labelled with ``n_cells``), columns = ``table.gene``, size =
    ``fraction`` of the group's cells expressing the gene, colour = ``mean`` / the gene's ``scale``.

    ``table`` is :func:`celler.evaluate.markers.dot_table` output (a group with no cells stays as an empty row, so two
    plots of the same groups line up). ``scale``: per gene, the value colour 1 stands for (default: the
    gene's largest mean here); give both plots of a pair the same one so colours compare across them.
    ``markers`` (``gene, marker_of, known``) names the cell type each column marks on top and stars the
    known markers this data confirms. ``note`` is printed under the plot.
    """
    if table.empty:
        return empty_figure("no marker genes")
    groups, genes = list(dict.fromkeys(table["group"])), list(dict.fromkeys(table["gene"]))
    frac = table.pivot(index="group", columns="gene", values="fraction").reindex(index=groups, columns=genes)
    mean = table.pivot(index="group", columns="gene", values="mean").reindex(index=groups, columns=genes)
    top = (scale.reindex(genes) if scale is not None else mean.max()).replace(0, np.nan)
    colour = (mean / top).clip(0, 1).fillna(0.0)
    n_cells = (
        table.drop_duplicates("group").set_index("group")["n_cells"].reindex(groups).fillna(0).astype(int)
    )
    ylabels = [f"{g} ({n:,})" for g, n in n_cells.items()]
    info = markers.set_index("gene").reindex(genes) if markers is not None else None
    known = set(markers.loc[markers["known"].astype(bool), "gene"]) if markers is not None else set()
    xlabels = [f"{g}*" if g in known else g for g in genes]

    fs = tick_size(max(len(groups), len(genes)))
    top_in = text_width(info["marker_of"].dropna(), 8) + 0.3 if info is not None else 0.3
    # many columns (dozens of types, a gene each at least): smaller cells, so the plot stays on the page
    cell = max(MIN_DOT_CELL, min(DOT_CELL, (PAGE_WIDTH_IN - text_width(ylabels, fs) - 2.3) / len(genes)))
    width = cell * len(genes) + text_width(ylabels, fs) + 2.3
    height = cell * len(groups) + text_width(xlabels, fs) + top_in + 0.9 + 0.3 * bool(note)
    fig = Figure(figsize=(max(width, 5.5), max(height, 3.2)), layout="constrained")
    ax = fig.add_subplot()
    yy, xx = np.meshgrid(np.arange(len(groups)), np.arange(len(genes)), indexing="ij")
    drawn = frac.notna().to_numpy().ravel()
    max_s = (0.85 * cell * 72) ** 2
    dots = ax.scatter(
        xx.ravel()[drawn],
        yy.ravel()[drawn],
        s=frac.to_numpy().ravel()[drawn] * max_s,
        c=colour.to_numpy().ravel()[drawn],
        cmap=CONTINUOUS,
        vmin=0,
        vmax=1,
        edgecolors="0.35",
        linewidths=0.3,
    )
    ax.set_xticks(range(len(genes)), labels=xlabels, rotation=90, fontsize=fs)
    ax.set_yticks(range(len(groups)), labels=ylabels, fontsize=fs)
    ax.set_xlim(-0.6, len(genes) - 0.4)
    ax.set_ylim(len(groups) - 0.5, -0.5)
    ax.grid(color="0.93", lw=0.5)
    ax.set_axisbelow(True)
    if info is not None:
        _marker_headers(ax, info["marker_of"].fillna("").astype(str).tolist())
    ax.set_title(title, fontsize=11)
    fig.colorbar(
        dots,
        ax=ax,
        shrink=max(0.3, min(1.0, 2.5 / height)),
        aspect=12,
        label="mean expression\n/ gene's maximum",
    )
    sizes = [0.25, 0.5, 0.75, 1.0]
    handles = [
        Line2D([], [], ls="", marker="o", ms=np.sqrt(f * max_s), color="0.5", label=f"{f:.0%}") for f in sizes
    ]
    fig.legend(
        handles=handles,
        title="cells\nexpressing",
        loc="outside right lower",
        fontsize=8,
        title_fontsize=8,
        frameon=False,
        labelspacing=1.0,
    )
    footnote(fig, note)
    return fig


def _marker_headers(ax, marker_of: list[str]) -> None:
    """Name the cell type each run of gene columns marks on the top axis, with separators between runs."""
    runs: list[tuple[str, int, int]] = []
    for i, name in enumerate(marker_of):
        if runs and runs[-1][0] == name:
            runs[-1] = (name, runs[-1][1], i)
        else:
            runs.append((name, i, i))
    top = ax.secondary_xaxis("top")
    top.set_xticks([(a + b) / 2 for _, a, b in runs], labels=[n for n, _, _ in runs], rotation=90, fontsize=8)
    top.tick_params(length=0)
    for _, a, _ in runs[1:]:
        ax.axvline(a - 0.5, color="0.75", lw=0.6)
