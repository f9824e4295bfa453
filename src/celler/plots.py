"""Report figures: small functions over DataFrames / arrays, each returning a matplotlib Figure.

Figures are built with :class:`matplotlib.figure.Figure` directly (no pyplot state, any backend). Sizes grow
with the number of classes (up to ~60 stays readable): every class gets a fixed slot and the margins are sized
from the longest label, so tick labels never overlap. Categorical colours: Okabe-Ito (colour-blind safe) up to
8 classes, then tab20, then tab20 + tab20b + tab20c; continuous values use viridis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

#: Okabe & Ito (2008) colour-blind-safe palette (black last).
OKABE_ITO = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000"]
#: Paul Tol's "muted" palette, colour-blind safe, for 9 classes.
TOL_MUTED = [
    "#332288",
    "#88CCEE",
    "#44AA99",
    "#117733",
    "#999933",
    "#DDCC77",
    "#CC6677",
    "#882255",
    "#AA4499",
]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">"]
CONTINUOUS = "viridis"


def palette(n: int) -> list[str]:
    """``n`` distinct categorical colours: Okabe-Ito (<= 8), Tol muted (9), tab20 with its 10 saturated hues
    first (<= 20), then tab20 + tab20b + tab20c (cycling past 60)."""
    from matplotlib.colors import to_hex

    if n <= len(OKABE_ITO):
        return OKABE_ITO[:n]
    if n <= len(TOL_MUTED):
        return TOL_MUTED[:n]
    tab20 = [to_hex(colormaps["tab20"](i)) for i in (*range(0, 20, 2), *range(1, 20, 2))]  # 10 hues first
    if n <= 20:
        return tab20[:n]
    colours = tab20 + [to_hex(colormaps[m](i)) for m in ("tab20b", "tab20c") for i in range(20)]
    return [colours[i % len(colours)] for i in range(n)]


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, facecolor="white")
    return path


def _text_in(labels: Sequence[object], fontsize: float) -> float:
    """Rough printed width (inches) of the longest label."""
    longest = max((len(str(s)) for s in labels), default=0)
    return longest * fontsize * 0.6 / 72


def _tick_size(n: int) -> float:
    return 9 if n <= 30 else 8


def _log_axis(ax, values, axis: str = "x") -> None:
    """Log scale with plain-number labels at 1, 2, 5 x 10^k (only 10^k over more than 3 decades of
    ``values``), no crowded minor labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    decades = np.log10(v.max() / v.min()) if len(v) else 0
    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades <= 3 else (1.0,)))
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    target.set_minor_formatter(NullFormatter())


def empty_figure(message: str) -> Figure:
    """A small figure that says why there is nothing to plot."""
    fig = Figure(figsize=(6, 2))
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=11, color="0.3", wrap=True)
    ax.set_axis_off()
    return fig


# ----------------------------------------------------------------------------------------------- data


def class_sizes(counts: pd.DataFrame, *, rare_fraction: float = 0.03) -> Figure:
    """Long-tail bar chart: cells per class (``counts`` rows) and split (columns), log scale, largest first.

    A dotted line marks ``rare_fraction`` of the training cells (when a ``train`` column exists).
    """
    if counts.empty:
        return empty_figure("no labelled cells")
    counts = counts.loc[counts.sum(axis=1).sort_values(ascending=False).index]
    n, splits = len(counts), list(counts.columns)
    fs = _tick_size(n)
    slot = 0.3 if len(splits) <= 2 else 0.4
    fig = Figure(figsize=(5.5 + _text_in(counts.index, fs), 1.3 + slot * n), layout="constrained")
    ax = fig.add_subplot()
    height = 0.8 / len(splits)
    y = np.arange(n)
    for i, (split, colour) in enumerate(zip(splits, palette(len(splits)), strict=True)):
        vals = counts[split].to_numpy(dtype=float)
        ax.barh(
            y - 0.4 + height * (i + 0.5),
            np.where(vals > 0, vals, np.nan),
            height=height,
            color=colour,
            label=str(split),
        )
    _log_axis(ax, counts.to_numpy().ravel())
    if "train" in counts.columns and counts["train"].sum() > 0:
        ax.axvline(
            rare_fraction * counts["train"].sum(),
            color="0.2",
            ls=":",
            lw=1,
            label=f"rare: < {rare_fraction:.0%} of training",
        )
    ax.set_yticks(y, labels=[str(s) for s in counts.index], fontsize=fs)
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_xlabel("cells (log scale)")
    ax.grid(axis="x", which="major", color="0.9")
    ax.set_axisbelow(True)
    ax.legend(loc="lower right", fontsize=8, frameon=True)
    ax.set_title(f"Class sizes ({n} classes)", fontsize=11)
    return fig


