"""Induced long tail (CIFAR-LT style): subsample training cells per class along an exact exponential profile.

Classes are ranked by available training cells (k = 0 is the head, ties broken by class name) and class k
keeps n_k = n_head · ratio^(−k/(C−1)) cells. Real sets are already long-tailed, so capping each class at what
it has would leave e.g. ratio 10 equal to the natural data; instead the head is lowered until all classes fit:
n_head = min_k available_k · ratio^(k/(C−1)). Counts are rounded (each class keeps >= 1 cell) and the realised
ratio (largest kept / smallest kept) is reported. Test cells never pass through here.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from celler.errors import CellerError


class LongTailError(CellerError, ValueError):
    """Bad input to the long-tail sampler (a ValueError that entry points print as one line)."""


class LongTail(NamedTuple):
    """What :func:`induce_long_tail` kept; unpacks as ``kept, table, realised_ratio``."""

    kept: pd.Index  # kept cell names, in input order
    table: pd.DataFrame  # per class, head first: n_available, n_target (rounded curve), n_kept (>= 1)
    realised_ratio: float  # largest n_kept / smallest n_kept


def induce_long_tail(labels: pd.Series, ratio: float, seed: int) -> LongTail:
    """Keep training cells so that class sizes follow n_head · ratio^(−k/(C−1)) exactly (up to rounding).

    ``labels`` holds the training cells only (index = unique cell names, values = class). Sampling is without
    replacement within each class, seeded, and independent of the cells' row order.
    """
    if not np.isfinite(ratio) or ratio < 1:
        msg = f"long-tail `ratio` must be a finite number >= 1 (largest / smallest class), got {ratio!r}"
        raise LongTailError(msg)
    if len(labels) == 0:
        msg = "no training cells to subsample: `labels` is empty"
        raise LongTailError(msg)
    if labels.isna().any():
        msg = f"{int(labels.isna().sum())} training cells have no label; drop them before subsampling"
        raise LongTailError(msg)
    if not labels.index.is_unique:
        msg = "cell names in `labels` are not unique; make them unique (e.g. AnnData.obs_names_make_unique())"
        raise LongTailError(msg)

    values = labels.astype(object)  # drops unused categories of a categorical
    available = values.value_counts()
    order = sorted(available.index, key=lambda c: (-available[c], str(c)))  # head first, ties by name
    available = available.loc[order].to_numpy()
    n_classes = len(order)
    k = np.arange(n_classes)
    slope = k / (n_classes - 1) if n_classes > 1 else np.zeros(1)
    n_head = np.min(available * ratio**slope)  # the largest head for which every class fits the curve
    target = np.round(n_head * ratio ** (-slope)).astype(int)  # the curve, rounded
    target = np.minimum(target, available)  # guards float round-off only: the curve never exceeds available
    n_keep = np.maximum(target, 1)  # a class the curve rounds to 0 still keeps one cell

    rng = np.random.default_rng(seed)
    chosen: list[np.ndarray] = []
    for cls, n in zip(order, n_keep, strict=True):
        cells = np.array(sorted(values.index[(values == cls).to_numpy()], key=str), dtype=object)
        chosen.append(rng.choice(cells, size=n, replace=False))
    keep = set(np.concatenate(chosen).tolist())
    kept = labels.index[labels.index.isin(keep)]

    table = pd.DataFrame(
        {"n_available": available, "n_target": target, "n_kept": n_keep},
        index=pd.Index(order, name="class"),
    )
    return LongTail(kept, table, float(n_keep.max() / n_keep.min()))


def label_fraction(labels: pd.Series, fraction: float, seed: int, *, min_cells: int = 3) -> pd.Index:
    """The cells that keep their label when only ``fraction`` of the training labels are given (the
    label-efficiency benchmark): per class round(fraction · n), at least ``min_cells`` (all of a smaller class),
    drawn with ``seed``; ``fraction`` >= 1 keeps every cell. The rest stay training cells without a label."""
    if not 0 < fraction:
        msg = f"label fraction must be > 0, got {fraction}"
        raise LongTailError(msg)
    if fraction >= 1:
        return labels.index
    rng = np.random.default_rng(seed)
    keep = []
    for cls in sorted(labels.astype(str).unique()):
        members = labels.index[labels.astype(str).to_numpy() == cls]
        n = min(len(members), max(min_cells, round(fraction * len(members))))
        keep.append(members[np.sort(rng.choice(len(members), n, replace=False))])
    return keep[0].append(keep[1:])


def save_long_tail(result: LongTail, cells_path: str | Path, table_path: str | Path, **meta: object) -> None:
    """Write the kept cells (one name per line) and the per-class table (TSV) so a run can be reproduced.

    The table's first line is a comment with the realised ratio and any ``meta`` (e.g. ``ratio=10, seed=0``).
    """
    Path(cells_path).write_text("".join(f"{c}\n" for c in result.kept))
    header = " ".join(f"{k}={v}" for k, v in {**meta, "realised_ratio": result.realised_ratio}.items())
    with Path(table_path).open("w") as fh:
        fh.write(f"# {header}\n")
        result.table.to_csv(fh, sep="\t")


def load_kept_cells(cells_path: str | Path) -> pd.Index:
    """The kept cell names written by :func:`save_long_tail`."""
    return pd.Index([line for line in Path(cells_path).read_text().splitlines() if line], dtype=object)


def load_long_tail(cells_path: str | Path, table_path: str | Path) -> tuple[LongTail, dict[str, str]]:
    """Read back :func:`save_long_tail`'s files: the result and the header's key=value pairs (as strings)."""
    with Path(table_path).open() as fh:
        first = fh.readline()
        if not first.startswith("# "):
            msg = f"{table_path}: not a long-tail table (its first line should be '# ... realised_ratio=...')"
            raise LongTailError(msg)
        meta = dict(item.split("=", 1) for item in first[2:].split())
        table = pd.read_csv(fh, sep="\t", index_col="class", dtype={"class": str})
    return LongTail(load_kept_cells(cells_path), table, float(meta["realised_ratio"])), meta
