"""scANVI (scvi-tools): the semi-supervised deep generative model most used for label transfer.

As in the scvi-tools tutorial: scVI (2 layers, 30 latent dimensions, negative-binomial counts) is trained on
every training cell, labelled and ``unlabelled``; scANVI is then initialised from it with the training labels,
the unlabelled cells marked unlabelled, and trained 20 epochs sampling 100 cells a label; ``predict()`` labels
the test cells, which neither model reads before. scVI's epoch count is the library's own (scaled to the cell
count: 400, or 8 million cell passes over more than 20,000 cells), with early stopping on its own 10% validation
split; on CPU ``cell_passes`` lowers that budget (epochs = cell_passes / cells) and ``max_epochs`` caps it.
No batch key: the bundled test cells come from a study or donor absent from training, which scVI cannot
encode. Genes: all, or the 2,000 most variable ones of the training cells where there are more (scanpy's
``seurat`` flavour on the log values, as ``seurat_v3`` would need another package).

scVI reads counts: the ``counts`` layer where the expression data has one (the workflow stores it for count
inputs), else counts per 10,000 recovered from the log values (``expm1`` rounded), said once as a warning.
The fitted scVI model is kept for the next call on the same cells and seed, so the parent level reuses it.
"""

from __future__ import annotations

import hashlib
import logging
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from celler.evaluate.baselines._common import align_genes, output, train_labels

UNLABELLED = "__unlabelled__"
N_TOP_GENES = 2000
_SCVI_CACHE: dict[str, object] = {}


def counts(adata: ad.AnnData) -> sp.csr_matrix:
    """The cells' counts: the ``counts`` layer, else ``expm1`` of log1p(counts per 10,000) rounded."""
    if "counts" in adata.layers:
        return sp.csr_matrix(adata.layers["counts"], dtype=np.float32)
    x = sp.csr_matrix(adata.X, dtype=np.float32, copy=True)
    x.data = np.rint(np.expm1(x.data))
    x.eliminate_zeros()
    return x


def _cells(train: ad.AnnData, unlabelled: ad.AnnData | None) -> ad.AnnData:
    """Training and unlabelled cells as one count matrix on the genes scVI reads."""
    parts = [train] if unlabelled is None else [train, unlabelled[:, train.var_names]]
    cells = ad.AnnData(X=sp.vstack([counts(p) for p in parts]).tocsr(),
                       obs=pd.DataFrame(index=np.concatenate([p.obs_names for p in parts])),
                       var=pd.DataFrame(index=train.var_names))
    if cells.n_vars > N_TOP_GENES:
        import scanpy as sc

        log = sc.pp.log1p(sc.pp.normalize_total(cells, target_sum=1e4, copy=True), copy=True)
        sc.pp.highly_variable_genes(log, n_top_genes=N_TOP_GENES, flavor="seurat")
        cells = cells[:, log.var["highly_variable"].to_numpy()].copy()
    cells.layers["counts"] = cells.X
    return cells


def scvi_epochs(n_cells: int, *, cell_passes: int | None = None, max_epochs: int | None = None) -> int:
    """scVI's epoch count: the library's own for ``n_cells``, lowered to ``cell_passes / n_cells`` and capped at
    ``max_epochs`` where given (at least 1)."""
    from scvi.model._utils import get_max_epochs_heuristic

    epochs = get_max_epochs_heuristic(n_cells)
    if cell_passes:
        epochs = min(epochs, max(1, round(cell_passes / n_cells)))
    return min(epochs, max_epochs) if max_epochs else epochs


def _scvi(cells: ad.AnnData, seed: int, max_epochs: int):
    """scVI trained on ``cells`` (reused for the same cells, genes, seed and epochs)."""
    import scvi

    key = hashlib.sha1("\n".join([*cells.obs_names, *cells.var_names, str(seed), str(max_epochs)])
                       .encode()).hexdigest()
    if key not in _SCVI_CACHE:
        _SCVI_CACHE.clear()
        scvi.settings.seed = seed
        scvi.model.SCVI.setup_anndata(cells, layer="counts")
        model = scvi.model.SCVI(cells, n_layers=2, n_latent=30, gene_likelihood="nb")
        model.train(max_epochs=max_epochs, early_stopping=True, enable_progress_bar=False,
                    enable_checkpointing=False)
        _SCVI_CACHE[key] = model
    return _SCVI_CACHE[key]


def fit_predict(
    train: ad.AnnData,
    test: ad.AnnData,
    *,
    label_key: str = "celler_label",
    seed: int = 0,
    unlabelled: ad.AnnData | None = None,
    cell_passes: int | None = None,
    max_epochs: int | None = None,
    scanvi_epochs: int = 20,
    n_samples_per_label: int = 100,
) -> pd.DataFrame:
    """scVI on the training and ``unlabelled`` cells, scANVI on their labels; ``confidence`` is the predicted
    class's probability."""
    import scvi

    logging.getLogger("scvi").setLevel(logging.WARNING)
    logging.getLogger("lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    train, test = align_genes(train, test)
    y = train_labels(train, label_key)
    if "counts" not in train.layers:  # shown once (Python's default warning filter)
        warnings.warn("scANVI: no 'counts' layer; scVI reads counts per 10,000 recovered from log1p values",
                      stacklevel=2)
    cells = _cells(train, unlabelled)
    model = _scvi(cells, seed, scvi_epochs(cells.n_obs, cell_passes=cell_passes, max_epochs=max_epochs))
    labelled = cells.copy()
    labelled.obs["label"] = np.concatenate([y, np.full(labelled.n_obs - len(y), UNLABELLED)])
    scvi.settings.seed = seed
    scanvi = scvi.model.SCANVI.from_scvi_model(model, unlabeled_category=UNLABELLED, labels_key="label",
                                               adata=labelled)
    scanvi.train(max_epochs=scanvi_epochs, n_samples_per_label=n_samples_per_label, enable_progress_bar=False,
                 enable_checkpointing=False)
    query = ad.AnnData(X=counts(test[:, cells.var_names]), obs=pd.DataFrame(index=test.obs_names),
                       var=pd.DataFrame(index=cells.var_names))
    query.layers["counts"] = query.X
    query.obs["label"] = UNLABELLED
    prob = scanvi.predict(query, soft=True)
    prob = prob.drop(columns=UNLABELLED, errors="ignore")
    return output(test, prob.columns.to_numpy()[prob.to_numpy().argmax(axis=1)], prob.max(axis=1).to_numpy())
