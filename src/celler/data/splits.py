"""Train / test assignment of cells, fixed once at QC time so every method sees the same cells."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from celler.errors import CellerError


def assign_split(cells: pd.DataFrame, split: dict[str, Any], *, source: str = "config") -> pd.Series:
    """Return 'train' / 'test' per cell of ``cells`` (needs columns ``label`` and ``input_split``).

    ``split`` forms:

    * ``{by: none}``: every cell is 'train' (unlabelled corpora).
    * ``{by: file}``: each input file's ``split:`` (cross-study, e.g. Wang -> Xin).
    * ``{by: fraction, test_fraction: 0.3, seed: 0}``: stratified by label; a class with one cell stays in train.
    * ``{by: column, column: donor, test_values: [...]}``: cells whose obs value is listed are test
      (a leave-one-donor-out fold when the column is the donor).
    """
    by = split.get("by", "none")
    if by == "none":
        return pd.Series("train", index=cells.index)
    if by == "file":
        s = cells["input_split"]
        if s.isna().any() or not set(s.unique()) <= {"train", "test"}:
            msg = f"{source}: split by file needs 'split: train|test' on every input"
            raise CellerError(msg)
        return s.astype(str)
    if by == "column":
        col = split["column"]
        if col not in cells.columns:
            msg = f"{source}: split column {col!r} not found in obs"
            raise CellerError(msg)
        values = {str(v) for v in split["test_values"]}
        test = cells[col].astype(str).isin(values)
        if not test.any() or test.all():
            msg = f"{source}: split column {col!r} with test_values {sorted(values)} leaves no train or no test cells"
            raise CellerError(msg)
        return pd.Series(np.where(test, "test", "train"), index=cells.index)
    if by == "fraction":
        return stratified_split(cells["label"], float(split.get("test_fraction", 0.3)), int(split.get("seed", 0)))
    msg = f"{source}: split 'by' must be one of none, file, fraction, column; got {by!r}"
    raise CellerError(msg)


def stratified_split(labels: pd.Series, test_fraction: float, seed: int) -> pd.Series:
    """Per class, a seeded random ``test_fraction`` of cells goes to 'test' (at least one stays in train)."""
    rng = np.random.default_rng(seed)
    out = pd.Series("train", index=labels.index, dtype=object)
    for _, idx in labels.groupby(labels, observed=True).groups.items():
        idx = np.asarray(idx)
        n_test = min(int(round(len(idx) * test_fraction)), len(idx) - 1)
        if n_test > 0:
            out.loc[rng.choice(idx, size=n_test, replace=False)] = "test"
    return out