# ------------------------------------------------------------------------------------------- training


def training_curves(finetune_log: pd.DataFrame | None, pretrain_log: pd.DataFrame | None = None) -> Figure:
    """Pretraining loss per step (when given), fine-tuning train loss and validation macro-F1 per epoch.

    ``finetune_log``: columns ``stage, epoch, train_loss, val_macro_f1_<level>...``; ``pretrain_log``:
    ``step, loss``.
    """
    panels = int(pretrain_log is not None and not pretrain_log.empty) + 2 * int(
        finetune_log is not None and not finetune_log.empty
    )
    if panels == 0:
        return empty_figure("no training logs")
    fig = Figure(figsize=(4.2 * panels, 3.4), layout="constrained")
    axes = list(fig.subplots(1, panels, squeeze=False)[0])
    if pretrain_log is not None and not pretrain_log.empty:
        ax = axes.pop(0)
        loss = pretrain_log["loss"].astype(float)
        window = len(loss) // 40
        ax.plot(
            pretrain_log["step"],
            loss,
            color=OKABE_ITO[1] if window > 1 else OKABE_ITO[4],
            lw=0.8 if window > 1 else 1.4,
            alpha=0.6 if window > 1 else 1,
            label="per step",
        )
        if window > 1:
            ax.plot(
                pretrain_log["step"],
                loss.rolling(window, min_periods=1).mean(),
                color=OKABE_ITO[4],
                lw=1.6,
                label=f"mean of {window} steps",
            )
        ax.set(xlabel="step", ylabel="masked-value loss", title="Pretraining")
        ax.legend(fontsize=8)
    if finetune_log is not None and not finetune_log.empty:
        _finetune_panels(finetune_log, axes[0], axes[1])
    for ax in fig.axes:
        ax.grid(color="0.9")
        ax.title.set_fontsize(11)
    return fig


def _finetune_panels(log: pd.DataFrame, loss_ax, f1_ax) -> None:
    log = log.reset_index(drop=True)
    x = np.arange(1, len(log) + 1)
    stages = log["stage"].astype(str) if "stage" in log else pd.Series(["main"] * len(log))
    for stage, colour in zip(pd.unique(stages), palette(stages.nunique()), strict=True):
        m = (stages == stage).to_numpy()
        loss_ax.plot(x[m], log.loc[m, "train_loss"], "o-", color=colour, ms=4, label=f"stage {stage}")
    loss_ax.set(xlabel="epoch", ylabel="training loss", title="Fine-tuning: loss")
    f1_cols = [c for c in log.columns if c.startswith("val_macro_f1")]
    for col, colour, marker in zip(f1_cols, palette(len(f1_cols)), MARKERS, strict=False):
        f1_ax.plot(
            x, log[col], marker=marker, color=colour, ms=4, label=col.removeprefix("val_macro_f1_") or col
        )
    f1_ax.set(xlabel="epoch", ylabel="validation macro-F1", title="Fine-tuning: validation", ylim=(0, 1.02))
    for ax in (loss_ax, f1_ax):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)


# -------------------------------------------------------------------------------------------- results


