"""Pretraining: the loss falls on real cells, resume is exact, SIGTERM checkpoints, DDP (gloo) runs."""

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from celler.data.tokens import TokenStore
from celler.data.vocab import Vocab
from celler.errors import CellerError
from celler.model import Encoder, MaskedValueModel, ProfileEncoder, preset
from celler.model.classifier import load_classifier
from celler.model.pretrained import check_vocab, embed, load_pretrained
from celler.train.finetune import FinetuneConfig, build_classifier, build_encoder, finetune
from celler.train.pretrain import PretrainConfig, lr_factor, pretrain, select_cells

ROOT = Path(__file__).resolve().parents[1]
# nats the pretrained loss must stay below the bin-frequency entropy; measured: 2.92 vs 3.89 after 60 steps
MARGIN_NATS = 0.5
# nats by which a cell's own hidden genes must score better than another cell's (cell objective, 150 steps):
# measured 7.47 vs 8.46 (seed 0)
MARGIN_CELL = 0.5
# a few seconds on 2 CPU cores: 40 cells per epoch, short sequences
QUICK = PretrainConfig(preset="tiny", max_len=64, batch_size=8, max_cells=40, lr=3e-3, warmup_steps=2,
                       checkpoint_every=0, model={"dropout": 0.1})


@pytest.fixture(autouse=True)
def one_cpu_thread():
    """Train on one thread: about as fast for these tiny runs, and immune to oversubscription when other jobs
    share a 2-core machine (two OpenMP threads then slow down up to 20x)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def masked_bin_entropy(store: TokenStore, max_len: int) -> float:
    """Entropy (nats) of the value bins a masked position holds: the loss of the best model that ignores the
    cell and predicts the bins' training frequencies. A cell longer than ``max_len`` is cut to a random
    subset, so each of its tokens is masked with probability proportional to ``min(n, max_len - 1) / n``."""
    n = store.lengths
    weights = np.repeat(np.minimum(n, max_len - 1) / np.maximum(n, 1), n)  # max_len counts <cls>
    p = np.bincount(np.asarray(store.bins), weights=weights)
    p = p[p > 0] / p.sum()
    return float(-(p * np.log(p)).sum())


def test_loss_falls_on_real_cells(pbmc3k_tokens, tmp_path):
    cfg = PretrainConfig(preset="tiny", max_len=128, batch_size=16, max_steps=60, lr=3e-3, warmup_steps=5,
                         checkpoint_every=0)
    result = pretrain([pbmc3k_tokens], tmp_path / "m", cfg)
    log = pd.read_csv(tmp_path / "m" / "train_log.csv")
    assert list(log["step"]) == list(range(1, 61))
    assert not result.interrupted
    first, last = log["loss"][:5].mean(), log["loss"][-5:].mean()
    assert first > 3.7  # ~ln(50) at the start
    # A model that only learnt the bins' frequencies would sit at their entropy: the encoder must beat it.
    marginal = masked_bin_entropy(TokenStore(pbmc3k_tokens), max_len=cfg.max_len)
    assert last < marginal - MARGIN_NATS, (first, last, marginal)
    assert (log["tokens_per_s"] > 0).all()
    assert log["lr"].max() == pytest.approx(3e-3, rel=0.05)
    out = tmp_path / "m"
    for name in ("model.pt", "config.json", "vocab.json", "bin_edges.json", "train_log.csv",
                 "training_curve.png", "checkpoint.pt"):
        assert (out / name).exists(), name
    config = json.loads((out / "config.json").read_text())
    assert config["transductive"] is False
    assert config["n_cells"] == 2700
    assert config["pretrain"]["max_steps"] == 60

    # the pretrained encoder and cell embeddings
    encoder, mcfg, vocab = load_pretrained(out)
    assert isinstance(encoder, Encoder)
    assert mcfg.vocab_size == len(vocab) == 60697
    emb = embed(out, pbmc3k_tokens, batch_size=64, max_len=128, indices=np.arange(300))
    assert emb.shape == (300, 64)
    assert emb.dtype == np.float32
    assert np.isfinite(emb).all()
    some = embed(out, TokenStore(pbmc3k_tokens), indices=[7, 3, 200], max_len=128)  # alone, other batches
    np.testing.assert_allclose(some, emb[[7, 3, 200]], atol=1e-5)
    assert np.linalg.norm(emb[0] - emb[1]) > 1e-3  # cells differ


def test_resume_after_kill_equals_straight_run(pbmc3k_tokens, tmp_path):
    n = 4  # 40 cells / 8 = 5 batches per epoch, so the resumed half crosses an epoch boundary
    straight = pretrain([pbmc3k_tokens], tmp_path / "straight", QUICK.with_overrides([f"max_steps={2 * n}"]))

    def kill_at_n(step, loss):  # SLURM pre-emption: SIGTERM to ourselves after step n
        if step == n:
            os.kill(os.getpid(), signal.SIGTERM)
        return False

    cfg = QUICK.with_overrides([f"max_steps={2 * n}"])
    first = pretrain([pbmc3k_tokens], tmp_path / "resumed", cfg, on_step=kill_at_n)
    assert first.interrupted
    assert first.step == n
    assert (tmp_path / "resumed" / "checkpoint.pt").exists()
    assert not (tmp_path / "resumed" / "model.pt").exists()
    second = pretrain([pbmc3k_tokens], tmp_path / "resumed", cfg, resume=True)
    assert not second.interrupted
    assert second.step == 2 * n

    a = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "model.pt", weights_only=True)
    for part in ("encoder", "masked_value_head"):
        for k in a[part]:
            torch.testing.assert_close(a[part][k], b[part][k], atol=1e-6, rtol=1e-5, msg=k)
    la = pd.read_csv(tmp_path / "straight" / "train_log.csv")
    lb = pd.read_csv(tmp_path / "resumed" / "train_log.csv")
    np.testing.assert_allclose(la["loss"], lb["loss"], rtol=1e-5)
    assert list(lb["epoch"]) == [0] * 5 + [1] * 3
    assert straight.loss == pytest.approx(second.loss, rel=1e-5)


def test_resume_refuses_a_different_model(pbmc3k_tokens, tmp_path):
    cfg = QUICK.with_overrides(["max_steps=1"])
    pretrain([pbmc3k_tokens], tmp_path, cfg)
    with pytest.raises(CellerError, match="different model"):
        pretrain([pbmc3k_tokens], tmp_path, cfg.with_overrides(["d_model=32"]), resume=True)


def test_load_pretrained_checks_format(pbmc3k_tokens, tmp_path):
    pretrain([pbmc3k_tokens], tmp_path, QUICK.with_overrides(["max_steps=1"]))
    blob = torch.load(tmp_path / "model.pt", weights_only=True)
    torch.save({**blob, "format_version": 99, "celler_version": "9.0"}, tmp_path / "model.pt")
    with pytest.raises(CellerError, match=r"model format 99 \(written by celler 9.0\)"):
        load_pretrained(tmp_path)
    with pytest.raises(CellerError, match="not a model directory"):
        load_pretrained(tmp_path / "nothing")


def test_finetuning_starts_from_the_pretrained_encoder(pbmc3k_tokens, pancreas_tokens, tmp_path):
    """The pretrained weights reach fine-tuning: its starting encoder is the pretrained one tensor for tensor,
    and a fine-tuning with the encoder frozen writes exactly those tensors back (pretrained on pbmc3k,
    fine-tuned on pancreas; both stores use the bundled vocabulary and 51 bins)."""
    pretrain([pbmc3k_tokens], tmp_path / "pre", QUICK.with_overrides(["max_steps=3"]))
    saved = torch.load(tmp_path / "pre" / "model.pt", weights_only=True)["encoder"]
    cfg = FinetuneConfig(init="pretrained", epochs=1, min_steps=0, batch_size=32, max_len=64, seed=0, device="cpu",
                         readout="cls")
    start = build_encoder(cfg, TokenStore(pancreas_tokens), tmp_path / "pre").state_dict()
    assert start.keys() == saved.keys()
    for k, v in saved.items():
        assert torch.equal(start[k], v), k
    fresh = build_encoder(replace(cfg, init="scratch"), TokenStore(pancreas_tokens), None).state_dict()
    assert not torch.equal(fresh["gene_embedding.weight"], saved["gene_embedding.weight"])

    finetune(pancreas_tokens, tmp_path / "ft", replace(cfg, freeze_encoder=True), pretrained=tmp_path / "pre")
    model, _ = load_classifier(tmp_path / "ft")
    tuned = model.encoder.state_dict()
    for k, v in saved.items():
        assert torch.equal(tuned[k], v), k


def test_profile_view_reads_the_encoders_gene_vectors_in_pretraining():
    """Tied, not copied: one tensor, and the cell-level loss's gradient reaches the batch's gene rows only."""
    model = MaskedValueModel(preset("tiny", vocab_size=50, pad_id=48, cls_id=49), profile=True)
    assert model.profile.bag.weight is model.encoder.gene_embedding.weight
    genes = torch.tensor([3, 5, 7, 5, 9])
    values = torch.tensor([10, 20, 30, 40, 50])
    offsets = torch.tensor([0, 3])  # cell 0: genes 3, 5, 7; cell 1: genes 5, 9
    hidden = torch.tensor([False, True, False, False, False])
    loss = model.profile_loss(genes, values, offsets, hidden)
    loss.backward()
    grad = model.encoder.gene_embedding.weight.grad
    assert set(torch.nonzero(grad.abs().sum(1)).flatten().tolist()) == {3, 5, 7, 9}
    model.encoder.resize_token_embeddings(60)
    model.tie_profile()
    assert model.profile.bag.weight is model.encoder.gene_embedding.weight


def chimeras(items: list[dict], shift: int) -> list[dict]:
    """Cells whose visible genes are their own and whose hidden genes are another cell's (``shift`` along)."""
    out = []
    for i, it in enumerate(items):
        other = items[(i + shift) % len(items)]
        seen = ~it["profile_hidden"]
        hidden = other["profile_hidden"] & ~np.isin(other["profile_genes"], it["profile_genes"][seen])
        out.append({**it, "profile_genes": np.concatenate([it["profile_genes"][seen], other["profile_genes"][hidden]]),
                    "profile_values": np.concatenate([it["profile_values"][seen], other["profile_values"][hidden]]),
                    "profile_hidden": np.concatenate([np.zeros(seen.sum(), bool), np.ones(hidden.sum(), bool)])})
    return out


