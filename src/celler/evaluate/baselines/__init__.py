"""Baseline cell-type classifiers, all trained and tested on exactly the cells Celler uses.

Each baseline is a function ``fit_predict(train, test, *, label_key="celler_label", seed=0, **params)``
returning a frame indexed by the test cells with columns ``predicted`` and ``confidence``; it is seeded and
deterministic for a seed. Input contract: ``X`` is log1p of counts normalised to 10,000 per cell. A baseline
that can use label-free cells takes them as ``unlabelled`` (the cells whose split is ``unlabelled``).

:func:`run_baseline` splits an expression AnnData by ``obs["celler_split"]`` and writes the common prediction
table (``cell, split, level, true, predicted, confidence``), one row per test cell per level; the
``parent`` level is added when ``obs["celler_parent"]`` exists (a separate flat classifier on parent labels).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import anndata as ad
import pandas as pd

from celler.errors import CellerError
from celler.evaluate.baselines import (
    actinn,
    celltypist_lr,
    knn,
    label_spreading,
    logreg,
    scanvi,
    singlecellnet,
)
from celler.evaluate.baselines._common import check_log1p_1e4

BASELINES: dict[str, Callable[..., pd.DataFrame]] = {
    "celltypist": celltypist_lr.fit_predict,
    "celltypist_majority": celltypist_lr.fit_predict_majority,
    "celltypist_balanced": celltypist_lr.fit_predict_balanced,
    "actinn": actinn.fit_predict,
    "singlecellnet": singlecellnet.fit_predict,
    "logreg": logreg.fit_predict,
    "logreg_balanced": logreg.fit_predict_balanced,
    "logreg_pca": logreg.fit_predict_pca,
    "knn": knn.fit_predict,
    "label_spreading": label_spreading.fit_predict,
    "scanvi": scanvi.fit_predict,
}

PRED_COLUMNS = ["cell", "split", "level", "true", "predicted", "confidence"]


def baseline_params(name: str) -> list[str]:
    """The tunable keyword parameters of a baseline (besides ``label_key`` and ``seed``)."""
    sig = inspect.signature(get_baseline(name))
    return [
        p for p, v in sig.parameters.items()
        if v.kind is v.KEYWORD_ONLY and p not in ("label_key", "seed", "unlabelled")
    ]


def get_baseline(name: str) -> Callable[..., pd.DataFrame]:
    """The ``fit_predict`` function of baseline ``name``."""
    if name not in BASELINES:
        msg = f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}"
        raise CellerError(msg)
    return BASELINES[name]


def run_baseline(
    name: str,
    adata: ad.AnnData,
    *,
    label_key: str = "celler_label",
    seed: int = 0,
    parent_key: str = "celler_parent",
    split_key: str = "celler_split",
    **params,
) -> pd.DataFrame:
    """Train baseline ``name`` on the ``train`` cells of ``adata`` and predict its ``test`` cells.

    Returns the prediction table: columns ``cell, split, level, true, predicted, confidence``, one row per
    test cell for level ``subclass`` (labels from ``label_key``) and, when ``parent_key`` is an obs column,
    for level ``parent`` too. Test cells whose class never occurs in training are kept (evaluation reports
    them as open-set cells).
    """
    fn = get_baseline(name)
    unknown = sorted(set(params) - set(baseline_params(name)))
    if unknown:
        known = ", ".join(baseline_params(name))
        msg = f"baseline {name!r} has no parameter {', '.join(unknown)} (known: {known})"
        raise CellerError(msg)
    for col in (split_key, label_key):
        if col not in adata.obs:
            msg = f"obs column {col!r} not found in the expression data (columns: {list(adata.obs.columns)})"
            raise CellerError(msg)
    split = adata.obs[split_key].astype(str)
    train, test = adata[(split == "train").to_numpy()], adata[(split == "test").to_numpy()]
    for part, sub in (("train", train), ("test", test)):
        if sub.n_obs == 0:
            msg = f"obs column {split_key!r} has no {part!r} cells (values: {sorted(split.unique())})"
            raise CellerError(msg)
    check_log1p_1e4(adata, "expression data")
    if "unlabelled" in inspect.signature(fn).parameters and (split == "unlabelled").any():
        params["unlabelled"] = adata[(split == "unlabelled").to_numpy()]
    levels = [("subclass", label_key)]
    if parent_key and parent_key in adata.obs:
        levels.append(("parent", parent_key))
    frames = []
    for level, key in levels:
        res = fn(train, test, label_key=key, seed=seed, **params)
        res = res.reindex(test.obs_names)
        frames.append(
            pd.DataFrame(
                {
                    "cell": test.obs_names.astype(str),
                    "split": "test",
                    "level": level,
                    "true": test.obs[key].astype(str).to_numpy(),
                    "predicted": res["predicted"].astype(str).to_numpy(),
                    "confidence": res["confidence"].to_numpy(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)[PRED_COLUMNS]


__all__ = ["BASELINES", "PRED_COLUMNS", "baseline_params", "get_baseline", "run_baseline"]
