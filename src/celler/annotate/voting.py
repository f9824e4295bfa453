"""CellTypist-style majority voting: over-cluster the cells on their embeddings, then each cluster takes
its most frequent label (``Heterogeneous`` below ``min_prop``)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from celler.annotate.model_dir import HETEROGENEOUS
from celler.annotate.result import AnnotationResult
from celler.errors import CellerError

log = logging.getLogger(__name__)


def over_cluster(embeddings: np.ndarray, *, resolution: float | None = None, seed: int = 0) -> np.ndarray:
    """Over-clustering of the cells on their Celler embeddings: Leiden on a 15-neighbour graph, resolution
    growing with the number of cells (5 below 5,000 cells ... 30 above 200,000, as CellTypist); k-means
    with about one cluster per 30 cells when Leiden (igraph) is not installed."""
    from celler.evaluate.baselines.celltypist_lr import celltypist_resolution

    n = len(embeddings)
    if resolution is None:
        resolution = celltypist_resolution(n)
    try:
        import anndata as ad
        import igraph  # noqa: F401 (scanpy's Leiden needs it)
        import scanpy as sc

        a = ad.AnnData(X=np.zeros((n, 0), np.float32), obsm={"X_celler": embeddings})
        sc.pp.neighbors(a, n_neighbors=min(15, n - 1), use_rep="X_celler", random_state=seed)
        sc.tl.leiden(a, resolution=resolution, flavor="igraph", n_iterations=2, directed=False,
                     random_state=seed)
        return a.obs["leiden"].astype(str).to_numpy()
    except ImportError:
        from sklearn.cluster import KMeans

        log.info("igraph not installed: over-clustering with k-means instead of Leiden")
        k = max(2, min(n // 30, 500))
        return KMeans(k, n_init=1, random_state=seed).fit_predict(embeddings).astype(str)


def majority_vote(labels, clusters, *, min_prop: float = 0.0) -> np.ndarray:
    """Each cluster's most frequent label for all its cells (``Unassigned`` votes too); ``Heterogeneous``
    where that label covers less than ``min_prop`` of the cluster."""
    t = pd.crosstab(pd.Series(np.asarray(labels, dtype=str), name="label"),
                    pd.Series(np.asarray(clusters, dtype=str), name="cluster"))
    share = t / t.sum(axis=0)
    winner = t.idxmax(axis=0)
    winner[share.max(axis=0) < min_prop] = HETEROGENEOUS
    return winner.reindex(np.asarray(clusters, dtype=str)).to_numpy(dtype=object)


def vote(result: AnnotationResult, *, clusters=None, min_prop: float = 0.0) -> AnnotationResult:
    """Add ``majority_voting`` and ``over_clustering`` to ``result`` (in place; returned for chaining)."""
    p = result.predictions
    if clusters is None:
        if len(p) <= 50:
            log.warning("majority voting skipped: %d cells are too few to over-cluster", len(p))
            p["over_clustering"] = "0"
            p["majority_voting"] = p["label"]
            return result
        clusters = over_cluster(result.embeddings)
    clusters = np.asarray(clusters).astype(str)
    if len(clusters) != len(p):
        msg = f"over_clustering has {len(clusters)} entries for {len(p)} cells"
        raise CellerError(msg)
    p["over_clustering"] = clusters
    p["majority_voting"] = majority_vote(p["label"].to_numpy(), clusters, min_prop=min_prop)
    result.info.update({"majority_voting": True, "min_prop": float(min_prop),
                        "n_clusters": int(len(np.unique(clusters)))})
    return result


# ------------------------------------------------------------------------------------ file-to-file stage
