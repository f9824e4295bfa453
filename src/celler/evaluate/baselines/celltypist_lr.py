"""CellTypist (the real ``celltypist`` package), trained offline on the training cells.

Two methods share the trained model:

* :func:`fit_predict` - best match: each cell gets the class with the largest decision score.
* :func:`fit_predict_majority` - CellTypist's own majority voting, ``celltypist.annotate(...,
  majority_voting=True)``: best match refined by the majority inside Leiden over-clusters of the test cells
  that CellTypist computes itself (needs ``leidenalg`` and ``igraph``, in the ``baselines`` extra).

Input contract: ``X`` is log1p of counts normalised to 10,000 per cell (max <= 9.22), which is what
CellTypist expects. ``celltypist.train``'s own check (the first cell's expm1 sums to exactly 10,000) is
switched off because it fails as soon as the genes are a subset of the ones normalised over; the range
check in :func:`celler.evaluate.baselines._common.check_log1p_1e4` replaces it.
"""

from __future__ import annotations

import contextlib
import logging
import warnings

import anndata as ad
import numpy as np
import pandas as pd

from celler.evaluate.baselines._common import align_genes, check_log1p_1e4, dense, output, train_labels


@contextlib.contextmanager
def _quiet():
    """Silence celltypist's INFO chatter and scanpy's deprecation warnings for the duration."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import celltypist  # noqa: F401  (the import itself configures celltypist's logger)

        logger = logging.getLogger("celltypist.logger")
        old = logger.level
        logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            logger.setLevel(old)


def _train(train: ad.AnnData, label_key: str, seed: int, **params):
    import celltypist

    y = train_labels(train, label_key)
    check_log1p_1e4(train, "training cells")
    np.random.seed(seed)  # celltypist's mini-batch SGD draws from the global generator
    kwargs = dict(params)
    if kwargs.get("use_SGD") or kwargs.get("feature_selection"):
        kwargs.setdefault("random_state", seed)
    return celltypist.train(
        dense(train.X), labels=y, genes=np.asarray(train.var_names), check_expression=False, **kwargs
    )


def _query(test: ad.AnnData) -> ad.AnnData:
    """A bare copy of the test cells for celltypist (it writes into the object it is given)."""
    check_log1p_1e4(test, "test cells")
    return ad.AnnData(X=test.X.copy(), obs=pd.DataFrame(index=test.obs_names.copy()), var=test.var[[]].copy())


def fit_predict(
    train: ad.AnnData,
    test: ad.AnnData,
    *,
    label_key: str = "celler_label",
    seed: int = 0,
    C: float = 1.0,  # noqa: N803  (celltypist's name)
    max_iter: int | None = None,
    use_SGD: bool = False,  # noqa: N803, FBT001, FBT002
    feature_selection: bool = False,  # noqa: FBT001, FBT002
    top_genes: int = 300,
    n_jobs: int | None = None,
    class_weight: str | None = None,
) -> pd.DataFrame:
    """Train a CellTypist logistic-regression model on ``train`` and predict ``test`` by best match.

    Defaults follow CellTypist's own (L2 logistic regression, ``C = 1``, no SGD, no feature selection: the
    fast and strongest setting at our data sizes). ``confidence`` is CellTypist's probability (sigmoid of the
    one-vs-rest decision score) of the predicted class.
    """
    import celltypist

    train, test = align_genes(train, test)
    with _quiet():
        model = _train(
            train,
            label_key,
            seed,
            C=C,
            max_iter=max_iter,
            use_SGD=use_SGD,
            feature_selection=feature_selection,
            top_genes=top_genes,
            n_jobs=n_jobs,
            class_weight=class_weight,  # celltypist.train passes it on to its LogisticRegression
        )
        res = celltypist.annotate(_query(test), model=model, mode="best match")
    pred = res.predicted_labels["predicted_labels"].astype(str).to_numpy()
    conf = res.probability_matrix.max(axis=1).to_numpy()
    return output(test, pred, conf)


def fit_predict_balanced(
    train: ad.AnnData,
    test: ad.AnnData,
    *,
    label_key: str = "celler_label",
    seed: int = 0,
    C: float = 1.0,  # noqa: N803
    max_iter: int | None = None,
    n_jobs: int | None = None,
) -> pd.DataFrame:
    """CellTypist with class balancing: its logistic regression with ``class_weight="balanced"``.

    Not CellTypist's ``balance_cell_type``: that option only re-weights which cells its mini-batch SGD
    samples, and it samples ``min(batch_number * batch_size, n)`` cells without replacement, so below
    100,000 training cells (its defaults) every cell is drawn once per epoch and nothing is balanced; it
    also refuses fewer cells than one batch (1,000). Class weights balance at every data size.
    """
    return fit_predict(train, test, label_key=label_key, seed=seed, C=C, max_iter=max_iter, n_jobs=n_jobs,
                       class_weight="balanced")


def celltypist_resolution(n_cells: int) -> int:
    """CellTypist's over-clustering resolution: 5 below 5,000 cells, growing to 30 above 200,000."""
    steps = [(5_000, 5), (20_000, 10), (40_000, 15), (100_000, 20), (200_000, 25)]
    return next((r for n, r in steps if n_cells < n), 30)


