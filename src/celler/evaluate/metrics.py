"""Metrics over prediction tables, mean ± std summaries over seeds, and the paper's comparison tables.

A prediction table has columns ``cell, split, level, true, predicted, confidence`` (one row per test cell per
level); it does not matter which method wrote it.

Conventions (stated once, used everywhere):

* **closed set**: the classes with at least one training cell (``train_counts``). Test cells of any other
  class are **open-set** cells: they are counted and their predictions tabulated in ``result["open_set"]``,
  and excluded from every closed-set metric.
* **macro averages** (precision, recall, F1; balanced accuracy = macro recall) are taken over the classes that
  occur among the closed-set test cells. A class that is only predicted (absent from the test truth) does not
  enter the averages - its false positives already count as misses of the true classes - but is listed in
  the per-class table with support 0. This is scikit-learn's
  ``f1_score(..., labels=<classes in y_true>, average="macro", zero_division=0)``.
* **rare classes**: training share below ``rare_fraction`` (3% by default); rare recall is the mean recall
  over the rare classes that occur in the test set (NaN when none does).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from celler.errors import CellerError

#: Scalar metrics returned by :func:`evaluate`, in report order.
SCALAR_METRICS = (
    "accuracy",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "weighted_f1",
    "balanced_accuracy",
    "rare_recall",
)

PRED_REQUIRED = ("true", "predicted")


def _check_pred(pred: pd.DataFrame, level: str | None) -> pd.DataFrame:
    missing = [c for c in PRED_REQUIRED if c not in pred.columns]
    if missing:
        msg = f"prediction table lacks column(s) {', '.join(missing)} (columns: {list(pred.columns)})"
        raise CellerError(msg)
    if "level" in pred.columns:
        levels = pred["level"].unique()
        if level is not None:
            pred = pred[pred["level"] == level]
            if pred.empty:
                msg = f"prediction table has no rows for level {level!r} (levels: {sorted(map(str, levels))})"
                raise CellerError(msg)
        elif len(levels) > 1:
            msg = f"prediction table holds levels {sorted(map(str, levels))}; pass level= to evaluate one"
            raise CellerError(msg)
    return pred


def per_class_table(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support for each class in ``classes`` (0 where undefined)."""
    classes = list(classes)
    tp = np.array([np.sum((y_true == c) & (y_pred == c)) for c in classes], dtype=float)
    n_pred = np.array([np.sum(y_pred == c) for c in classes], dtype=float)
    support = np.array([np.sum(y_true == c) for c in classes], dtype=float)
    precision = np.divide(tp, n_pred, out=np.zeros_like(tp), where=n_pred > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return pd.DataFrame(
        {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(int)},
        index=pd.Index(classes, name="class"),
    )


def evaluate(
    pred: pd.DataFrame,
    train_counts: pd.Series,
    *,
    rare_fraction: float = 0.03,
    level: str | None = None,
) -> dict:
    """Closed-set and open-set metrics of one prediction table (one level).

    ``train_counts`` maps each class to its number of training cells (for this level). Returns a dict with the
    scalar metrics of :data:`SCALAR_METRICS`, ``n_cells`` / ``n_closed`` / ``n_open``, ``rare_classes``
    (list), ``after_unassigned`` (only when ``pred`` has an ``unassigned`` column: the share left
    ``Unassigned`` and macro / rare-class recall counting those cells as wrong), ``per_class`` (DataFrame: precision, recall, f1, support, train_count, rare; rows = test classes,
    then classes only predicted), ``confusion`` (DataFrame: true closed-set class x predicted label) and
    ``open_set`` (dict: ``n_cells``, ``classes`` {class: n}, ``predicted_as`` DataFrame true x predicted).
    """
    pred = _check_pred(pred, level)
    train_counts = pd.Series(train_counts, dtype=float)
    train_counts.index = train_counts.index.astype(str)
    train_counts = train_counts[train_counts > 0]
    if train_counts.empty:
        msg = "train_counts is empty: evaluation needs the number of training cells per class"
        raise CellerError(msg)
    y_true_all = pred["true"].astype(str).to_numpy()
    y_pred_all = pred["predicted"].astype(str).to_numpy()
    known = np.isin(y_true_all, train_counts.index.to_numpy())

    y_true, y_pred = y_true_all[known], y_pred_all[known]
    o_true, o_pred = y_true_all[~known], y_pred_all[~known]
    open_set = {
        "n_cells": int((~known).sum()),
        "classes": {str(k): int(v) for k, v in pd.Series(o_true).value_counts().sort_index().items()},
        "predicted_as": pd.crosstab(pd.Series(o_true, name="true"), pd.Series(o_pred, name="predicted")),
    }

    test_classes = sorted(np.unique(y_true))
    only_pred = sorted(set(np.unique(y_pred)) - set(test_classes))
    share = train_counts / train_counts.sum()
    rare = sorted(share.index[share < rare_fraction])
    table = per_class_table(y_true, y_pred, test_classes + only_pred)
    table["train_count"] = train_counts.reindex(table.index).fillna(0).astype(int).to_numpy()
    table["rare"] = table.index.isin(rare)

    res: dict = {"n_cells": len(y_true_all), "n_closed": len(y_true), "n_open": open_set["n_cells"]}
    if len(y_true) == 0:
        res.update({m: np.nan for m in SCALAR_METRICS})
    else:
        t = table.loc[test_classes]
        res["accuracy"] = float(np.mean(y_true == y_pred))
        res["macro_precision"] = float(t["precision"].mean())
        res["macro_recall"] = float(t["recall"].mean())
        res["macro_f1"] = float(t["f1"].mean())
        res["weighted_f1"] = float(np.average(t["f1"], weights=t["support"]))
        res["balanced_accuracy"] = res["macro_recall"]
        rare_in_test = [c for c in rare if c in test_classes]
        res["rare_recall"] = float(t.loc[rare_in_test, "recall"].mean()) if rare_in_test else np.nan
    res["rare_classes"] = rare
    if "unassigned" in pred.columns and len(y_true):  # the Unassigned rule of a calibrated Celler model
        left = pred["unassigned"].astype(bool).to_numpy()[known]
        kept_right = (y_true == y_pred) & ~left
        rare_in_test = [c for c in rare if c in test_classes]
        recall = {c: float(kept_right[y_true == c].mean()) for c in test_classes}
        res["after_unassigned"] = {
            "unassigned_share": float(left.mean()),
            "macro_recall": float(np.mean(list(recall.values()))),
            "rare_recall": float(np.mean([recall[c] for c in rare_in_test])) if rare_in_test else np.nan,
        }
    res["per_class"] = table
    cols = test_classes + only_pred
    res["confusion"] = pd.crosstab(
        pd.Categorical(y_true, categories=test_classes), pd.Categorical(y_pred, categories=cols), dropna=False
    ).rename_axis(index="true", columns="predicted")
    res["open_set"] = open_set
    return res


def scalar_row(result: dict) -> dict:
    """The scalar part of an :func:`evaluate` result (one row of a runs table)."""
    after = result.get("after_unassigned") or {}
    return {m: result[m] for m in SCALAR_METRICS} | {
        "n_closed": result["n_closed"],
        "n_open": result["n_open"],
        # the test cells rare recall rests on, and what a user receives: the share of known-type cells left
        # Unassigned, rare recall counting them wrong
        "n_rare_test": int(result["per_class"].loc[result["per_class"]["rare"].astype(bool), "support"].sum()),
        "unassigned_share": after.get("unassigned_share", np.nan),
        "rare_recall_after_unassigned": after.get("rare_recall", np.nan),
    }


def evaluate_table(
    pred: pd.DataFrame, train_counts: dict[str, pd.Series] | pd.Series, *, rare_fraction: float = 0.03
) -> pd.DataFrame:
    """Scalar metrics for every level of a prediction table: one row per level.

    ``train_counts`` is either one Series (used for every level) or a dict level -> Series.
    """
    pred = _check_pred(pred, None) if "level" not in pred.columns else pred
    rows = []
    for lev in pd.unique(pred["level"]) if "level" in pred.columns else [None]:
        counts = train_counts[lev] if isinstance(train_counts, dict) else train_counts
        r = evaluate(pred, counts, rare_fraction=rare_fraction, level=lev)
        rows.append({"level": lev} | scalar_row(r))
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------- summaries


def summarise(
    runs: pd.DataFrame, metrics: Iterable[str] | None = None, *, seed_col: str = "seed"
) -> pd.DataFrame:
    """Mean and standard deviation over seeds.

    ``runs`` has one row per (method, seed, level, ...) with metric columns. Every non-metric column other
    than ``seed_col`` is a grouping key. Returns one row per group with ``{metric}_mean``, ``{metric}_std``
    (sample std, ddof=1; 0 for a single seed) and ``n_seeds``.
    """
    if metrics is None:
        metrics = [m for m in runs.columns if m in SCALAR_METRICS]
    metrics = list(metrics)
    missing = [m for m in [*metrics, seed_col] if m not in runs.columns]
    if missing:
        msg = f"runs table lacks column(s) {', '.join(missing)} (columns: {list(runs.columns)})"
        raise CellerError(msg)
    keys = [c for c in runs.columns if c not in metrics and c != seed_col and c not in ("n_closed", "n_open")]
    grouped = runs.groupby(keys, sort=False, dropna=False) if keys else runs.groupby(lambda _: 0)
    out = grouped[metrics].agg(["mean", "std"])
    out.columns = [f"{m}_{s}" for m, s in out.columns]
    for m in metrics:
        out[f"{m}_std"] = out[f"{m}_std"].fillna(0.0)
    out["n_seeds"] = grouped[seed_col].nunique()
    return out.reset_index() if keys else out.reset_index(drop=True)


def format_mean_std(summary: pd.DataFrame, metrics: Sequence[str], *, digits: int = 3) -> pd.DataFrame:
    """Replace each ``{m}_mean`` / ``{m}_std`` pair by one ``"0.912 ± 0.004"`` string column named ``m``;
    a row of one seed (``n_seeds`` 1) shows its value alone: a spread of one run would read as "± 0.000"."""
    out = summary.drop(columns=[c for c in summary.columns if c.endswith(("_mean", "_std"))])
    single = summary["n_seeds"].eq(1) if "n_seeds" in summary else pd.Series(False, index=summary.index)
    for m in metrics:
        mean, std = summary[f"{m}_mean"], summary[f"{m}_std"]
        out[m] = [
            "–" if pd.isna(a) else f"{a:.{digits}f}" if one else f"{a:.{digits}f} ± {b:.{digits}f}"
            for a, b, one in zip(mean, std, single, strict=True)
        ]
    return out


def _paper_table(runs: pd.DataFrame, keys: list[str], metrics: dict[str, str]) -> pd.DataFrame:
    missing = [c for c in keys if c not in runs.columns]
    if missing:
        msg = f"runs table lacks column(s) {', '.join(missing)} (columns: {list(runs.columns)})"
        raise CellerError(msg)
    s = summarise(runs[[*keys, "seed", *metrics]], list(metrics))
    s = s.sort_values(keys, kind="stable").reset_index(drop=True)
    return s.rename(
        columns={f"{m}_{x}": f"{label}_{x}" for m, label in metrics.items() for x in ("mean", "std")}
    )


def table2(runs: pd.DataFrame) -> pd.DataFrame:
    """Table 2 analogue: tissue x level x method -> macro precision, recall, F1 and rare-class recall (mean, std
    over seeds)."""
    return _paper_table(
        runs,
        ["tissue", "level", "method"],
        {"macro_precision": "macro_precision", "macro_recall": "macro_recall", "macro_f1": "macro_f1",
         "rare_recall": "rare_recall"},
    )


def table3(runs: pd.DataFrame) -> pd.DataFrame:
    """Table 3 analogue: dataset x method -> macro F1, macro precision and rare-class recall (mean, std over
    seeds); the column names say which average."""
    return _paper_table(runs, ["dataset", "method"], {"macro_f1": "macro_f1", "macro_precision": "macro_precision",
                                                       "rare_recall": "rare_recall"})


def table4(runs: pd.DataFrame, *, loss_col: str = "loss") -> pd.DataFrame:
    """Table 4 analogue (loss ablation): [dataset x] [method x] loss -> macro-F1, balanced acc., rare recall.

    ``dataset`` and ``method`` are grouping keys when the runs table has them.
    """
    keys = [c for c in ("dataset", "method") if c in runs.columns] + [loss_col]
    return _paper_table(
        runs,
        keys,
        {"macro_f1": "macro_f1", "balanced_accuracy": "balanced_accuracy", "rare_recall": "rare_recall"},
    )


def paired_differences(runs: pd.DataFrame, *, reference: str = "ce", loss_col: str = "loss") -> pd.DataFrame:
    """Each loss minus ``reference`` on the same dataset and seed (the same split and training cells), then mean ±
    std over seeds: [dataset x] loss -> Δ macro-F1, Δ balanced acc., Δ rare recall.

    Seed-to-seed spread is larger than most loss effects on these small sets, so a loss is judged by its
    paired differences, not by two overlapping means.
    """
    metrics = ["macro_f1", "balanced_accuracy", "rare_recall"]
    keys = [c for c in ("dataset", "method") if c in runs.columns]
    ref = runs[runs[loss_col] == reference].set_index([*keys, "seed"])[metrics]
    if ref.empty:
        msg = f"no {reference!r} runs to compare against (losses: {sorted(runs[loss_col].unique())})"
        raise CellerError(msg)
    other = runs[runs[loss_col] != reference]
    joined = other.join(ref, on=[*keys, "seed"], rsuffix="_ref", how="inner")
    for m in metrics:
        joined[m] = joined[m] - joined[f"{m}_ref"]
    s = summarise(joined[[*keys, loss_col, "seed", *metrics]], metrics)
    s = s.sort_values([*keys, loss_col], kind="stable").reset_index(drop=True)
    return s.rename(columns={f"{m}_{x}": f"delta_{m}_{x}" for m in metrics for x in ("mean", "std")})


def to_markdown(table: pd.DataFrame, *, digits: int = 3) -> str:
    """Markdown of a summary / paper table, each mean/std pair shown as ``mean ± std``."""
    metrics = [c[: -len("_mean")] for c in table.columns if c.endswith("_mean") and f"{c[:-5]}_std" in table]
    shown = format_mean_std(table, metrics, digits=digits) if metrics else table
    return shown.to_markdown(index=False, disable_numparse=True)  # keep "0.800" as formatted


def write_table(table: pd.DataFrame, path: str | Path, *, digits: int = 3) -> tuple[Path, Path]:
    """Write ``table`` as ``<stem>.tsv`` (numeric mean/std columns) and ``<stem>.md`` (``mean ± std``).

    ``path`` may carry either suffix or none; both files are written next to each other, atomically.
    """
    from celler.data.io import atomic_path

    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".tsv", ".md") else p
    tsv, md = stem.with_suffix(".tsv"), stem.with_suffix(".md")
    with atomic_path(tsv) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format=f"%.{max(digits, 6)}g")
    with atomic_path(md) as tmp:
        tmp.write_text(to_markdown(table, digits=digits) + "\n")
    return tsv, md