def f1_vs_size(per_class: pd.DataFrame, *, title: str = "Per-class F1 vs training class size") -> Figure:
    """Per-class F1 (mean over seeds) against training cells of the class (log x), one series per method.

    ``per_class``: columns ``class, f1, train_count`` and optionally ``method`` (default "celler"), ``seed``,
    ``support`` (classes without test cells are left out) and ``rare`` (shaded region).
    """
    df = per_class.copy()
    if "method" not in df:
        df["method"] = "celler"
    if "support" in df:
        df = df[df["support"] > 0]
    df = df[df["train_count"] > 0]
    if df.empty:
        return empty_figure("no classes with training and test cells")
    agg = df.groupby(["method", "class"], sort=False).agg(
        f1=("f1", "mean"), train_count=("train_count", "first")
    )
    agg = agg.reset_index()
    methods = (
        list(dict.fromkeys(["celler", *agg["method"]]))
        if "celler" in set(agg["method"])
        else list(dict.fromkeys(agg["method"]))
    )
    fig = Figure(figsize=(7.5, 4.6), layout="constrained")
    ax = fig.add_subplot()
    if "rare" in df and df["rare"].astype(bool).any():
        edge = df.loc[df["rare"].astype(bool), "train_count"].max()
        ax.axvspan(agg["train_count"].min() / 1.5, edge * 1.15, color="0.92", zorder=0, label="rare classes")
    for i, (method, colour) in enumerate(zip(methods, palette(len(methods)), strict=True)):
        part = agg[agg["method"] == method].sort_values("train_count")
        is_celler = method == "celler"
        ax.plot(
            part["train_count"],
            part["f1"],
            ls="",
            marker=MARKERS[i % len(MARKERS)],
            color=colour,
            alpha=1 if is_celler else 0.75,
            ms=8 if is_celler else 6,
            mec="black" if is_celler else colour,
            mew=0.6,
            label=method,
            zorder=3 if is_celler else 2,
        )
    _log_axis(ax, agg["train_count"])
    ax.set(xlabel="training cells of the class (log scale)", ylabel="F1 on test cells", ylim=(-0.03, 1.03))
    ax.set_title(title, fontsize=11)
    ax.grid(color="0.9")
    fig.legend(loc="outside right upper", fontsize=8)
    return fig


def confusion_heatmap(confusion: pd.DataFrame, *, title: str = "Confusion matrix (row-normalised)") -> Figure:
    """Heatmap of a true x predicted count table, each row divided by its total (recall on the diagonal)."""
    if confusion.empty:
        return empty_figure("no test cells")
    counts = confusion.to_numpy(dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    norm = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    n_rows, n_cols = norm.shape
    cell = float(np.clip(9 / max(n_rows, n_cols), 0.22, 0.55))
    fs = _tick_size(max(n_rows, n_cols))
    width = cell * n_cols + _text_in(confusion.index, fs) + 1.8
    height = cell * n_rows + _text_in(confusion.columns, fs) + 1.0
    fig = Figure(figsize=(width, height), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap=CONTINUOUS, vmin=0, vmax=1, aspect="equal", interpolation="nearest")
    ax.set_xticks(range(n_cols), labels=[str(c) for c in confusion.columns], rotation=90, fontsize=fs)
    ax.set_yticks(range(n_rows), labels=[str(r) for r in confusion.index], fontsize=fs)
    ax.set(xlabel="predicted", ylabel="true")
    ax.set_title(title, fontsize=11)
    if max(n_rows, n_cols) <= 25:
        for (i, j), v in np.ndenumerate(norm):
            if v >= 0.005:
                ax.text(
                    j,
                    i,
                    f"{v:.2f}"[1:] if v < 1 else "1",
                    ha="center",
                    va="center",
                    fontsize=7 if n_cols > 12 else 8,
                    color="black" if v > 0.6 else "white",
                )
    fig.colorbar(im, ax=ax, shrink=max(0.3, min(1.0, 3 / height)), label="fraction of the true class")
    return fig


def umap_embedding(
    coords: np.ndarray, labels: Mapping[str, Sequence[str]], *, order: Sequence[str] | None = None
) -> Figure:
    """Scatter of 2-D ``coords`` (n x 2), one panel per entry of ``labels`` (e.g. true, predicted).

    All panels share one colour per label (``order``: the label order, default sorted) and one legend, which
    lists the labels that occur.
    """
    coords = np.asarray(coords, dtype=float)
    values = {k: np.asarray(v).astype(str) for k, v in labels.items()}
    present = set().union(*map(set, values.values()))
    cats = [c for c in (order if order is not None else sorted(present)) if c in present]
    cats += sorted(present - set(cats))
    colours = dict(zip(cats, palette(len(cats)), strict=True))
    ncol = int(np.ceil(len(cats) / 25))
    fig = Figure(
        figsize=(4.6 * len(values) + 1.2 + ncol * (0.4 + _text_in(cats, 8)), 4.8), layout="constrained"
    )
    axes = fig.subplots(1, len(values), squeeze=False)[0]
    size = float(np.clip(12000 / max(len(coords), 1), 2, 30))
    for ax, (name, vals) in zip(axes, values.items(), strict=True):
        ax.scatter(
            coords[:, 0], coords[:, 1], c=[colours[v] for v in vals], s=size, linewidths=0, rasterized=True
        )
        ax.set_title(f"{name} label", fontsize=11)
        ax.set(xticks=[], yticks=[], xlabel="UMAP 1", ylabel="UMAP 2", aspect="equal", adjustable="datalim")
    handles = [Line2D([], [], ls="", marker="o", color=colours[c], label=c) for c in cats]
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, ncol=ncol, frameon=False)
    return fig


