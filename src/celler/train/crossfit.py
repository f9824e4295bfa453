"""Out-of-fold novelty: cells the model was not fitted on, for the novelty cut when validation cells are few.

The novelty cut (:mod:`celler.model.novelty`) should leave about ``KNOWN_SHARE`` of a known type's *new* cells
``Unassigned``, so it has to be read on cells the model did not train on. With ``MIN_VALIDATION`` validation
cells or more, those are enough. With fewer (a tissue with few labels: 0-8 validation cells at 1% of the
benchmarks' labels) the training cells' own leave-one-out novelty used to join them, but the model was fitted on
those cells, which sit closer to their type than any new cell: 13-71% of known cells went ``Unassigned``
(benchmarks/RESULTS.md, "Novelty cut with few labels").

So the training cells are split into folds (``finetune.novelty_folds``, 5), stratified by type; for each fold a
model trained the same way on the other folds (same loss, schedule and program axes; no validation cells, the
last epoch kept) indexes its own training cells and scores the fold's cells. Those out-of-fold novelties join the validation
cells to set the cut. A type with one training cell is never held out (every fold model knows every type).
It costs one more training a fold, and only a tissue with few labelled cells (under about 500) pays them,
where one training is short.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from celler.model.classifier import predict_logits
from celler.model.novelty import NoveltyIndex

log = logging.getLogger(__name__)


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold id per cell (``-1``: never held out): each type's cells dealt in a seeded random order, so a type
    of n cells has at most ceil(n / folds) in a fold; a type of one cell stays in every fold's training."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    out = np.full(len(labels), -1, np.int64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) >= 2:
            out[rng.permutation(members)] = np.arange(len(members)) % folds
    return out


def out_of_fold_novelty(train: Callable[[np.ndarray], object], store, train_idx: np.ndarray, labels: np.ndarray,
                        n_classes: int, cfg, *, folds: int) -> np.ndarray:
    """Novelty of each held-out training cell under a model trained without its fold.

    ``train(fit_idx)`` returns a classifier trained on the store rows ``fit_idx``; ``labels`` are type ids per
    store row. Returns one novelty per held-out cell (types of one cell are never held out)."""
    fold = stratified_folds(labels[train_idx], folds, cfg.seed)
    out = []
    for f in range(folds):
        held, fit = train_idx[fold == f], train_idx[fold != f]
        if not len(held):
            continue
        model = train(fit)
        _, fit_emb = predict_logits(model, store, fit, cfg)
        index = NoveltyIndex.fit(fit_emb, labels[fit], n_classes)
        _, held_emb = predict_logits(model, store, held, cfg)
        out.append(index.score(held_emb))
        log.info("novelty fold %d/%d: %d cells held out, median novelty %.2f", f + 1, folds, len(held),
                 float(np.median(out[-1])))
    return np.concatenate(out) if out else np.zeros(0)


__all__ = ["out_of_fold_novelty", "stratified_folds"]