def test_cell_objective_learns_which_genes_go_together(pbmc3k_tokens, pancreas_tokens, tmp_path):
    """The cell-level objective reads the cell: on held-out pbmc3k cells, a cell's hidden genes are picked out
    from its visible ones far better than the hidden genes of another cell (same visible genes, same number
    of candidates), and far better than at the start. Its LayerNorm is saved, and a classifier built on the
    model starts with profile gene vectors equal to the pretrained gene embedding; from scratch they differ."""
    from celler.model.batching import CellDataset, collate
    from celler.model.pretrained import start_from

    cfg = PretrainConfig(preset="tiny", max_len=64, batch_size=16, max_steps=150, lr=3e-3, warmup_steps=4,
                         checkpoint_every=0, max_cells=400, profile_weight=1.0)
    pretrain([pbmc3k_tokens], tmp_path / "pre", cfg)
    store = TokenStore(pbmc3k_tokens)
    model = start_from(tmp_path / "pre", store, profile=True).eval()
    ds = CellDataset(store, np.arange(2000, 2128), max_len=64, mask_ratio=0.15, profile=True, seed=5)
    items = [ds[i] for i in range(len(ds))]

    def loss(batch_items):
        b = collate(batch_items, pad_id=int(store.meta["pad_id"]))
        with torch.no_grad():
            return model.profile_loss(*(b[k] for k in ("profile_genes", "profile_values", "profile_offsets",
                                                       "profile_hidden"))).item()

    own, other = loss(items), np.mean([loss(chimeras(items, k)) for k in (1, 7, 31)])
    log = pd.read_csv(tmp_path / "pre" / "train_log.csv")
    assert own < other - MARGIN_CELL, (own, other)
    assert log["profile_loss"][-10:].mean() < log["profile_loss"][:5].mean() - 0.5
    blob = torch.load(tmp_path / "pre" / "model.pt", weights_only=True)
    assert {"profile_norm", "profile_decoder"} <= set(blob)
    ft = FinetuneConfig(init="pretrained", readout="profile", device="cpu")
    pancreas = TokenStore(pancreas_tokens)
    levels = {"subclass": ["a", "b"]}
    torch.manual_seed(0)
    model = build_classifier(ft, pancreas, tmp_path / "pre", levels)
    torch.manual_seed(0)
    fresh = build_classifier(replace(ft, init="scratch"), pancreas, None, levels)
    # the profile view starts from the pretrained gene vectors, scaled to a fresh vector's length, plus the
    # fresh vectors the same seed gives a scratch start
    pretrained = blob["encoder"]["gene_embedding.weight"]
    scale = ProfileEncoder.pretrained_scale(pretrained)
    assert 0.05 < scale < 1  # pretraining lengthened the rows it trained
    assert torch.allclose(model.profile.bag.weight, fresh.profile.bag.weight + scale * pretrained, atol=1e-6)
    assert torch.equal(model.profile.norm.weight, blob["profile_norm"]["weight"])
    assert not torch.equal(fresh.profile.norm.weight, blob["profile_norm"]["weight"])