# -------------------------------------------------------------------------------------------- markers


def marker_dotplot(table: pd.DataFrame, *, markers: pd.DataFrame | None = None, title: str = "") -> Figure:
    """Bubble plot: rows = ``table.group``, columns = ``table.gene``, size = ``fraction``, colour = ``mean``.

    ``table`` is :func:`celler.markers.dot_table` output; the mean is scaled to 0-1 per gene so colours are
    comparable across genes. ``markers`` (``gene, marker_of, known``, from
    :func:`celler.markers.combine_markers`) adds the cell type each gene column marks on top and a ``*`` on
    known markers from the marker tables.
    """
    if table.empty:
        return empty_figure("no marker genes")
    groups, genes = list(dict.fromkeys(table["group"])), list(dict.fromkeys(table["gene"]))
    frac = table.pivot(index="group", columns="gene", values="fraction").reindex(index=groups, columns=genes)
    mean = table.pivot(index="group", columns="gene", values="mean").reindex(index=groups, columns=genes)
    span = (mean.max() - mean.min()).replace(0, np.nan)
    scaled = ((mean - mean.min()) / span).fillna(0.0)
    info = markers.set_index("gene").reindex(genes) if markers is not None else None
    known = set(markers.loc[markers["known"].astype(bool), "gene"]) if markers is not None else set()
    xlabels = [f"{g}*" if g in known else g for g in genes]

    cell, fs = 0.26, _tick_size(max(len(groups), len(genes)))
    top = _text_in(info["marker_of"].dropna(), 8) + 0.3 if info is not None else 0.3
    width = cell * len(genes) + _text_in(groups, fs) + 2.4
    height = cell * len(groups) + _text_in(xlabels, fs) + top + 0.9
    fig = Figure(figsize=(max(width, 5.5), max(height, 3.2)), layout="constrained")
    ax = fig.add_subplot()
    yy, xx = np.meshgrid(np.arange(len(groups)), np.arange(len(genes)), indexing="ij")
    max_s = (0.85 * cell * 72) ** 2
    dots = ax.scatter(
        xx.ravel(),
        yy.ravel(),
        s=frac.to_numpy().ravel() * max_s,
        c=scaled.to_numpy().ravel(),
        cmap=CONTINUOUS,
        vmin=0,
        vmax=1,
        edgecolors="0.35",
        linewidths=0.3,
    )
    ax.set_xticks(range(len(genes)), labels=xlabels, rotation=90, fontsize=fs)
    ax.set_yticks(range(len(groups)), labels=groups, fontsize=fs)
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
        label="mean expression\n(scaled per gene)",
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


__all__ = [
    "OKABE_ITO",
    "class_sizes",
    "confusion_heatmap",
    "f1_vs_size",
    "marker_dotplot",
    "palette",
    "save_figure",
    "training_curves",
    "umap_embedding",
]
