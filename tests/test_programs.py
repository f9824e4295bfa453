"""The program view: the tissue's principal axes, fitted without labels, frozen, and carried by the model."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from celler.data.tokens import TokenStore
from celler.model.batching import CellDataset, collate
from celler.model.classifier import load_classifier, predictions_table
from celler.model.programs import ProgramView, fit_axes, profile_matrix
from celler.train.finetune import FinetuneConfig, finetune

FAST = {"init": "scratch", "epochs": 2, "min_steps": 0, "patience": 2, "max_len": 48, "batch_size": 64, "lr": 2e-3,
        "readout": "programs", "n_programs": 12}  # more axes than FACS's 9 fine types
K = FAST["n_programs"]


def _scores(view, store, idx):
    """The view's output for the cells ``idx``, read through the loader's flat profile inputs."""
    ds = CellDataset(store, idx, mask_ratio=0.0, profile=True, tokens=False)
    b = collate([ds[i] for i in range(len(idx))], pad_id=int(store.meta["pad_id"]))
    with torch.no_grad():
        return view(b["profile_genes"], b["profile_values"], b["profile_offsets"]).numpy()


def test_program_scores_are_the_principal_components_of_the_fitted_cells(facs_tokens):
    from sklearn.decomposition import PCA

    store = TokenStore(facs_tokens)
    idx = np.flatnonzero(store.cells["split"].eq("train"))[:600]
    view = ProgramView(len(store.vocab()), 8, store.n_bins)
    view.set_axes(*fit_axes(store, idx, 8))
    view.norm = nn.Identity()  # the scores themselves, before the LayerNorm
    x = profile_matrix(store, idx).toarray()
    x = x[:, (x != 0).sum(0) >= 3]
    expected = PCA(8, svd_solver="full").fit_transform(x.astype(np.float64))
    got = _scores(view, store, idx)
    for j in range(8):  # the same components, each up to its sign
        assert abs(np.corrcoef(got[:, j], expected[:, j])[0, 1]) > 0.999, j
    assert np.abs(got.mean(0)).max() < 1e-3 * np.abs(got).max()  # centred on the fitted cells' mean
    assert np.abs(got[:, 0]).max() == pytest.approx(np.abs(expected[:, 0]).max(), rel=1e-3)  # at the same scale


def test_axes_read_the_unlabelled_cells_and_stay_fixed_in_training(facs_tokens, tmp_path):
    store = TokenStore(facs_tokens)
    cells = store.cells
    train = cells.index[cells["split"].eq("train")]
    labelled, unlabelled = train[::5], train.difference(train[::5])
    model, _, _ = finetune(facs_tokens, tmp_path / "m", FinetuneConfig(**FAST), train_cells=list(labelled),
                           unlabelled_cells=unlabelled)
    every = np.flatnonzero(cells.index.isin(train))
    loadings, _ = fit_axes(store, every, K)
    np.testing.assert_allclose(model.programs.loadings.numpy(), loadings, atol=1e-6)  # trained, yet unchanged
    only_labelled, _ = fit_axes(store, np.flatnonzero(cells.index.isin(labelled)), K)
    assert not np.allclose(np.abs(only_labelled), np.abs(loadings), atol=1e-3)  # the unlabelled cells counted
    assert not any(p is model.programs.loadings for p in model.parameters())  # a buffer, not a weight


def test_programs_readout_travels_with_the_model(facs_tokens, tmp_path):
    cfg = FinetuneConfig(**FAST)
    model, _, _ = finetune(facs_tokens, tmp_path / "m", cfg)
    assert model.embedding_dim == K and model.profile is None
    store = TokenStore(facs_tokens)
    test = np.flatnonzero(store.cells["split"].eq("test"))
    pred, emb = predictions_table(model, store, test, cfg)
    assert emb.shape == (len(test), K)
    loaded, _ = load_classifier(tmp_path / "m")
    assert loaded.readout == "programs" and loaded.programs.width == K
    torch.testing.assert_close(loaded.programs.loadings, model.programs.loadings)
    again, _ = predictions_table(loaded, store, test, cfg)
    pd.testing.assert_series_equal(pred.predicted, again.predicted)


def test_programs_join_the_profile_view(facs_tokens, tmp_path):
    cfg = FinetuneConfig(**{**FAST, "epochs": 1, "readout": "programs+profile"})
    model, _, _ = finetune(facs_tokens, tmp_path / "m", cfg)
    assert model.embedding_dim == K + model.encoder.config.d_model
    assert model.profile is not None and model.programs is not None


def test_view_dropout_keeps_the_programs_and_hides_the_profile_in_training_only():
    from celler.model import Encoder, ModelConfig
    from celler.model.classifier import CellClassifier

    cfg = ModelConfig(vocab_size=40, n_bins=11, d_model=8, n_heads=2, d_ff=16, pad_id=38, cls_id=39)
    model = CellClassifier(Encoder(cfg), {"subclass": ["a", "b"]}, readout="programs+profile", n_programs=4)
    model.programs.set_axes(np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32),
                            np.zeros(40, np.float32))
    model.view_dropout = 1.0
    profile = (torch.tensor([3, 5, 7]), torch.tensor([4, 9, 2]), torch.tensor([0, 2]))
    model.train()
    emb = model.embed(None, None, None, profile)
    assert emb.shape == (2, 12)
    assert torch.all(emb[:, :8] == 0) and torch.all(emb[:, 8:].abs().sum(1) > 0)  # the programs alone
    model.eval()
    assert torch.all(model.embed(None, None, None, profile)[:, :8].abs().sum(1) > 0)


def test_transductive_stage_fits_the_axes_on_the_test_cells_too(facs_tokens, tmp_path):
    from celler.stages import finetune_stage

    store = TokenStore(facs_tokens)
    outs = {k: tmp_path / k for k in ("model", "predictions.tsv", "emb.npy", "metrics.tsv", "per_class.tsv")}
    finetune_stage(facs_tokens, cfg=FinetuneConfig(**{**FAST, "epochs": 1}), pretrained=None,
                   model_out=outs["model"], predictions_out=outs["predictions.tsv"], embeddings_out=outs["emb.npy"],
                   metrics_out=outs["metrics.tsv"], per_class_out=outs["per_class.tsv"], transductive=True)
    model, _ = load_classifier(outs["model"])
    every = np.flatnonzero(store.cells["split"].isin(["train", "test"]))
    np.testing.assert_allclose(model.programs.loadings.numpy(), fit_axes(store, every, K)[0], atol=1e-6)
    train_only, _ = fit_axes(store, np.flatnonzero(store.cells["split"].eq("train")), K)
    assert not np.allclose(np.abs(train_only), np.abs(model.programs.loadings.numpy()), atol=1e-3)


def test_comparison_runs_honour_transductive_as_the_main_rule_does(facs_tokens, tmp_path, monkeypatch):
    """celler_run_stage (the evaluation's and the ablation's Celler runs) passes the test cells to the program
    view's axes when transductive, as finetune_stage does; not otherwise."""
    import celler.train.finetune as ft
    from celler.evaluate.experiments import celler_run_stage

    store = TokenStore(facs_tokens)
    test = set(store.cells.index[store.cells["split"].eq("test")])
    seen = []
    real = ft.finetune

    def spy(*args, **kwargs):
        seen.append(set(kwargs.get("unlabelled_cells") if kwargs.get("unlabelled_cells") is not None else []))
        return real(*args, **kwargs)

    monkeypatch.setattr(ft, "finetune", spy)
    cells = tmp_path / "train.txt"
    cells.write_text("\n".join(store.cells.index[store.cells["split"].eq("train")]) + "\n")
    for transductive in (True, False):
        celler_run_stage(facs_tokens, cfg=FinetuneConfig(**{**FAST, "epochs": 1}), pretrained=None, seed=0,
                         train_cells_path=cells, out=tmp_path / f"{transductive}.tsv", transductive=transductive)
    assert seen == [test, set()]


