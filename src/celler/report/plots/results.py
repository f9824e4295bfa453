"""Figures of the results: per-class F1 against class size, confidence by class, novelty by type (the
confusion matrices: :mod:`~celler.report.plots.confusion`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

from celler.report.plots.base import (
    CELLER_COLOUR,
    CELLER_MARKER,
    MARKERS,
    OKABE_ITO,
    PAGE_WIDTH_IN,
    empty_figure,
    log_axis,
    palette,
    tick_size,
)

#: Up to this many classes every class is named in the F1 figure; above it the rare and the worst ones.
NAME_ALL_CLASSES = 20
#: Confidences are drawn up to 1 - this (a logit axis cannot reach 1).
CONFIDENCE_FLOOR = 1e-5
N_WORST = 5
#: Where the confidence axis may put a tick (those inside its limits are used).
CONFIDENCE_TICKS = (0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999, 0.99999)


def f1_vs_size(per_class: pd.DataFrame, *, title: str = "Per-class F1 vs training class size") -> Figure:
    """Per-class F1 (mean over seeds) against training cells of the class (log x), one series per method.

    ``per_class``: columns ``class, f1, train_count`` and optionally ``method`` (default "celler"), ``seed``,
    ``support`` (test cells; classes without any are left out) and ``rare`` (shaded region). Celler is the
    black star no baseline shares. Classes are named along the top with their test support: every class up to
    :data:`NAME_ALL_CLASSES` classes, else the rare ones and the :data:`N_WORST` worst for Celler.
    """
    df = per_class.copy()
    if "method" not in df:
        df["method"] = "celler"
    if "support" not in df:
        df["support"] = np.nan
    df = df[(df["train_count"] > 0) & ~(df["support"] <= 0)]
    if df.empty:
        return empty_figure("no classes with training and test cells")
    agg = (
        df.groupby(["method", "class"], sort=False)
        .agg(f1=("f1", "mean"), train_count=("train_count", "first"), support=("support", "first"))
        .reset_index()
    )
    methods = list(
        dict.fromkeys(["celler", *agg["method"]] if "celler" in set(agg["method"]) else agg["method"])
    )
    baselines = [m for m in methods if m != "celler"]
    style = {m: (c, mk) for m, c, mk in zip(baselines, palette(len(baselines)), MARKERS * 3, strict=False)}
    fig = Figure(figsize=(8.4, 5.2), layout="constrained")
    ax = fig.add_subplot()
    if "rare" in df and df["rare"].astype(bool).any():
        edge = df.loc[df["rare"].astype(bool), "train_count"].max()
        ax.axvspan(agg["train_count"].min() / 1.5, edge * 1.15, color="0.93", zorder=0, label="rare classes")
    for method in methods:
        part = agg[agg["method"] == method].sort_values("train_count")
        if method == "celler":  # a marker no baseline shares, drawn above them
            look = {"marker": CELLER_MARKER, "ms": 13, "color": CELLER_COLOUR, "mec": "white", "mew": 0.6,
                    "label": "Celler", "zorder": 4}
        else:
            colour, marker = style[method]
            look = {"marker": marker, "ms": 6.5, "color": colour, "alpha": 0.8, "label": method, "zorder": 3}
        ax.plot(part["train_count"], part["f1"], ls="", **look)
    log_axis(ax, agg["train_count"])
    lo, hi = agg["train_count"].min() / 1.6, agg["train_count"].max() * 1.6
    ax.set_xlim(lo, hi)
    ax.set(xlabel="training cells of the class (log scale)", ylabel="F1 on test cells", ylim=(-0.03, 1.03))
    fig.suptitle(title, fontsize=11)
    ax.grid(color="0.92")
    ax.set_axisbelow(True)
    fig.legend(loc="outside right upper", fontsize=8)
    classes = agg.drop_duplicates("class").set_index("class")
    _name_classes(fig, ax, classes, _classes_to_name(agg, df), (lo, hi))
    return fig


def _classes_to_name(agg: pd.DataFrame, df: pd.DataFrame) -> list[str]:
    classes = list(dict.fromkeys(agg["class"]))
    if len(classes) <= NAME_ALL_CLASSES:
        return classes
    rare = set(df.loc[df["rare"].astype(bool), "class"]) if "rare" in df else set()
    ref = agg[agg["method"] == "celler"] if "celler" in set(agg["method"]) else agg
    worst = ref.groupby("class")["f1"].mean().nsmallest(N_WORST).index
    return [c for c in classes if c in rare or c in set(worst)]


def _name_classes(
    fig: Figure, ax, classes: pd.DataFrame, names: list[str], xlim: tuple[float, float]
) -> None:
    """Class names above the axes at their training size, spread apart where sizes are close (1-D repel),
    each with a leader line down to its x and its test support."""
    if not names:
        return
    fs = 7.5
    fig.draw_without_rendering()
    width_px = ax.get_window_extent().width
    gap = fs * 1.35 / 72 * fig.dpi / max(width_px, 1)  # one rotated label's height, in axes fraction
    log_lo, log_hi = np.log10(xlim[0]), np.log10(xlim[1])
    sizes = classes.loc[names, "train_count"].astype(float)
    order = np.argsort(sizes.to_numpy(), kind="stable")
    want = (np.log10(sizes.to_numpy()[order]) - log_lo) / (log_hi - log_lo)
    placed = want.copy()
    for i in range(1, len(placed)):  # push right, then shift the whole run back inside the axes
        placed[i] = max(placed[i], placed[i - 1] + gap)
    overflow = placed[-1] - 1.0
    if overflow > 0:
        placed -= overflow
        for i in range(len(placed) - 2, -1, -1):
            placed[i] = min(placed[i], placed[i + 1] - gap)
    for k, idx in enumerate(order):
        name = names[idx]
        support = classes.loc[name, "support"]
        label = f"{name} ({int(support)} test)" if pd.notna(support) else str(name)
        ax.axvline(sizes.iloc[idx], color="0.82", lw=0.6, ls=":", zorder=1)
        ax.annotate(
            label,
            xy=(want[k], 1.0),
            xycoords="axes fraction",
            xytext=(placed[k], 1.06),
            textcoords="axes fraction",
            rotation=90,
            ha="center",
            va="bottom",
            fontsize=fs,
            arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5, "shrinkA": 0, "shrinkB": 0},
        )


def confidence_by_class(
    pred: pd.DataFrame,
    *,
    unassigned: np.ndarray,
    thresholds: Sequence[float],
    order: Sequence[str] | None = None,
    by: str = "predicted",
) -> Figure:
    """Per predicted class (``by="true"``: per true type): the confidence of each test cell (right calls and
    wrong calls apart), the class's low-confidence threshold (by predicted class only: a true type's cells
    are held to their predicted classes' thresholds), and the share of its cells flagged ``low_confidence``.

    ``pred``: ``predicted, true, confidence``; ``unassigned``: per cell, flagged (below its predicted class's
    threshold); ``thresholds``: per cell, the threshold that applied. The confidence axis is a logit scale, so
    that 0.99 and 0.999 (where thresholds sit) are apart.
    """
    if pred.empty:
        return empty_figure("no test cells")
    import seaborn as sns

    df = pred.assign(
        call=np.where(pred["true"].astype(str) == pred["predicted"].astype(str), "right", "wrong"),
        unassigned=np.asarray(unassigned, dtype=bool),
        cut=np.asarray(thresholds, dtype=float),
        shown=pred["confidence"].astype(float).clip(1e-4, 1 - CONFIDENCE_FLOOR),
    )
    df[by] = df[by].astype(str)
    present = set(df[by])
    order = list(order) if order is not None else sorted(present)
    classes = [c for c in order if c in present] + sorted(present - set(order))
    n = len(classes)
    fs = tick_size(n)
    fig = Figure(figsize=(PAGE_WIDTH_IN, 1.5 + 0.36 * n), layout="constrained")  # the page's width
    ax = fig.add_subplot()
    ax.set_xscale("logit")
    colours = {"right": OKABE_ITO[4], "wrong": OKABE_ITO[5]}
    common = {"data": df, "x": "shown", "y": by, "order": classes, "ax": ax}
    sns.stripplot(
        **common,
        hue="call",
        hue_order=["right", "wrong"],
        palette=colours,
        dodge=True,
        jitter=0.25,
        size=2.2,
        alpha=0.6,
        legend=True,
    )
    sns.boxplot(**common, fill=False, showfliers=False, width=0.7, color="0.25", linewidth=0.8)
    groups = df.groupby(by)
    for i, c in enumerate(classes):
        part = groups.get_group(c)
        if by == "predicted":
            cut = float(part["cut"].iloc[0])
            ax.plot([cut, cut], [i - 0.42, i + 0.42], color="black", lw=1.6, zorder=5)
        share = part["unassigned"].mean()
        ax.text(
            1.02,
            i,
            f"{share:.0%} of {len(part):,}",
            transform=ax.get_yaxis_transform(),
            va="center",
            fontsize=fs - 1,
            color="black" if share < 0.5 else OKABE_ITO[5],
        )
    ax.text(
        1.02,
        -0.55,
        "flagged",
        transform=ax.get_yaxis_transform(),
        va="bottom",
        fontsize=fs - 1,
        fontweight="bold",
    )
    lo, hi = confidence_limits(df["shown"], df["cut"])  # the same limits by predicted class and by true type
    ax.set_xlim(lo, hi)
    ax.xaxis.set_major_locator(FixedLocator([t for t in CONFIDENCE_TICKS if lo <= t <= hi]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    what = "predicted class" if by == "predicted" else "true type"
    ax.set(xlabel="confidence of the call (predictions.tsv; logit scale)", ylabel=what)
    ax.tick_params(axis="y", labelsize=fs)
    ax.grid(axis="x", color="0.92")
    handles, labels = ax.get_legend_handles_labels()
    if by == "predicted":
        handles.append(Line2D([], [], color="black", lw=1.6))
        labels.append("low-confidence threshold")
    ax.get_legend().remove()
    fig.legend(
        handles,
        [f"{lb} calls" if lb in colours else lb for lb in labels],
        fontsize=8,
        loc="outside lower center",
        ncol=3,
        frameon=False,
    )
    ax.set_title(
        f"Confidence by {what} ({df['unassigned'].mean():.0%} of the test cells below the "
        "threshold)",
        fontsize=10.5,
        loc="left",
    )
    return fig


def confidence_limits(values, cuts=(), *, pad: float = 0.03) -> tuple[float, float]:
    """Limits of the confidence axis (logit scale): from the lowest to the highest of the confidences and the
    thresholds drawn, ``pad`` of that span beyond each end, so that the values use the axis's whole width
    (calibrated confidences sit in a narrow band near 1; a fixed 0.5 to 1 - 1e-5 axis left most of it empty)."""
    v = np.clip(np.r_[np.asarray(values, float), np.asarray(cuts, float)], 1e-4, 1 - CONFIDENCE_FLOOR)
    z = np.log(v / (1 - v))
    lo, hi = float(z.min()), float(z.max())
    margin = pad * (hi - lo) if hi > lo else 0.5
    lo, hi = lo - margin, hi + margin
    return 1 / (1 + np.exp(-lo)), 1 / (1 + np.exp(-hi))


def novelty_by_type(pred: pd.DataFrame, *, cut: float, order: Sequence[str] | None = None) -> Figure:
    """Per true type: the novelty score of each test cell (celler.model.novelty), the cut above which
    ``celler annotate`` calls a cell ``Unassigned``, and the share of the type's cells above it. A type the
    model was trained on should sit left of the cut; a type it never saw, right of it.

    ``pred``: ``true, novelty``; ``cut``: the model's novelty cut (log scale: the score is a squared distance).
    """
    if pred.empty or "novelty" not in pred:
        return empty_figure("no novelty scores (a model trained before them)")
    import seaborn as sns

    df = pred.assign(true=pred["true"].astype(str), shown=pred["novelty"].astype(float).clip(lower=1e-2))
    present = set(df["true"])
    order = list(order) if order is not None else []
    types = [c for c in order if c in present] + sorted(present - set(order))
    fs = tick_size(len(types))
    fig = Figure(figsize=(PAGE_WIDTH_IN, 1.5 + 0.36 * len(types)), layout="constrained")  # as the confidence
    ax = fig.add_subplot()
    ax.set_xscale("log")
    common = {"data": df, "x": "shown", "y": "true", "order": types, "ax": ax}
    sns.stripplot(**common, jitter=0.25, size=2.2, alpha=0.5, color=OKABE_ITO[4])
    sns.boxplot(**common, fill=False, showfliers=False, width=0.7, color="0.25", linewidth=0.8)
    ax.axvline(cut, color="black", lw=1.6, label="novelty cut")
    by = df.groupby("true")
    for i, t in enumerate(types):
        share = float((by.get_group(t)["novelty"] > cut).mean())
        ax.text(1.02, i, f"{share:.0%} of {len(by.get_group(t)):,}", transform=ax.get_yaxis_transform(),
                va="center", fontsize=fs - 1, color="black" if share < 0.5 else OKABE_ITO[5])
    ax.text(1.02, -0.55, "Unassigned", transform=ax.get_yaxis_transform(), va="bottom", fontsize=fs - 1,
            fontweight="bold")
    ax.set(xlabel="novelty: squared distance to the nearest training type (log scale)", ylabel="true type")
    ax.tick_params(axis="y", labelsize=fs)
    ax.grid(axis="x", color="0.92")
    ax.legend(fontsize=8, loc="lower right", frameon=False)
    ax.set_title(f"Novelty by true type ({float((df['novelty'] > cut).mean()):.0%} of the test cells above the "
                 "cut)", fontsize=10.5, loc="left")
    return fig