def test_other_pretrained_weights_give_other_default_predictions(pbmc3k_tokens, pancreas_tokens, tmp_path):
    """The default readout reads pretrained weights: fine-tuning the same cells with the same seed from two
    pretrained models (pretraining seeds 0 and 1) gives different logits; from scratch twice, the same."""
    from celler.model.classifier import predict_logits

    ft = FinetuneConfig(init="pretrained", epochs=1, min_steps=0, batch_size=32, max_len=64, seed=0, device="cpu")
    assert ft.readout == "programs+profile"  # the shipped default (tests/test_defaults.py)
    store = TokenStore(pancreas_tokens)
    test = np.flatnonzero(store.cells["split"].astype(str).to_numpy() == "test")[:100]
    out = {}
    for name, seed in (("a", 0), ("b", 1)):
        pretrain([pbmc3k_tokens], tmp_path / name, QUICK.with_overrides(["max_steps=3", f"seed={seed}"]))
        model, _, _ = finetune(pancreas_tokens, tmp_path / f"ft_{name}", ft, pretrained=tmp_path / name)
        out[name] = predict_logits(model, store, test, ft)[0]["subclass"]
    for name in ("s1", "s2"):
        model, _, _ = finetune(pancreas_tokens, tmp_path / f"ft_{name}", replace(ft, init="scratch"))
        out[name] = predict_logits(model, store, test, ft)[0]["subclass"]
    assert not torch.allclose(out["a"], out["b"])
    torch.testing.assert_close(out["s1"], out["s2"])