# ----------------------------------------------------------------------------------------------- hierarchy


def hierarchy_disagreement(pred_sub, pred_parent, sub_to_parent: dict) -> float:
    """Fraction of cells whose predicted subclass does not belong to the predicted parent class.

    ``pred_sub`` and ``pred_parent`` are per-cell predictions (Series aligned by index, or equal-length
    array-likes). A predicted subclass missing from ``sub_to_parent`` (e.g. SingleCellNet's ``"rand"``) counts
    as a disagreement.
    """
    if isinstance(pred_sub, pd.Series) and isinstance(pred_parent, pd.Series):
        if not pred_sub.index.equals(pred_parent.index):
            if set(pred_sub.index) != set(pred_parent.index):
                msg = "hierarchy_disagreement: subclass and parent predictions cover different cells"
                raise CellerError(msg)
            pred_parent = pred_parent.reindex(pred_sub.index)
    sub = np.asarray(pred_sub).astype(str)
    par = np.asarray(pred_parent).astype(str)
    if sub.shape != par.shape:
        msg = f"hierarchy_disagreement: {len(sub)} subclass vs {len(par)} parent predictions"
        raise CellerError(msg)
    if len(sub) == 0:
        return float("nan")
    mapped = np.array([str(sub_to_parent.get(s, "\0")) for s in sub])
    return float(np.mean(mapped != par))


__all__ = [
    "SCALAR_METRICS",
    "evaluate",
    "evaluate_table",
    "format_mean_std",
    "hierarchy_disagreement",
    "per_class_table",
    "scalar_row",
    "summarise",
    "table2",
    "table3",
    "table4",
    "to_markdown",
    "write_table",
]
