"""Logistic regression on standardised genes, or on standardised principal components (``n_pcs``).

Everything (scaling, PCA) is fitted on the training cells only. ``fit_predict_balanced`` weighs each class by
the inverse of its training count (scikit-learn's ``class_weight="balanced"``). The default, scaled genes clipped at
+-10 and an L2 multinomial logistic regression (``C = 1``), is the "LogisticRegression (scaled)" row of the
reference measurements; ``n_pcs=50`` gives logistic regression on PCA-50 (components standardised).
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from celler.baselines._common import align_genes, dense, output, train_labels


def embed(xtr: np.ndarray, xte: np.ndarray, *, n_pcs: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scale genes (fit on train, clip at +-10), then optionally PCA + scale the components (fit on train)."""
    sc = StandardScaler().fit(xtr)
    xtr, xte = np.clip(sc.transform(xtr), -10, 10), np.clip(sc.transform(xte), -10, 10)
    if n_pcs:
        k = max(1, min(n_pcs, xtr.shape[0] - 1, xtr.shape[1]))
        pca = PCA(n_components=k, random_state=seed).fit(xtr)
        xtr, xte = pca.transform(xtr), pca.transform(xte)
    return xtr, xte


def fit_predict(
    train: ad.AnnData,
    test: ad.AnnData,
    *,
    label_key: str = "celler_label",
    seed: int = 0,
    n_pcs: int | None = None,
    C: float = 1.0,  # noqa: N803
    max_iter: int = 1000,
    class_weight: str | None = None,
) -> pd.DataFrame:
    """Fit on ``train``, predict ``test``; ``confidence`` is the predicted class's probability."""
    train, test = align_genes(train, test)
    y = train_labels(train, label_key)
    xtr, xte = embed(dense(train.X), dense(test.X), n_pcs=n_pcs, seed=seed)
    if n_pcs:
        sc = StandardScaler().fit(xtr)
        xtr, xte = sc.transform(xtr), sc.transform(xte)
    clf = LogisticRegression(C=C, max_iter=max_iter, class_weight=class_weight, random_state=seed).fit(xtr, y)
    prob = clf.predict_proba(xte)
    return output(test, clf.classes_[prob.argmax(axis=1)], prob.max(axis=1))


def fit_predict_balanced(
    train: ad.AnnData,
    test: ad.AnnData,
    *,
    label_key: str = "celler_label",
    seed: int = 0,
    n_pcs: int | None = None,
    C: float = 1.0,  # noqa: N803
    max_iter: int = 1000,
) -> pd.DataFrame:
    """:func:`fit_predict` with ``class_weight="balanced"``: each class weighs n / (C·N_j), so the linear
    model corrects for the label prior as the long-tail losses do (the fair peer for Celler's rare recall)."""
    return fit_predict(train, test, label_key=label_key, seed=seed, n_pcs=n_pcs, C=C, max_iter=max_iter,
                       class_weight="balanced")


def fit_predict_pca(
    train: ad.AnnData,
    test: ad.AnnData,
    *,
    label_key: str = "celler_label",
    seed: int = 0,
    unlabelled: ad.AnnData | None = None,
    n_pcs: int = 50,
    C: float = 1.0,  # noqa: N803
    max_iter: int = 1000,
) -> pd.DataFrame:
    """Balanced logistic regression on principal components fitted on the training cells and, when given,
    the ``unlabelled`` training cells too (their labels unused): the cheap linear use of label-free cells
    that a pretrained model must beat when labels are scarce."""
    train, test = align_genes(train, test)
    fit = train if unlabelled is None else ad.concat([train, unlabelled[:, train.var_names]], join="inner")
    y = train_labels(train, label_key)
    sc = StandardScaler().fit(dense(fit.X))
    scaled = [np.clip(sc.transform(dense(a.X)), -10, 10) for a in (fit, train, test)]
    k = max(1, min(n_pcs, scaled[0].shape[0] - 1, scaled[0].shape[1]))
    pca = PCA(n_components=k, random_state=seed).fit(scaled[0])
    pcs = StandardScaler().fit(pca.transform(scaled[0]))
    xtr, xte = (pcs.transform(pca.transform(x)) for x in scaled[1:])
    clf = LogisticRegression(C=C, max_iter=max_iter, class_weight="balanced", random_state=seed).fit(xtr, y)
    prob = clf.predict_proba(xte)
    return output(test, clf.classes_[prob.argmax(axis=1)], prob.max(axis=1))