def test_corpus_leaves_out_test_cells_unless_transductive():
    class Store:
        cells = pd.DataFrame({"split": ["train", "test", np.nan, "train", "test"]})

        def __len__(self):
            return 5

    assert select_cells(Store()).tolist() == [0, 2, 3]
    assert select_cells(Store(), transductive=True).tolist() == [0, 1, 2, 3, 4]
    assert len(select_cells(Store(), transductive=True, max_cells=2)) == 2


def test_overrides_and_schedule():
    cfg = PretrainConfig().with_overrides(["max_steps=200", "lr=1e-3", "dropout=0.1", "model.d_model=32",
                                          "transductive=true", "max_cells=null", "device=cpu"])
    assert (cfg.max_steps, cfg.lr, cfg.transductive, cfg.device) == (200, 1e-3, True, "cpu")
    assert cfg.model == {"dropout": 0.1, "d_model": 32}
    assert PretrainConfig().model == {}
    for bad in (["max_steps=1.5"], ["lr=fast"], ["nope=1"], ["max_steps"]):
        with pytest.raises(CellerError):
            PretrainConfig().with_overrides(bad)
    cfg = PretrainConfig(lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == pytest.approx(1 / 11)
    assert lr_factor(9, cfg) == pytest.approx(10 / 11)
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    assert lr_factor(60, cfg) == pytest.approx(0.55)
    assert lr_factor(110, cfg) == pytest.approx(0.1)


def test_vocabulary_mismatch_is_explained():
    v = Vocab({"A": 0, "B": 1})
    check_vocab(v, Vocab({"A": 0, "B": 1}), what="m")
    with pytest.raises(CellerError, match="extended vocabulary"):
        check_vocab(v.extended(["C"]), v, what="m")
    with pytest.raises(CellerError, match="differs"):
        check_vocab(Vocab({"B": 0, "A": 1}), v, what="m")


def test_ddp_two_processes_with_gloo(pbmc3k_tokens, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "scripts" / "pretrain.py"), "--stores", str(pbmc3k_tokens), "--out", str(out),
           "--preset", "tiny", "--set", "max_steps=4", "--set", "max_len=64", "--set", "batch_size=8",
           "--set", "max_cells=64", "--set", "device=cpu", "--set", "checkpoint_every=2"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 2
    log = pd.read_csv(out / "train_log.csv")
    assert list(log["step"]) == [1, 2, 3, 4]  # one writer: rank 0
    assert (log["cells_per_s"] > 0).all()
    encoder, _, _ = load_pretrained(out)
    assert all(torch.isfinite(p).all() for p in encoder.parameters())
