"""Out-of-fold novelty (celler.train.crossfit): the novelty cut of a model with few labels is read on cells the
model was not fitted on, so known cells are not left Unassigned wholesale."""

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from celler.train.crossfit import stratified_folds
from celler.train.finetune import FinetuneConfig

FOLDS = FinetuneConfig().novelty_folds


def test_folds_deal_each_type_evenly_and_never_hold_out_a_lone_cell():
    labels = np.repeat([0, 1, 2, 3], [1, 2, 7, 23])
    fold = stratified_folds(labels, FOLDS, seed=0)
    assert (fold[labels == 0] == -1).all()  # a type of one cell trains every fold model
    for c, n in ((1, 2), (2, 7), (3, 23)):
        per_fold = np.bincount(fold[labels == c], minlength=FOLDS)
        assert per_fold.max() - per_fold.min() <= 1 and per_fold.sum() == n
        assert per_fold.max() <= int(np.ceil(n / FOLDS)) < n  # every fold model keeps cells of every type
    assert np.array_equal(fold, stratified_folds(labels, FOLDS, seed=0))
    assert not np.array_equal(fold, stratified_folds(labels, FOLDS, seed=1))


@pytest.fixture(scope="module")
def few_label_model(pancreas_tokens, tmp_path_factory):
    """Pancreas Wang with 3% of its labels (3+ cells a type: 25 cells, 1 of them for validation, under
    MIN_VALIDATION)."""
    import torch

    from celler.data.longtail import label_fraction
    from celler.data.tokens import TokenStore
    from celler.train.finetune import finetune

    torch.manual_seed(0)
    cells = TokenStore(pancreas_tokens).cells
    wang = cells.index[cells["split"].eq("train")]
    train = label_fraction(cells.loc[wang, "label"].astype(str), 0.03, seed=0)
    cfg = FinetuneConfig(init="scratch", max_len=64, min_steps=100, seed=0)
    out = tmp_path_factory.mktemp("few") / "model"
    model, levels, info = finetune(pancreas_tokens, out, cfg, train_cells=list(train),
                                   unlabelled_cells=list(wang.difference(train)))
    return model, out, info, cfg, wang.difference(train)


def test_few_labels_set_the_cut_on_out_of_fold_cells(few_label_model, pancreas_tokens):
    """Measured with this fixture's settings, seeds 0 / 1 / 2 (24 training cells, 1 validation cell): Wang's
    unlabelled cells Unassigned 0.029 / 0.006 / 0.000 under the out-of-fold cut, 0.095 / 0.053 / 0.307 under the
    fitted cells' leave-one-out cut; the cut 1.79 / 2.19 / 2.20 vs 1.54 / 1.78 / 1.29."""
    from celler.data.tokens import TokenStore
    from celler.model.classifier import predict_logits
    from celler.model.novelty import KNOWN_SHARE, MIN_VALIDATION

    model, model_dir, info, cfg, tuning = few_label_model
    assert info["n_val"] < MIN_VALIDATION
    lone = sum(n == 1 for n in info["class_counts"]["subclass"])
    assert info["out_of_fold_cells"] == info["n_train"] - lone  # every training cell of a type of 2+ scored
    # the model directory says which cells set its cut (the report quotes it)
    chosen = json.loads((model_dir / "config.json").read_text())["chosen"]
    assert (chosen["n_val"], chosen["out_of_fold_cells"]) == (info["n_val"], info["out_of_fold_cells"])
    store = TokenStore(pancreas_tokens)
    names = store.cells.index
    _, val_emb = predict_logits(model, store, np.flatnonzero(names.isin(pd.Index(info["val_cells"]))), cfg)
    _, emb = predict_logits(model, store, np.flatnonzero(names.isin(tuning)), cfg)
    novelty = model.novelty.score(emb)
    fitted = replace(model.novelty)
    fitted.set_cut(model.novelty.score(val_emb))  # the rule before: the fitted cells' leave-one-out novelty
    assert model.novelty.cut > fitted.cut  # fitted cells sit closer to their type than unfitted ones
    out_of_fold, leave_one_out = (novelty > model.novelty.cut).mean(), (novelty > fitted.cut).mean()
    # Wang's unlabelled training cells are known types: few of them should be called novel
    assert out_of_fold < 0.5 * leave_one_out
    assert out_of_fold <= 5 * KNOWN_SHARE
