"""The encoder, its heads, and the batches it reads: shapes, padding, masking rules, samplers."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from celler.data.tokens import TokenStore
from celler.errors import CellerError
from celler.model import (
    PRESETS,
    ClassifierHead,
    Encoder,
    MaskedValueModel,
    ModelConfig,
    ProfileEncoder,
    configure_optimizers,
    preset,
)
from celler.model.batching import (
    IGNORE_INDEX,
    CellDataset,
    LengthBucketSampler,
    RandomBatchSampler,
    collate,
    padding_fraction,
    top_genes,
)

V, PAD, CLS, N_BINS = 100, 97, 98, 11
SMALL = {"vocab_size": V, "pad_id": PAD, "cls_id": CLS, "n_bins": N_BINS, "d_model": 32, "n_heads": 4,
         "d_ff": 48}
VARIANTS = {  # our own layout and scGPT's
    "prenorm-embedding": ModelConfig(**SMALL),
    "postnorm-continuous": replace(PRESETS["scgpt-base"], **SMALL, n_layers=2),
}


def make_batch(lengths, seed=0):
    """Cells of the given gene counts, padded: genes, values, padding_mask (B, L)."""
    g = torch.Generator().manual_seed(seed)
    B, L = len(lengths), max(lengths) + 1
    genes = torch.full((B, L), PAD)
    values = torch.zeros(B, L, dtype=torch.long)
    pad = torch.ones(B, L, dtype=torch.bool)
    for r, n in enumerate(lengths):
        genes[r, 0], pad[r, : n + 1] = CLS, False
        genes[r, 1 : n + 1] = torch.randperm(90, generator=g)[:n]
        values[r, 1 : n + 1] = torch.randint(1, N_BINS + 1, (n,), generator=g)  # N_BINS = <mask>
    return genes, values, pad


# ---- model ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VARIANTS)
def test_encoder_shapes_and_padding_does_not_leak(name):
    torch.manual_seed(0)
    enc = Encoder(VARIANTS[name]).eval()
    genes, values, pad = make_batch([5, 9, 2])
    hidden = enc(genes, values, pad)
    assert hidden.shape == (3, 10, 32)
    emb = enc.cell_embedding(genes, values, pad)
    assert emb.shape == (3, 32)
    torch.testing.assert_close(emb, hidden[:, 0])
    # a cell alone (no padding, flash path) gives the same embedding as inside a padded batch
    alone = enc.cell_embedding(genes[2:, :3], values[2:, :3], None)
    torch.testing.assert_close(alone[0], emb[2], atol=1e-5, rtol=1e-5)


def test_attention_goes_through_sdpa(monkeypatch):
    calls = []
    real = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs.get("attn_mask"))
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    enc = Encoder(replace(VARIANTS["prenorm-embedding"], n_layers=3))
    genes, values, pad = make_batch([4, 6])
    enc(genes, values, pad)
    assert len(calls) == 3
    assert calls[0].shape == (2, 1, 1, 7)
    assert calls[0].dtype == torch.bool
    assert not calls[0][0, 0, 0, 5:].any()
    assert calls[0][1].all()


def test_masked_value_head_and_model():
    torch.manual_seed(0)
    model = MaskedValueModel(VARIANTS["prenorm-embedding"])
    genes, values, pad = make_batch([5, 9, 2])
    targets = torch.full_like(genes, IGNORE_INDEX)
    targets[0, 2], targets[1, 4], targets[1, 7] = 3, 10, 1
    logits, loss = model(genes, values, pad, targets)
    assert logits.shape == (3, N_BINS)  # only the 3 masked positions
    assert abs(loss.item() - np.log(N_BINS)) < 0.5  # about chance at init
    loss.backward()
    logits, loss = model(genes, values, pad)
    assert logits.shape == (3, 10, N_BINS)
    assert loss is None
    _, loss = model(genes, values, pad, torch.full_like(genes, IGNORE_INDEX))  # nothing masked
    assert loss.item() == 0.0
    loss.backward()


def test_classifier_head():
    cfg = VARIANTS["prenorm-embedding"]
    head = ClassifierHead(cfg, n_classes=7)
    logits, loss = head(torch.randn(4, 32), torch.tensor([0, 6, 2, 2]))
    assert logits.shape == (4, 7)
    assert loss.ndim == 0
    assert head(torch.randn(4, 32))[1] is None


def test_resize_token_embeddings_keeps_old_rows():
    enc = Encoder(VARIANTS["prenorm-embedding"])
    old = enc.gene_embedding.weight.detach().clone()
    enc.resize_token_embeddings(V + 25)
    assert enc.gene_embedding.weight.shape == (V + 25, 32)
    assert enc.config.vocab_size == V + 25
    torch.testing.assert_close(enc.gene_embedding.weight[:V], old)
    assert enc.gene_embedding.weight[V:].abs().sum() > 0
    genes, values, pad = make_batch([3])
    genes[0, 2] = V + 20  # a new gene
    assert torch.isfinite(enc(genes, values, pad)).all()
    with pytest.raises(CellerError, match="shrink"):
        enc.resize_token_embeddings(10)


def test_optimizer_groups_params_and_flops():
    model = MaskedValueModel(VARIANTS["prenorm-embedding"])
    opt = configure_optimizers(model, lr=1e-3, weight_decay=0.1)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1
    assert no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    enc = model.encoder
    assert enc.num_params() - enc.num_params(non_embedding=True) == V * 32
    f1, f2 = enc.estimate_flops_per_token(100), enc.estimate_flops_per_token(200)
    assert f2 > f1 > 6 * enc.num_params(non_embedding=True)
    assert enc.estimate_flops_per_token(100, training=False) * 3 == f1


def test_presets_and_config_errors():
    base = PRESETS["scgpt-base"]
    assert (base.n_layers, base.d_model, base.n_heads, base.d_ff) == (12, 512, 8, 512)
    assert preset("tiny", dropout=0.3).dropout == 0.3
    with pytest.raises(CellerError, match="unknown model preset"):
        preset("huge")
    with pytest.raises(CellerError, match="unknown model setting"):
        preset("tiny", width=3)
    with pytest.raises(CellerError, match="multiple of n_heads"):
        ModelConfig(d_model=30, n_heads=4)


# ---- batches and masking -------------------------------------------------------------------------------


class FakeStore:
    """The TokenStore API over in-memory cells (for edge cases a real store lacks)."""

    def __init__(self, cells, split=None):
        self._cells = cells
        self.n_bins = N_BINS
        self.meta = {"cls_id": CLS, "pad_id": PAD, "n_bins": N_BINS}
        self.lengths = np.array([len(c[0]) for c in cells])
        self.cells = pd.DataFrame({"split": split or ["train"] * len(cells)})

    def __len__(self):
        return len(self._cells)

    def __getitem__(self, i):
        return self._cells[i]


def test_masking_rules_on_real_cells(pbmc3k_tokens):
    store = TokenStore(pbmc3k_tokens)
    ds = CellDataset(store, np.arange(40), max_len=2000, mask_ratio=0.15, seed=3)
    for i in range(40):
        item, (genes, bins) = ds[i], store[i]
        g, v, t = item["genes"], item["values"], item["targets"]
        assert g[0] == store.meta["cls_id"]
        assert v[0] == 0
        assert t[0] == IGNORE_INDEX
        np.testing.assert_array_equal(g[1:], genes)
        masked = np.flatnonzero(t != IGNORE_INDEX)
        assert len(masked) == max(1, round(0.15 * len(genes)))
        assert (v[masked] == store.n_bins).all()  # the <mask> value id
        np.testing.assert_array_equal(t[masked], bins[masked - 1])  # targets are the hidden bins
        keep = np.setdiff1d(np.arange(1, len(g)), masked)
        np.testing.assert_array_equal(v[keep], bins[keep - 1])
    # deterministic per (seed, epoch), different across epochs
    again = CellDataset(store, np.arange(40), max_len=2000, seed=3)
    np.testing.assert_array_equal(again[5]["targets"], ds[5]["targets"])
    again.set_epoch(1)
    assert not np.array_equal(again[5]["targets"], ds[5]["targets"])


def test_long_cells_are_subsampled_per_epoch(pbmc3k_tokens):
    store = TokenStore(pbmc3k_tokens)
    ds = CellDataset(store, max_len=64, mask_ratio=0.0, seed=0)
    i = int(np.argmax(store.lengths))
    a = ds[i]
    assert len(a["genes"]) == 64
    assert (a["targets"] == IGNORE_INDEX).all()
    assert set(a["genes"][1:]) <= set(store[i][0])
    assert len(set(a["genes"][1:])) == 63
    np.testing.assert_array_equal(ds[i]["genes"], a["genes"])
    ds.set_epoch(1)
    assert not np.array_equal(ds[i]["genes"], a["genes"])
    assert (ds.lengths <= 64).all()


def test_tiny_cells_get_one_mask_and_empty_cells_none():
    one_gene, no_gene = (np.array([5]), np.array([4], np.uint8)), (np.array([], int), np.array([], np.uint8))
    ds = CellDataset(FakeStore([one_gene, no_gene]), mask_ratio=0.15)
    one, empty = ds[0], ds[1]
    assert list(one["targets"]) == [IGNORE_INDEX, 4]
    assert list(one["values"]) == [0, N_BINS]
    assert list(empty["genes"]) == [CLS]
    assert list(empty["targets"]) == [IGNORE_INDEX]


def test_collate_pads_dynamically():
    store = FakeStore([(np.arange(n), np.full(n, 3, np.uint8)) for n in (4, 1, 7)])
    ds = CellDataset(store, mask_ratio=0.5)
    b = collate([ds[i] for i in range(3)], pad_id=PAD)
    assert b["genes"].shape == b["values"].shape == b["targets"].shape == b["padding_mask"].shape == (3, 8)
    assert b["padding_mask"].sum(1).tolist() == [3, 6, 0]
    assert (b["genes"][b["padding_mask"]] == PAD).all()
    assert (b["values"][b["padding_mask"]] == 0).all()
    assert (b["targets"][b["padding_mask"]] == IGNORE_INDEX).all()
    assert b["index"].tolist() == [0, 1, 2]


def test_bucketed_batches_cover_each_cell_once_with_less_padding(pbmc3k_tokens):
    lengths = CellDataset(TokenStore(pbmc3k_tokens), max_len=1200).lengths
    bucket = LengthBucketSampler(lengths, 32, seed=1, pool_batches=20)
    naive = RandomBatchSampler(lengths, 32, seed=1)
    for sampler in (bucket, naive):
        flat = np.concatenate(list(sampler))
        np.testing.assert_array_equal(np.sort(flat), np.arange(len(lengths)))
    assert padding_fraction(list(bucket), lengths) < 0.5 * padding_fraction(list(naive), lengths)
    first = list(bucket)
    bucket.set_epoch(0, start=5)  # resume: skip the 5 batches already done
    assert [b for b in bucket] == first[5:]
    assert len(bucket) == len(first) - 5
    bucket.set_epoch(1)
    assert list(bucket) != first


def test_batches_are_sharded_over_ranks():
    lengths = np.random.default_rng(0).integers(2, 100, 1000)
    full = list(LengthBucketSampler(lengths, 30, seed=4))  # 34 batches
    shards = [list(LengthBucketSampler(lengths, 30, seed=4, rank=r, world_size=4)) for r in range(4)]
    assert {len(s) for s in shards} == {8}  # 34 // 4: equal steps on every rank, remainder dropped
    assert [b for r in range(8) for s in shards for b in [s[r]]] == full[:32]


def test_top_selection_keeps_the_highest_bins_whatever_the_seed_or_epoch(pbmc3k_tokens):
    store = TokenStore(pbmc3k_tokens)
    ds = CellDataset(store, max_len=64, mask_ratio=0.0, seed=0, select="top")
    other = CellDataset(store, max_len=64, mask_ratio=0.0, seed=7, select="top")
    other.set_epoch(3)
    long_cells = np.flatnonzero(store.lengths > 63)[:30]
    assert len(long_cells) == 30
    for i in long_cells:
        genes, bins = store[i]
        item = ds[i]
        kept = np.isin(genes, item["genes"][1:])
        assert kept.sum() == 63
        assert bins[kept].min() >= bins[~kept].max()  # nothing dropped is more expressed than what is kept
        np.testing.assert_array_equal(item["values"][1:], bins[kept])
        np.testing.assert_array_equal(other[i]["genes"], item["genes"])  # same genes: no random draw


def test_top_genes_breaks_ties_without_favouring_low_ids():
    genes = np.arange(1000)
    kept = top_genes(genes, np.ones(1000, np.uint8), 100)
    assert len(kept) == 100 and np.all(np.diff(kept) > 0)
    assert 300 < kept.mean() < 700  # a fixed hash, not the first 100 ids


def test_gene_filter_and_uncut_profile(pbmc3k_tokens):
    store = TokenStore(pbmc3k_tokens)
    i = int(np.argmax(store.lengths))
    genes, bins = store[i]
    allowed = genes[::3]
    ds = CellDataset(store, max_len=32, mask_ratio=0.0, select="top", genes=allowed, profile=True)
    item = ds[i]
    assert set(item["genes"][1:]) <= set(allowed) and len(item["genes"]) == 32
    np.testing.assert_array_equal(item["profile_genes"], allowed)  # every allowed gene, uncut
    np.testing.assert_array_equal(item["profile_values"], bins[::3])
    batch = collate([item, ds[0]], pad_id=int(store.meta["pad_id"]))
    assert batch["profile_offsets"].tolist() == [0, len(allowed)]
    assert len(batch["profile_genes"]) == len(allowed) + len(ds[0]["profile_genes"])
    everything = CellDataset(store, max_len=32, mask_ratio=0.0, select="all")
    assert len(everything[i]["genes"]) == len(genes) + 1
    with pytest.raises(CellerError, match="gene selection"):
        CellDataset(store, select="best")


def test_profile_encoder_is_a_weighted_bag_over_ragged_cells():
    cfg = ModelConfig(vocab_size=50, n_bins=11, d_model=8, n_heads=2, d_ff=16, pad_id=48, cls_id=49)
    enc = ProfileEncoder(cfg)
    genes, values = torch.tensor([3, 5, 7, 3]), torch.tensor([10, 5, 1, 10])
    out = enc(genes, values, torch.tensor([0, 3]))
    assert out.shape == (2, 8)
    w = enc.bag.weight
    expected = enc.norm((w[3] * 1.0 + w[5] * 0.5 + w[7] * 0.1)[None])[0]
    torch.testing.assert_close(out[0], expected)
    torch.testing.assert_close(out[1], enc.norm(w[3][None])[0])


def test_slow_encoder_learns_at_a_fraction_of_the_rate():
    model = MaskedValueModel(VARIANTS["prenorm-embedding"])
    opt = configure_optimizers(model, lr=1e-3, weight_decay=0.1, slow=model.encoder, slow_scale=0.1)
    enc = {id(p) for p in model.encoder.parameters()}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    for g in opt.param_groups:
        in_encoder = {id(p) in enc for p in g["params"]}
        assert len(in_encoder) == 1  # a group is all encoder or all head
        assert g["lr"] == pytest.approx(1e-4 if in_encoder.pop() else 1e-3)


def test_profile_only_items_carry_no_tokens(pbmc3k_tokens):
    store = TokenStore(pbmc3k_tokens)
    ds = CellDataset(store, max_len=64, mask_ratio=0.0, select="top", profile=True, tokens=False)
    item = ds[0]
    assert item["genes"].tolist() == [store.meta["cls_id"]]
    np.testing.assert_array_equal(item["profile_genes"], store[0][0])  # the profile is whole
