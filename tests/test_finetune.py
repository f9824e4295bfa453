"""Fine-tuning: two label levels, model directory, induced long tail, auto, two-stage, frozen encoder."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from celler.data.longtail import induce_long_tail
from celler.data.tokens import TokenStore
from celler.errors import CellerError
from celler.evaluate.metrics import hierarchy_disagreement
from celler.model.classifier import load_classifier, predictions_table
from celler.train.finetune import FinetuneConfig, finetune, loss_candidates, validation_split

FAST = {"init": "scratch", "epochs": 2, "min_steps": 0, "patience": 2, "max_len": 48, "batch_size": 64, "lr": 2e-3}


def test_two_levels_predicted_and_model_dir_self_describing(facs_tokens, tmp_path):
    cfg = FinetuneConfig(**FAST, loss="ginf+hdm", loss_params={"hdm_n": 3})
    model, levels, info = finetune(facs_tokens, tmp_path / "model", cfg)
    assert set(levels) == {"subclass", "parent"}
    assert len(levels["subclass"]) == 9 and len(levels["parent"]) == 5
    d = tmp_path / "model"
    labels = json.loads((d / "labels.json").read_text())
    assert labels["subclass_to_parent"]["CD4+/CD45RO+ Memory T"] == "CD4 T"
    assert sum(labels["class_counts"]["subclass"]) == info["n_train"]
    for f in ("model.pt", "config.json", "vocab.json", "bin_edges.json", "train_log.csv", "novelty.npz"):
        assert (d / f).exists()
    store = TokenStore(facs_tokens)
    test = np.flatnonzero(store.cells.split == "test")
    pred, emb = predictions_table(model, store, test, cfg)
    assert set(pred.level) == {"subclass", "parent"} and len(pred) == 2 * len(test)
    assert emb.shape == (len(test), model.embedding_dim)  # the readout vector (programs + profile by default)
    # reloading gives the same predictions
    loaded, _ = load_classifier(d)
    pred2, _ = predictions_table(loaded, store, test, cfg)
    assert pred.predicted.equals(pred2.predicted)
    sub = pred[pred.level == "subclass"].set_index("cell")["predicted"]
    par = pred[pred.level == "parent"].set_index("cell")["predicted"]
    dis = hierarchy_disagreement(sub, par, labels["subclass_to_parent"])
    assert 0.0 <= dis <= 1.0


def test_newer_model_format_is_refused(facs_tokens, tmp_path):
    cfg = FinetuneConfig(**{**FAST, "epochs": 1})
    finetune(facs_tokens, tmp_path / "m", cfg)
    blob = torch.load(tmp_path / "m/model.pt", weights_only=True)
    blob["format_version"] = 99
    torch.save(blob, tmp_path / "m/model.pt")
    with pytest.raises(CellerError, match="classifier format 99"):
        load_classifier(tmp_path / "m")


def test_missing_model_file_is_a_clear_error(tmp_path):
    with pytest.raises(CellerError, match="missing model.pt"):
        load_classifier(tmp_path)


def test_validation_split_is_stratified_and_keeps_singletons():
    labels = np.array([0] * 50 + [1] * 10 + [2])
    train, val = validation_split(labels, np.arange(61), 0.2, seed=0)
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == 61
    assert (labels[val] == 0).sum() == 10 and (labels[val] == 1).sum() == 2 and 60 in train


def test_validation_cells_are_training_cells_and_small_classes_are_validated():
    from celler.train.finetune import MIN_CELLS_FOR_VALIDATION

    labels = np.array([0] * 200 + [1] * MIN_CELLS_FOR_VALIDATION + [2] * (MIN_CELLS_FOR_VALIDATION - 1) + [3] * 7)
    pool = np.arange(len(labels))
    subset = pool[pool % 3 != 1]  # the training cells of a split: validation is drawn from these only
    train, val = validation_split(labels, subset, 0.1, seed=3)
    assert np.isin(val, subset).all() and not np.isin(val, train).any()
    assert np.array_equal(np.union1d(train, val), subset)
    full_train, full_val = validation_split(labels, pool, 0.1, seed=3)
    assert (labels[full_val] == 1).sum() == 1  # 5 cells: round(0.5) = 0 before, at least one now
    assert (labels[full_val] == 3).sum() == 1
    assert (labels[full_val] == 2).sum() == 0  # 4 cells: all kept for training
    assert (labels[full_val] == 0).sum() == 20


def test_validation_macro_f1_scores_only_classes_present():
    from celler.train.rebalance import macro_f1

    truth = np.array([0, 0, 1, 1])
    # a tail class 2 predicted once but absent from the validation cells: not an F1 of 0 for class 2
    pred = np.array([0, 2, 1, 1])
    assert macro_f1(truth, pred) == pytest.approx((2 / 3 + 1.0) / 2)
    assert macro_f1(np.array([-100, 0]), np.array([1, 0])) == 1.0  # open-set cells are skipped


def test_posthoc_tau_is_the_argmax_of_the_logged_grid_and_applies_in_eval_only(pancreas_tokens, tmp_path):
    cfg = FinetuneConfig(**{**FAST, "epochs": 1}, loss="balanced_softmax", posthoc_adjustment=True)
    model, levels, info = finetune(pancreas_tokens, tmp_path / "m", cfg)
    record = json.loads((tmp_path / "m/config.json").read_text())["chosen"]["posthoc"]["subclass"]
    best = max(record["grid"], key=lambda r: (r["val_macro_f1"], -abs(r["tau"])))
    assert record["tau"] == best["tau"]
    counts = torch.tensor(info["class_counts"]["subclass"], dtype=torch.float32)
    assert torch.allclose(model.logit_bias["subclass"], record["tau"] * torch.log(counts))
    emb = torch.randn(5, model.embedding_dim)
    model.train()
    raw, _ = model(None, None, embedding=emb)
    model.eval()
    adjusted, _ = model(None, None, embedding=emb)
    assert torch.allclose(adjusted["subclass"] - raw["subclass"], model.logit_bias["subclass"], atol=1e-5)
    loaded, _ = load_classifier(tmp_path / "m")  # the adjustment travels with the model
    assert torch.equal(loaded.logit_bias["subclass"], model.logit_bias["subclass"])


def test_gcl_trains_a_cosine_head_and_its_second_stage(pancreas_tokens, tmp_path):
    cfg = FinetuneConfig(**{**FAST, "epochs": 1}, loss="gcl", loss_params={"stage2_steps": 30})
    torch.manual_seed(0)
    model, _, info = finetune(pancreas_tokens, tmp_path / "m", cfg)
    head = model.heads["subclass"]
    assert head.cosine_scale == 30.0 and head.out.bias is None
    loaded, _ = load_classifier(tmp_path / "m")
    assert loaded.heads["subclass"].cosine_scale == 30.0
    store = TokenStore(pancreas_tokens)
    test = np.flatnonzero(store.cells.split == "test")[:50]
    a, _ = predictions_table(model, store, test, cfg)
    b, _ = predictions_table(loaded, store, test, cfg)
    assert a.predicted.equals(b.predicted)
    cfg0 = FinetuneConfig(**{**FAST, "epochs": 1}, loss="gcl", loss_params={"stage2_steps": 0})
    torch.manual_seed(0)
    before, _, _ = finetune(pancreas_tokens, tmp_path / "m0", cfg0)
    # stage 2 moved the last layer only
    assert not torch.equal(before.heads["subclass"].out.weight, head.out.weight)
    assert torch.equal(before.heads["subclass"].fc.weight, head.fc.weight)


def test_induced_long_tail_restricts_training_cells(pancreas_tokens, tmp_path):
    store = TokenStore(pancreas_tokens)
    train = store.cells[store.cells.split == "train"]
    kept, table, ratio = induce_long_tail(train["label"].astype(str), ratio=10, seed=0)
    cfg = FinetuneConfig(**FAST, loss="balanced_softmax")
    _, _, info = finetune(pancreas_tokens, tmp_path / "m", cfg, train_cells=kept)
    assert info["n_train"] + info["n_val"] == len(kept)
    counts = pd.Series(info["class_counts"]["subclass"])
    assert counts.max() <= table["n_kept"].max()


def test_auto_grid_candidates_and_choice(pancreas_tokens, tmp_path):
    cfg = FinetuneConfig(**{**FAST, "epochs": 1}, loss="auto", auto_grid={"tau": [0.5, 1.0], "sigma": [0.0]})
    cands = loss_candidates(cfg)
    assert [c[1]["tau"] for c in cands] == [0.5, 1.0] and all(c[0] == "ginf+hdm" for c in cands)
    _, _, info = finetune(pancreas_tokens, tmp_path / "m", cfg)
    chosen = json.loads((tmp_path / "m/config.json").read_text())["chosen"]
    assert chosen["loss"] == "ginf+hdm"
    logged = [c["val_macro_f1"] for c in chosen["candidates"]]
    assert len(logged) == 2
    assert chosen["loss_params"]["tau"] == cands[int(np.argmax(logged))][1]["tau"]  # the first of a tie
    log = pd.read_csv(tmp_path / "m/train_log.csv")
    for cand, score in zip(cands, logged, strict=True):  # each candidate's score is its best logged epoch
        rows = log[log.stage == f"ginf+hdm {cand[1]}"]
        assert rows["val_macro_f1_subclass"].max() == pytest.approx(score)


def test_frozen_encoder_trains_heads_only(pancreas_tokens, tmp_path):
    cfg = FinetuneConfig(**FAST, freeze_encoder=True, two_stage=True, two_stage_confidence=0.0, readout="cls")
    torch.manual_seed(cfg.seed)
    model, _, _ = finetune(pancreas_tokens, tmp_path / "m", cfg)
    from celler.train.finetune import build_encoder

    torch.manual_seed(cfg.seed)
    fresh = build_encoder(cfg, TokenStore(pancreas_tokens), None)
    for (k, a), b in zip(model.encoder.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    log = pd.read_csv(tmp_path / "m/train_log.csv")
    assert "hard" in set(log.stage)  # the second stage ran on confidently misclassified cells


def test_finetune_learns_pancreas_better_than_chance(pancreas_tokens, tmp_path):
    cfg = FinetuneConfig(**{**FAST, "epochs": 8, "patience": 8, "max_len": 128, "lr": 3e-3}, loss="ce")
    model, levels, info = finetune(pancreas_tokens, tmp_path / "m", cfg)
    log = pd.read_csv(tmp_path / "m/train_log.csv")
    assert log["train_loss"].iloc[-1] < 0.8 * log["train_loss"].iloc[0]  # it learns
    # from scratch, 8 short epochs, the default readout, scored on the other study (Xin): near the linear
    # baselines (0.97-0.99 macro-F1 on these cells), far above chance (4 test classes: ~0.25)
    from celler.evaluate.metrics import evaluate

    store = TokenStore(pancreas_tokens)
    pred, _ = predictions_table(model, store, np.flatnonzero(store.cells.split == "test"), cfg)
    f1 = evaluate(pred, pd.Series(info["class_counts"]["subclass"], index=levels["subclass"]))["macro_f1"]
    assert f1 > 0.85, f1


def test_profile_readout_and_hvg_genes_travel_with_the_model(facs_tokens, tmp_path):
    cfg = FinetuneConfig(**{**FAST, "epochs": 1}, readout="cls+mean+profile", gene_selection="hvg", n_hvg=300)
    model, _, _ = finetune(facs_tokens, tmp_path / "m", cfg)
    assert model.embedding_dim == 3 * model.encoder.config.d_model
    assert len(model.selected_genes) == 300
    store = TokenStore(facs_tokens)
    test = np.flatnonzero(store.cells.split == "test")
    pred, emb = predictions_table(model, store, test, cfg)
    assert emb.shape == (len(test), model.embedding_dim)
    loaded, _ = load_classifier(tmp_path / "m")
    assert loaded.readout == "cls+mean+profile"
    np.testing.assert_array_equal(loaded.selected_genes, model.selected_genes)
    # a cell's label depends on the model and the cell only: another seed reads the same genes
    from dataclasses import replace

    again, _ = predictions_table(loaded, store, test, replace(cfg, seed=5))
    assert pred.predicted.equals(again.predicted)
    np.testing.assert_allclose(pred.confidence, again.confidence, rtol=1e-5)


def test_readout_errors_are_clear(pancreas_tokens, tmp_path):
    with pytest.raises(CellerError, match="readout must be"):
        finetune(pancreas_tokens, tmp_path / "a", FinetuneConfig(**FAST, readout="cls+pooler"))
    with pytest.raises(CellerError, match="freeze_encoder"):
        finetune(pancreas_tokens, tmp_path / "b", FinetuneConfig(**FAST, readout="cls+profile", freeze_encoder=True))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_view_dropout_hides_the_encoder_views_in_training_only():
    from celler.model import Encoder, ModelConfig
    from celler.model.classifier import CellClassifier

    cfg = ModelConfig(vocab_size=40, n_bins=11, d_model=8, n_heads=2, d_ff=16, pad_id=38, cls_id=39)
    model = CellClassifier(Encoder(cfg), {"subclass": ["a", "b"]}, readout="cls+mean+profile")
    model.view_dropout = 1.0
    genes = torch.tensor([[39, 3, 5], [39, 7, 38]])
    values = torch.tensor([[0, 4, 9], [0, 2, 0]])
    pad = genes == 38
    profile = (torch.tensor([3, 5, 7]), torch.tensor([4, 9, 2]), torch.tensor([0, 2]))
    model.train()
    emb = model.embed(genes, values, pad, profile)
    assert emb.shape == (2, 24)
    assert (emb[:, :16] == 0).all() and (emb[:, 16:] != 0).any()  # cls and mean hidden, profile kept
    model.eval()
    assert (model.embed(genes, values, pad, profile)[:, :16] != 0).any()
