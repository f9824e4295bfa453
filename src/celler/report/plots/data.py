"""Figures of the data and the training: QC distributions, class sizes, training curves."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from celler.report.plots.base import (
    CONTINUOUS,
    MARKERS,
    OKABE_ITO,
    empty_figure,
    footnote,
    log_axis,
    palette,
    text_width,
    tick_size,
)

#: Reasons a QC filter removed a cell (the label filters are reported by name, not drawn).
QC_FILTERS = ("min_genes", "min_counts", "max_pct_mito")


def qc_distributions(
    cells: pd.DataFrame, *, thresholds: Mapping[str, float] | None = None, title: str = ""
) -> Figure:
    """Histograms of genes per cell, total per cell and (when any cell has mitochondrial reads: MT- genes)
    mitochondrial %, kept cells and cells a QC filter removed, with the thresholds that were applied.

    ``cells``: the QC cell table (``kind, n_genes, total, pct_mito, kept, reason, label``); ``thresholds``:
    ``min_genes, min_counts, max_pct_mito``. Count thresholds are not applied to log-normalised input, so
    they are not drawn there and a note says so; labels removed by ``drop_labels`` are named in a note.
    """
    if cells.empty:
        return empty_figure("no cells")
    has_mito = has_mito_reads(cells)
    thr = dict(thresholds or {})
    counts = cells["kind"].astype(str).eq("counts")
    all_log = not counts.any()
    panels = [
        ("n_genes", "genes per cell", "min_genes", True),
        (
            "total",
            "sum of log values per cell" if all_log else "total counts per cell",
            "min_counts",
            not all_log,
        ),
    ]
    if has_mito:
        panels.append(("pct_mito", "mitochondrial %", "max_pct_mito", not all_log))
    fig = Figure(figsize=(3.9 * len(panels) + 0.4, 3.5), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    kept = cells["kept"].astype(bool)
    removed = ~kept & cells["reason"].astype(str).isin(QC_FILTERS)
    for ax, (col, name, key, applies) in zip(axes, panels, strict=True):
        values = cells[col].astype(float)
        bins = np.histogram_bin_edges(values[kept | removed], bins=50)
        for mask, colour, what in ((kept, OKABE_ITO[4], "kept"), (removed, OKABE_ITO[5], "removed by QC")):
            if mask.any():
                ax.hist(
                    values[mask], bins=bins, color=colour, alpha=0.75, label=f"{what} ({int(mask.sum()):,})"
                )
        cut = thr.get(key)
        drawn = applies and cut is not None and (0 < cut < 100 if key == "max_pct_mito" else cut > 0)
        if drawn:
            ax.axvline(cut, color="black", ls="--", lw=1, label=f"{key} = {cut:g}")
        ax.set(xlabel=name, ylabel="cells")
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
        ax.xaxis.set_major_formatter(FuncFormatter(_short_number))
        ax.grid(axis="y", color="0.92")
        ax.legend(fontsize=8)
    kinds = "log-normalised" if all_log else "raw counts" if counts.all() else "mixed counts / log"
    fig.suptitle(f"{title + ': ' if title else ''}QC ({kinds} input)", fontsize=11)
    footnote(fig, qc_notes(cells))
    return fig


def has_mito_reads(cells: pd.DataFrame) -> bool:
    return bool((cells["pct_mito"].astype(float) > 0).any())


def _short_number(v: float, _pos=None) -> str:
    """Tick label without crowding: 12k for 12,000, plain below 1,000."""
    return f"{v / 1000:g}k" if abs(v) >= 1000 else f"{v:g}"


def qc_notes(cells: pd.DataFrame) -> str:
    """What the QC figure cannot show: skipped thresholds, the missing MT panel, labels removed by name."""
    notes = []
    if cells["kind"].astype(str).eq("log").any():
        notes.append("log-normalised input: min_counts and max_pct_mito were not applied")
    if not has_mito_reads(cells):
        notes.append("no mitochondrial (MT-) expression in the data: mitochondrial % not shown")
    dropped = cells.loc[cells["reason"].astype(str) == "dropped label", "label"].astype(str).value_counts()
    if len(dropped):
        notes.append("drop_labels removed " + ", ".join(f"{k} ({v:,})" for k, v in dropped.items()))
    missing = int((cells["reason"].astype(str) == "missing label").sum())
    if missing:
        notes.append(f"{missing:,} cells without a label removed")
    return "; ".join(notes) + ("." if notes else "")


def class_sizes(counts: pd.DataFrame, *, rare_fraction: float = 0.03) -> Figure:
    """Long-tail bar chart: cells per class (``counts`` rows) and split (columns), log scale, largest first.

    A dotted line marks ``rare_fraction`` of the training cells (when a ``train`` column exists).
    """
    if counts.empty:
        return empty_figure("no labelled cells")
    counts = counts.loc[counts.sum(axis=1).sort_values(ascending=False).index]
    n, splits = len(counts), list(counts.columns)
    fs = tick_size(n)
    slot = 0.3 if len(splits) <= 2 else 0.4
    fig = Figure(figsize=(5.5 + text_width(counts.index, fs), 1.3 + slot * n), layout="constrained")
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
    log_axis(ax, counts.to_numpy().ravel())
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


def selected_epoch(finetune_log: pd.DataFrame, val_macro_f1: float | None = None) -> int | None:
    """Row (0-based) of the epoch fine-tuning kept: the last row whose subclass validation macro-F1 equals
    the chosen ``val_macro_f1`` (model ``config.json``), else the best, a tie keeping the later (finetune's
    rule)."""
    col = "val_macro_f1_subclass"
    if finetune_log is None or col not in finetune_log or finetune_log[col].isna().all():
        return None
    f1 = finetune_log[col].to_numpy(dtype=float)
    target = np.nanmax(f1) if val_macro_f1 is None else val_macro_f1
    hits = np.flatnonzero(np.isclose(f1, target, rtol=0, atol=1e-9))
    return int(hits[-1]) if len(hits) else int(np.flatnonzero(f1 == np.nanmax(f1))[-1])


SHARED_PRETRAINING = "Pretraining (one model, shared by all tissues)"
CONTINUED_PRETRAINING = "Pretraining continued on this tissue's cells"


def training_curves(
    finetune_log: pd.DataFrame | None,
    pretrain_log: pd.DataFrame | None = None,
    *,
    selected: int | None = None,
    n_bins: int | None = None,
    pretrain_title: str = SHARED_PRETRAINING,
) -> Figure:
    """Pretraining loss per step (when given), fine-tuning train loss and validation macro-F1 per epoch.

    ``finetune_log``: columns ``stage, epoch, train_loss, val_macro_f1_<level>...``; ``selected``: the row of
    the kept epoch (marked); ``pretrain_log``: ``step, loss`` and, when logged, ``tokens_per_s, cells_per_s``
    (each step is coloured by its cells' mean length: length-bucketed batches of short cells score far worse,
    which is what the spikes are); ``n_bins``: the value bins, for the chance line at ln(n_bins - 1);
    ``pretrain_title``: which pretraining the log is (the shared model, or a tissue's continued pretraining).
    """
    has_pre = pretrain_log is not None and not pretrain_log.empty
    has_ft = finetune_log is not None and not finetune_log.empty
    panels = int(has_pre) + 2 * int(has_ft)
    if panels == 0:
        return empty_figure("no training logs")
    fig = Figure(figsize=(3.9 * panels + 0.6 * has_pre, 3.6), layout="constrained")
    axes = list(fig.subplots(1, panels, squeeze=False)[0])
    if has_pre:
        _pretrain_panel(fig, axes.pop(0), pretrain_log, n_bins, pretrain_title)
    if has_ft:
        _finetune_panels(finetune_log, axes[0], axes[1], selected)
    for ax in fig.axes:
        ax.title.set_fontsize(10.5)
    return fig


def _pretrain_panel(fig: Figure, ax, log: pd.DataFrame, n_bins: int | None, title: str) -> None:
    loss = log["loss"].astype(float)
    step = log["step"]
    if {"tokens_per_s", "cells_per_s"} <= set(log.columns):
        length = log["tokens_per_s"] / log["cells_per_s"].replace(0, np.nan)
        dots = ax.scatter(step, loss, c=length, s=6, cmap=CONTINUOUS, linewidths=0, zorder=2)
        fig.colorbar(dots, ax=ax, label="tokens per cell in the batch", shrink=0.85, aspect=15)
    else:
        ax.plot(step, loss, color=OKABE_ITO[1], lw=0.8, label="per step")
    window = max(len(loss) // 40, 1)
    if window > 1:
        ax.plot(
            step,
            loss.rolling(window, min_periods=1).median(),
            color="black",
            lw=1.4,
            label=f"median of {window} steps",
            zorder=3,
        )
    if n_bins and n_bins > 2:
        ax.axhline(math.log(n_bins - 1), color="0.4", ls=":", lw=1, label=f"chance, ln {n_bins - 1}")
    ax.set(xlabel="step", ylabel="masked-value loss", title=title)
    ax.grid(color="0.92")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7.5, loc="upper right")


def _finetune_panels(log: pd.DataFrame, loss_ax, f1_ax, selected: int | None) -> None:
    log = log.reset_index(drop=True)
    x = np.arange(1, len(log) + 1)
    stages = log["stage"].astype(str) if "stage" in log else pd.Series(["main"] * len(log))
    several = stages.nunique() > 1
    for stage, colour in zip(pd.unique(stages), palette(stages.nunique()), strict=True):
        m = (stages == stage).to_numpy()
        loss_ax.plot(
            x[m],
            log.loc[m, "train_loss"],
            "o-",
            color=colour,
            ms=4,
            label=f"stage {stage}" if several else None,
        )
    if (log["train_loss"] > 0).all() and log["train_loss"].max() / log["train_loss"].min() > 30:
        loss_ax.set_yscale("log")
    loss_ax.set(
        xlabel="epoch",
        ylabel="training loss" + (" (log scale)" if loss_ax.get_yscale() == "log" else ""),
        title="Fine-tuning: loss",
    )
    f1_cols = [c for c in log.columns if c.startswith("val_macro_f1")]
    for col, colour, marker in zip(f1_cols, palette(len(f1_cols)), MARKERS, strict=False):
        f1_ax.plot(
            x, log[col], marker=marker, color=colour, ms=4, label=col.removeprefix("val_macro_f1_") or col
        )
    f1_ax.set(xlabel="epoch", ylabel="validation macro-F1", title="Fine-tuning: validation", ylim=(0, 1.05))
    if selected is not None and 0 <= selected < len(log):
        for ax in (loss_ax, f1_ax):
            ax.axvline(x[selected], color="0.3", ls="--", lw=1, label=f"kept: epoch {x[selected]}")
    for ax in (loss_ax, f1_ax):
        ax.grid(color="0.92")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
        ax.xaxis.get_major_locator().set_params(integer=True)
