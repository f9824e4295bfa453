"""The tissue's gene programs: a frozen view of a cell through the principal axes of the tissue's own cells.

With a few hundred labels, a view of every gene that fine-tuning learns (:class:`ProfileEncoder`) has more
weights than the labels can set; the strongest few-label baseline (balanced logistic regression on principal
components of all training cells, ``logreg_pca``) wins by reading cells through the directions in which the
tissue's cells vary, fitted without labels. :class:`ProgramView` gives the classifier that reading: each
cell's binned profile (bin / (n_bins - 1), the profile view's weights) minus the tissue's mean, projected on
the top ``n`` principal axes, then LayerNorm. The axes are fitted once, before fine-tuning, on the cells a run
may read without labels (its training cells, and in the label-efficiency benchmark the training cells whose
labels it does not get), and stay fixed: buffers in the model's state, so ``celler annotate`` projects a
query exactly as training did. The fit is PCA (truncated SVD of the centred cells x genes matrix): the
optimum of the linear form of the cell-level objective (every gene's value from an n-dimensional cell
vector, by squared error), which gradient steps in pretraining approached only slowly (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from torch.nn import functional as F

#: genes expressed in fewer of the fitted cells than this get no loading (noise for the axes)
MIN_CELLS = 3


def profile_matrix(store, cell_idx: np.ndarray) -> sp.csr_matrix:
    """Cells x vocabulary, the binned values of ``cell_idx`` scaled to (0, 1] as the profile views read them."""
    rows = [store[int(i)] for i in cell_idx]
    genes = np.concatenate([g for g, _ in rows]).astype(np.int64) if rows else np.zeros(0, np.int64)
    values = np.concatenate([b for _, b in rows]).astype(np.float32) if rows else np.zeros(0, np.float32)
    indptr = np.concatenate([[0], np.cumsum([len(g) for g, _ in rows])])
    x = sp.csr_matrix((values / (store.n_bins - 1), genes, indptr), shape=(len(rows), len(store.vocab())))
    x.sum_duplicates()
    return x


def fit_axes(store, cell_idx: np.ndarray, n: int, seed: int = 0, genes=None) -> tuple[np.ndarray, np.ndarray]:
    """The top ``n`` principal axes of the cells ``cell_idx`` of a token store (their labels are not read).
    ``genes``: the token ids a cell is restricted to (``gene_selection: hvg``): the axes and the mean are fitted
    on exactly the profiles the view will read, the other genes get zero loadings and mean."""
    x = profile_matrix(store, cell_idx)
    if genes is not None:
        keep = np.zeros(x.shape[1], np.float32)
        keep[np.asarray(genes, np.int64)] = 1
        x = sp.csr_matrix(x.multiply(keep[None, :]))
        x.eliminate_zeros()
    return principal_axes(x, n, seed)


def principal_axes(x: sp.csr_matrix, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(loadings (genes, k), mean (genes,))`` of the top ``k = min(n, cells - 1, kept genes)`` principal
    axes of ``x``; genes seen in fewer than :data:`MIN_CELLS` cells get zero loadings and mean."""
    from sklearn.decomposition import PCA

    keep = np.flatnonzero(np.asarray((x != 0).sum(0)).ravel() >= MIN_CELLS)
    k = min(n, x.shape[0] - 1, len(keep))
    loadings = np.zeros((x.shape[1], n), np.float32)
    mean = np.zeros(x.shape[1], np.float32)
    if k < 1:
        return loadings, mean
    sub = x[:, keep]
    pca = PCA(k, svd_solver="arpack", random_state=seed).fit(sub)  # centres the sparse matrix implicitly
    loadings[keep, :k] = pca.components_.T
    mean[keep] = pca.mean_
    return loadings, mean


class ProgramView(nn.Module):
    """A cell as its scores on the tissue's ``n`` principal axes, then LayerNorm (the one trained part).

    ``forward`` takes the profile views' flat inputs (genes, values, offsets from ``collate``); the loadings
    and the mean's projection are buffers, set by :meth:`set_axes` and never trained."""

    def __init__(self, vocab_size: int, n: int, n_bins: int):
        super().__init__()
        self.n_bins = n_bins
        self.register_buffer("loadings", torch.zeros(vocab_size, n))
        self.register_buffer("offset", torch.zeros(n))  # mean profile projected on the axes
        self.norm = nn.LayerNorm(n)

    @property
    def width(self) -> int:
        return self.loadings.shape[1]

    @torch.no_grad()
    def set_axes(self, loadings: np.ndarray, mean: np.ndarray) -> None:
        """Use the axes ``principal_axes`` fitted (``loadings`` (vocab, n), ``mean`` (vocab,))."""
        self.loadings.copy_(torch.from_numpy(loadings))
        self.offset.copy_(torch.from_numpy(mean @ loadings))

    def forward(self, genes, values, offsets):
        weights = values.float() / (self.n_bins - 1)
        scores = F.embedding_bag(genes, self.loadings, offsets, mode="sum", per_sample_weights=weights)
        return self.norm(scores - self.offset)


__all__ = ["ProgramView", "fit_axes", "principal_axes", "profile_matrix"]
