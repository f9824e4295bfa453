"""Helpers shared by the baselines: the input contract, gene alignment, labels and the output frame."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from celler.errors import CellerError

#: ``log1p(10_000) = 9.2104``: a cell whose whole library sits in one gene. CellTypist uses the same bound.
LOG1P_1E4_MAX = 9.22


def check_log1p_1e4(adata: ad.AnnData, what: str) -> None:
    """Fail unless ``X`` looks like log1p of counts normalised to 10,000 per cell (0 <= x <= 9.22)."""
    x = adata.X
    data = x.data if sp.issparse(x) else np.asarray(x)
    if data.size == 0:
        return
    lo, hi = float(data.min()), float(data.max())
    if not np.isfinite(lo) or not np.isfinite(hi):
        msg = f"{what}: expression has NaN/inf values; the baselines need log1p of counts normalised to 1e4"
        raise CellerError(msg)
    if lo < 0 or hi > LOG1P_1E4_MAX:
        msg = (
            f"{what}: expression range [{lo:.3g}, {hi:.3g}] is not log1p of counts normalised to 10,000 "
            "per cell "
            f"(expected 0..{LOG1P_1E4_MAX}); use the prepared expr.h5ad, not raw counts or scaled data"
        )
        raise CellerError(msg)


def align_genes(train: ad.AnnData, test: ad.AnnData) -> tuple[ad.AnnData, ad.AnnData]:
    """Restrict both sets to their shared genes, in the training order."""
    if train.var_names.equals(test.var_names):
        return train, test
    shared = train.var_names[train.var_names.isin(test.var_names)]
    if len(shared) == 0:
        msg = "train and test share no gene names (var_names); use gene symbols in both"
        raise CellerError(msg)
    return train[:, shared], test[:, shared]


def train_labels(train: ad.AnnData, label_key: str) -> np.ndarray:
    """The training labels as strings, checked for presence, missing values and at least two classes."""
    if label_key not in train.obs:
        msg = f"obs column {label_key!r} not found in the training cells (columns: {list(train.obs.columns)})"
        raise CellerError(msg)
    lab = train.obs[label_key]
    if lab.isna().any():
        n = int(lab.isna().sum())
        msg = f"obs column {label_key!r}: {n} training cells have no label; drop or label them"
        raise CellerError(msg)
    y = lab.astype(str).to_numpy()
    if len(np.unique(y)) < 2:
        msg = f"obs column {label_key!r}: training cells hold fewer than two classes; nothing to classify"
        raise CellerError(msg)
    return y


def dense(x) -> np.ndarray:
    """``x`` as a C-contiguous float32 array."""
    return np.ascontiguousarray(x.toarray() if sp.issparse(x) else np.asarray(x), dtype=np.float32)


def output(test: ad.AnnData, predicted, confidence) -> pd.DataFrame:
    """The per-baseline result: ``predicted`` (str) and ``confidence`` (float), one row per test cell."""
    return pd.DataFrame(
        {"predicted": np.asarray(predicted).astype(str), "confidence": np.asarray(confidence, dtype=float)},
        index=pd.Index(test.obs_names, name="cell"),
    )