def fit_predict_majority(
    train: ad.AnnData,
    test: ad.AnnData,
    *,
    label_key: str = "celler_label",
    seed: int = 0,
    min_prop: float = 0.0,
    C: float = 1.0,  # noqa: N803
    max_iter: int | None = None,
    n_jobs: int | None = None,
) -> pd.DataFrame:
    """CellTypist with its own majority voting: ``celltypist.annotate(..., majority_voting=True)``.

    CellTypist over-clusters the test cells itself (HVGs, scaling, PCA-50, scanpy's 10-neighbour graph,
    Leiden at its size-based resolution, all with scanpy's fixed random states) and gives each cluster its
    most frequent best-match label; ``seed`` seeds the training only. With 50 test cells or fewer CellTypist
    skips the vote and the best-match labels are returned. ``confidence`` is CellTypist's probability of the
    voted class for that cell (NaN for ``Heterogeneous``, below ``min_prop``).
    """
    import celltypist

    train, test = align_genes(train, test)
    with _quiet():
        model = _train(train, label_key, seed, C=C, max_iter=max_iter, n_jobs=n_jobs)
        res = celltypist.annotate(_query(test), model=model, mode="best match", majority_voting=True,
                                  min_prop=min_prop)
    labels = res.predicted_labels
    column = "majority_voting" if "majority_voting" in labels else "predicted_labels"  # no vote: <= 50 cells
    pred = labels[column].astype(str).to_numpy()
    prob = res.probability_matrix
    col = prob.columns.get_indexer(pred)  # -1 for 'Heterogeneous' (min_prop > 0)
    p = prob.to_numpy()
    conf = np.where(col >= 0, p[np.arange(len(pred)), np.maximum(col, 0)], np.nan)
    return output(test, pred, conf)


def fit_predict_prob_match(
    train: ad.AnnData,
    test: ad.AnnData,
    *,
    label_key: str = "celler_label",
    seed: int = 0,
    p_thres: float = 0.5,
) -> pd.DataFrame:
    """CellTypist's own rejection: ``mode="prob match"``, a cell is ``Unassigned`` when no class's probability
    (sigmoid of its one-vs-rest score) reaches ``p_thres``. ``predicted`` stays the best match and
    ``unassigned`` says whether CellTypist left the cell unassigned (as Celler's tables do)."""
    import celltypist

    train, test = align_genes(train, test)
    with _quiet():
        model = _train(train, label_key, seed)
        res = celltypist.annotate(_query(test), model=model, mode="prob match", p_thres=p_thres)
    prob = res.probability_matrix
    out = output(test, prob.idxmax(axis=1).astype(str).to_numpy(), prob.max(axis=1).to_numpy())
    out["unassigned"] = (prob.to_numpy() < p_thres).all(axis=1)
    return out
