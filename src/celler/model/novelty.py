"""Novelty: how unlike every training type a cell is, a question apart from which known type it resembles most.

The class confidence answers "which known type?"; it cannot also answer "a known type at all?", because a
rare type gets lower confidence by construction (few training cells, the prior correction), so any confidence
cut takes rare cells first. The novelty score answers the second question on its own:

* A cell is read as the classifier reads it: its readout vector (``CellClassifier.embed``; by default the
  program view and the profile view, each layer-normalised per cell), before the heads.
* ``d_c(x)``: the mean Euclidean distance from ``x`` to its ``k`` nearest training cells of type ``c``.
* Each type is put on its own scale: ``s_c`` is the median of ``d_c`` over type ``c``'s own training cells (each
  left out of its own neighbours), so a type whose cells are spread out, or few, is judged by its own
  distances, not a large tight type's (SCimilarity's and deep k-NN's distance, made per class).
* ``novelty(x) = min_c d_c(x) / s_c``: about 1 for a typical cell of some training type, large for a cell far
  from every type on that type's own scale.
* The cut is the ``1 - KNOWN_SHARE`` quantile of the novelty of the validation cells (known types, held out of
  training; joined, when fewer than ``MIN_VALIDATION``, by the training cells' out-of-fold novelty, each
  scored by a model trained without it: :mod:`celler.train.crossfit`): about ``KNOWN_SHARE`` of a known
  type's cells are called novel.

Chosen on the leave-one-type-out benchmark's validation and tuning cells (benchmarks/leave_one_type_out.py;
README, "Leave-one-type-out") among k-NN distances in three spaces (scaled per class or not), per-class
Mahalanobis distances, the energy score, the principal subspace's reconstruction error and the confidence.
The index (training cells' readout vectors in float16, their types, the scales and the cut) is
``novelty.npz`` in the model directory: ``160 x n_train`` bytes for the default 80-wide readout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

#: neighbours per type whose mean distance is a cell's distance to that type
K_NEIGHBOURS = 10
#: share of the validation cells (known types) above the cut: the known cells left ``Unassigned``
KNOWN_SHARE = 0.02
#: fewer validation cells than this: the training cells' out-of-fold novelty joins them to set the cut
MIN_VALIDATION = 50
#: query cells per block of the distance computation (bounds memory: block x training cells floats)
BLOCK = 8192


def knn_distance(train: np.ndarray, query: np.ndarray, k: int, *, same: bool = False) -> np.ndarray:
    """Mean distance of each query row to its ``k`` nearest ``train`` rows (``same``: the query is ``train``
    and a row is not its own neighbour). Torch's ``cdist`` and ``topk`` (threaded): 2.4x numpy's partition
    on 100k x 3k cells."""
    k = min(k, len(train) - int(same))
    if k < 1:
        return np.full(len(query), np.nan)
    t = torch.as_tensor(np.asarray(train, np.float32))
    out = []
    for start in range(0, len(query), BLOCK):
        d = torch.cdist(torch.as_tensor(np.asarray(query[start:start + BLOCK], np.float32)), t)
        if same:
            rows = torch.arange(len(d))
            d[rows, rows + start] = torch.inf
        out.append(d.topk(k, dim=1, largest=False).values.mean(1))
    return torch.cat(out).double().numpy()


@dataclass
class NoveltyIndex:
    """What the novelty score needs, fitted once after fine-tuning (see the module docstring)."""

    coords: np.ndarray  # (n, d) training cells' readout vectors (float16 values, held as float32)
    labels: np.ndarray  # (n,) their type ids
    scale: np.ndarray  # (C,) per type: median leave-one-out distance of its own cells (a one-cell type: the
    #                    median over the other types)
    cut: float = np.inf  # novelty above this: novel
    k: int = K_NEIGHBOURS

    @classmethod
    def fit(cls, coords: np.ndarray, labels: np.ndarray, n_classes: int, *, k: int = K_NEIGHBOURS,
            scaled: bool = True) -> NoveltyIndex:
        """From the training cells' readout vectors and type ids; the cut is set by :meth:`set_cut`.
        ``scaled=False`` puts every type on one scale (a benchmark control)."""
        coords = np.asarray(coords, np.float16).astype(np.float32)  # what novelty.npz will hold
        labels = np.asarray(labels, np.int64)
        scale = np.full(n_classes, np.nan)
        for c in range(n_classes):
            own = coords[labels == c]
            if scaled and len(own) >= 2:
                scale[c] = max(float(np.median(knn_distance(own, own, k, same=True))), 1e-6)
        # a type of one training cell has no spread of its own: the typical type's
        scale[np.isnan(scale)] = np.nanmedian(scale) if np.isfinite(scale).any() else 1.0
        return cls(coords, labels, scale, k=k)

    def score(self, coords: np.ndarray) -> np.ndarray:
        """Novelty of each cell: its distance to the nearest type, on that type's scale."""
        coords = np.asarray(coords, np.float32)
        best = np.full(len(coords), np.inf)
        for c in np.unique(self.labels):
            d = knn_distance(self.coords[self.labels == c], coords, self.k) / self.scale[c]
            best = np.fmin(best, d)
        return best

    def training_novelty(self) -> np.ndarray:
        """Each training cell's novelty against its own type, itself left out of its neighbours."""
        out = np.full(len(self.coords), np.nan)
        for c in np.unique(self.labels):
            m = self.labels == c
            if m.sum() >= 2:
                out[m] = knn_distance(self.coords[m], self.coords[m], self.k, same=True) / self.scale[c]
        return out[np.isfinite(out)]

    def set_cut(self, validation_novelty: np.ndarray, share: float = KNOWN_SHARE, *,
                out_of_fold: np.ndarray | None = None) -> None:
        """The cut leaving ``share`` of the validation cells above it. With fewer than :data:`MIN_VALIDATION`
        of them (a cut from a handful of cells is one cell's) the training cells' ``out_of_fold`` novelty
        joins them (:mod:`celler.train.crossfit`), or without it their own leave-one-out novelty, which is
        lower: fitted cells sit closer to their type than new ones."""
        v = np.asarray(validation_novelty, np.float64)
        if len(v) < MIN_VALIDATION:
            extra = self.training_novelty() if out_of_fold is None or not len(out_of_fold) else out_of_fold
            v = np.concatenate([v, np.asarray(extra, np.float64)])
        self.cut = float(np.quantile(v, 1 - share)) if len(v) else np.inf

    def novel(self, novelty: np.ndarray) -> np.ndarray:
        return np.asarray(novelty) > self.cut

    def save(self, path: Path) -> None:
        np.savez_compressed(path, coords=self.coords.astype(np.float16), labels=self.labels.astype(np.int32),
                            scale=self.scale, cut=np.float64(self.cut), k=np.int64(self.k))

    @classmethod
    def load(cls, path: Path) -> NoveltyIndex:
        with np.load(path) as z:
            return cls(z["coords"].astype(np.float32), z["labels"].astype(np.int64), z["scale"], float(z["cut"]),
                       int(z["k"]))


__all__ = ["K_NEIGHBOURS", "KNOWN_SHARE", "MIN_VALIDATION", "NoveltyIndex", "knn_distance"]
