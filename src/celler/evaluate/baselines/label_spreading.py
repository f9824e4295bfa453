"""Label spreading on a k-nearest-neighbour graph of the tissue's cells (scikit-learn's ``LabelSpreading``).

The classic graph method for few labels: labels flow from the labelled training cells to their neighbours over
a graph of the labelled and the ``unlabelled`` training cells. The cells are placed on the same principal
components as ``logreg_pca`` (scaled genes clipped at +-10, 50 PCs, both fitted on the labelled and unlabelled
training cells, labels unread), left unstandardised so that the graph's distances weigh the leading components
most (as scanpy's neighbour graph does). The graph and its settings are scikit-learn's documented defaults
(``kernel="knn"``, 7 neighbours, ``alpha`` 0.2, 30 iterations). Test cells are never in the graph: each is
labelled by its 7 nearest graph cells' spread label distributions (``predict_proba``), so the method reads no
test cell before it predicts, as every other baseline. Where a graph component holds no labelled cell (few
labels), scikit-learn's spread leaves its cells without a label: a test cell next to them takes its nearest
labelled training cell's label, with confidence 0.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
from sklearn.neighbors import NearestNeighbors
from sklearn.semi_supervised import LabelSpreading

from celler.evaluate.baselines._common import align_genes, dense, output, train_labels
from celler.evaluate.baselines.logreg import embed


def fit_predict(
    train: ad.AnnData,
    test: ad.AnnData,
    *,
    label_key: str = "celler_label",
    seed: int = 0,
    unlabelled: ad.AnnData | None = None,
    n_pcs: int = 50,
    n_neighbors: int = 7,
    alpha: float = 0.2,
    max_iter: int = 30,
) -> pd.DataFrame:
    """Spread the training labels over the graph of training and ``unlabelled`` cells; predict ``test``.

    ``confidence`` is the predicted class's share of the spread label distribution.
    """
    train, test = align_genes(train, test)
    y = train_labels(train, label_key)
    classes, codes = np.unique(y, return_inverse=True)
    cells = train if unlabelled is None else ad.concat([train, unlabelled[:, train.var_names]], join="inner")
    codes = np.concatenate([codes, np.full(cells.n_obs - train.n_obs, -1)])
    xfit, xte = embed(dense(cells.X), dense(test.X), n_pcs=n_pcs, seed=seed)
    model = LabelSpreading(kernel="knn", n_neighbors=min(n_neighbors, cells.n_obs - 1), alpha=alpha,
                           max_iter=max_iter).fit(xfit, codes)
    with np.errstate(invalid="ignore", divide="ignore"):
        prob = np.nan_to_num(model.predict_proba(xte))
    # a graph component without a labelled cell receives no label (scikit-learn returns NaN there): its test
    # cells take the nearest labelled training cell's label, with confidence 0
    stranded = prob.sum(axis=1) == 0
    predicted = classes[prob.argmax(axis=1)]
    if stranded.any():
        nearest = NearestNeighbors(n_neighbors=1).fit(xfit[: train.n_obs]).kneighbors(xte[stranded])[1][:, 0]
        predicted[stranded] = y[nearest]
    return output(test, predicted, prob.max(axis=1))
