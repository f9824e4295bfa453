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

from celler.evaluate.baselines._common import align_genes, dense, output, train_labels


def embed(xtr: np.ndarray, xte: np.ndarray, *, n_pcs: int | None, seed: int, fit: np.ndarray | None = None,
          scale_pcs: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Scale genes (clip at +-10), then optionally PCA (and standardise the components, ``scale_pcs``); every
    step is fitted on ``fit`` (default: the training cells; label-free cells may be added, labels unread)."""
    fit = xtr if fit is None else fit
    sc = StandardScaler().fit(fit)
    fit, xtr, xte = (np.clip(sc.transform(x), -10, 10) for x in (fit, xtr, xte))
    if n_pcs:
        k = max(1, min(n_pcs, fit.shape[0] - 1, fit.shape[1]))
        pca = PCA(n_components=k, random_state=seed).fit(fit)
        fit, xtr, xte = (pca.transform(x) for x in (fit, xtr, xte))
        if scale_pcs:
            pcs = StandardScaler().fit(fit)
            xtr, xte = pcs.transform(xtr), pcs.transform(xte)
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
    fit: ad.AnnData | None = None,
) -> pd.DataFrame:
    """Fit on ``train``, predict ``test``; ``confidence`` is the predicted class's probability. ``fit``: the
    cells scaling and PCA are fitted on (default ``train``; label-free cells may be added, labels unread)."""
    train, test = align_genes(train, test)
    y = train_labels(train, label_key)
    xfit = None if fit is None else dense(fit[:, train.var_names].X)
    xtr, xte = embed(dense(train.X), dense(test.X), n_pcs=n_pcs, seed=seed, fit=xfit, scale_pcs=True)
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
    fit = None if unlabelled is None else ad.concat([train, unlabelled], join="inner")
    return fit_predict(train, test, label_key=label_key, seed=seed, n_pcs=n_pcs, C=C, max_iter=max_iter,
                       class_weight="balanced", fit=fit)
