"""k-nearest neighbours on PCA-50 of standardised genes (scaling and PCA fitted on training cells only)."""

from __future__ import annotations

import anndata as ad
import pandas as pd
from sklearn.neighbors import KNeighborsClassifier

from celler.evaluate.baselines._common import align_genes, dense, output, train_labels
from celler.evaluate.baselines.logreg import embed


def fit_predict(
    train: ad.AnnData,
    test: ad.AnnData,
    *,
    label_key: str = "celler_label",
    seed: int = 0,
    n_pcs: int = 50,
    n_neighbors: int = 15,
    weights: str = "uniform",
) -> pd.DataFrame:
    """Fit on ``train``, predict ``test``; ``confidence`` is the (weighted) share of neighbours voting so."""
    train, test = align_genes(train, test)
    y = train_labels(train, label_key)
    xtr, xte = embed(dense(train.X), dense(test.X), n_pcs=n_pcs, seed=seed)
    clf = KNeighborsClassifier(n_neighbors=min(n_neighbors, len(y)), weights=weights).fit(xtr, y)
    prob = clf.predict_proba(xte)
    return output(test, clf.classes_[prob.argmax(axis=1)], prob.max(axis=1))
