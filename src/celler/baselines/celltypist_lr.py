"""CellTypist (the real ``celltypist`` package), trained offline on the training cells.

Two methods share the trained model:

* :func:`fit_predict` - best match: each cell gets the class with the largest decision score.
* :func:`fit_predict_majority` - best match refined by majority voting inside over-clusters of the test
  cells, as ``celltypist.annotate(..., majority_voting=True)`` does. The over-clustering is computed
  here with CellTypist's recipe (see :func:`over_cluster`), capped for small data and seeded, then handed
  to ``annotate``; so it works offline, on small data, reproducibly, and without numba compilation.

Input contract: ``X`` is log1p of counts normalised to 10,000 per cell (max <= 9.22), which is what
CellTypist expects. ``celltypist.train``'s own check (the first cell's expm1 sums to exactly 10,000) is
switched off because it fails as soon as the genes are a subset of the ones normalised over; the range
check in :func:`celler.baselines._common.check_log1p_1e4` replaces it.
"""

from __future__ import annotations

import contextlib
import logging
import warnings

import anndata as ad
import numpy as np
import pandas as pd

from celler.baselines._common import align_genes, check_log1p_1e4, dense, output, train_labels


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
        )
        res = celltypist.annotate(_query(test), model=model, mode="best match")
    pred = res.predicted_labels["predicted_labels"].astype(str).to_numpy()
    conf = res.probability_matrix.max(axis=1).to_numpy()
    return output(test, pred, conf)


def celltypist_resolution(n_cells: int) -> int:
    """CellTypist's over-clustering resolution: 5 below 5,000 cells, growing to 30 above 200,000."""
    steps = [(5_000, 5), (20_000, 10), (40_000, 15), (100_000, 20), (200_000, 25)]
    return next((r for n, r in steps if n_cells < n), 30)


def over_cluster(test: ad.AnnData, *, seed: int = 0, resolution: float | None = None) -> np.ndarray:
    """Leiden over-clustering of log1p-normalised cells, following CellTypist's recipe.

    HVGs (top 2,500, only when there are more genes), scaling clipped at 10, PCA-50, a symmetrised
    10-nearest-neighbour graph and Leiden (igraph, 2 iterations) at CellTypist's size-based resolution.
    Component and neighbour counts are capped by the data size, and the graph is built with scikit-learn
    (unweighted kNN instead of scanpy's UMAP weights, which need a long numba compilation on first use).
    """
    import scanpy as sc
    from sklearn.decomposition import PCA
    from sklearn.neighbors import kneighbors_graph
    from sklearn.preprocessing import StandardScaler

    a = ad.AnnData(X=test.X.copy(), obs=pd.DataFrame(index=test.obs_names.copy()), var=test.var[[]].copy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if a.n_vars > 2500:
            sc.pp.filter_genes(a, min_cells=5)
            sc.pp.highly_variable_genes(a, n_top_genes=2500, subset=True)
        x = np.clip(StandardScaler().fit_transform(dense(a.X)), -10, 10)
        n_comps = max(1, min(50, a.n_obs - 1, a.n_vars - 1))
        pcs = PCA(n_components=n_comps, random_state=seed).fit_transform(x)
        knn = kneighbors_graph(pcs, n_neighbors=max(1, min(10, a.n_obs - 1)), include_self=False)
        adjacency = knn.maximum(knn.T).tocsr()
        if resolution is None:
            resolution = celltypist_resolution(a.n_obs)
        sc.tl.leiden(
            a,
            resolution=resolution,
            adjacency=adjacency,
            flavor="igraph",
            n_iterations=2,
            random_state=seed,
            directed=False,
        )
    return a.obs["leiden"].astype(str).to_numpy()


def fit_predict_majority(
    train: ad.AnnData,
    test: ad.AnnData,
    *,
    label_key: str = "celler_label",
    seed: int = 0,
    resolution: float | None = None,
    min_prop: float = 0.0,
    C: float = 1.0,  # noqa: N803
    max_iter: int | None = None,
    n_jobs: int | None = None,
) -> pd.DataFrame:
    """CellTypist with majority voting over Leiden over-clusters of the test cells.

    With 50 test cells or fewer CellTypist itself skips the vote; the best-match labels are returned then.
    ``confidence`` is CellTypist's probability of the voted class for that cell.
    """
    import celltypist

    train, test = align_genes(train, test)
    with _quiet():
        model = _train(train, label_key, seed, C=C, max_iter=max_iter, n_jobs=n_jobs)
        query = _query(test)
        if query.n_obs <= 50:
            res = celltypist.annotate(query, model=model, mode="best match")
            pred = res.predicted_labels["predicted_labels"].astype(str).to_numpy()
        else:
            clusters = over_cluster(test, seed=seed, resolution=resolution)
            res = celltypist.annotate(
                query,
                model=model,
                mode="best match",
                majority_voting=True,
                over_clustering=clusters,
                min_prop=min_prop,
            )
            pred = res.predicted_labels["majority_voting"].astype(str).to_numpy()
    prob = res.probability_matrix
    col = prob.columns.get_indexer(pred)  # -1 for 'Heterogeneous' (min_prop > 0)
    p = prob.to_numpy()
    conf = np.where(col >= 0, p[np.arange(len(pred)), np.maximum(col, 0)], np.nan)
    return output(test, pred, conf)