def test_with_highly_variable_genes_the_axes_are_fitted_on_the_profiles_the_view_reads(facs_tokens, tmp_path):
    """gene_selection hvg cuts each cell's profile to the tissue's HVGs: the axes load those genes only and the
    view's scores of the fitted cells are centred (fitted on all genes, they were offset by the other genes'
    mean)."""
    store = TokenStore(facs_tokens)
    cfg = FinetuneConfig(**{**FAST, "epochs": 1, "gene_selection": "hvg", "n_hvg": 300})
    model, _, _ = finetune(facs_tokens, tmp_path / "m", cfg)
    hvg = model.selected_genes
    loadings = model.programs.loadings.numpy()
    others = np.setdiff1d(np.arange(len(loadings)), hvg)
    assert np.abs(loadings[others]).max() == 0 and np.abs(loadings[hvg]).max() > 0
    train = np.flatnonzero(store.cells["split"].eq("train"))
    x = profile_matrix(store, train)[:, hvg]
    scores = np.asarray(x @ loadings[hvg]) - model.programs.offset.numpy()
    assert np.abs(scores.mean(0)).max() < 1e-3 * scores.std(0).max()


def test_a_tissue_with_more_types_than_programs_gets_an_axis_per_type(facs_tokens, tmp_path):
    """n_programs is a floor: FACS's 9 fine types with n_programs 4 read 9 axes, the first 4 those of 4."""
    store = TokenStore(facs_tokens)
    cells = store.cells
    train = cells.index[cells["split"].eq("train")]
    n_types = cells.loc[train, "label"].nunique()
    model, _, _ = finetune(facs_tokens, tmp_path / "m", FinetuneConfig(**(FAST | {"n_programs": 4, "epochs": 1})))
    assert n_types == 9 and model.programs.width == n_types
    every = np.flatnonzero(cells.index.isin(train))
    four, _ = fit_axes(store, every, 4)
    np.testing.assert_allclose(np.abs(model.programs.loadings.numpy()[:, :4]), np.abs(four), atol=1e-4)
