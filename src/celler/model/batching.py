"""Batches of cells from a token store: dataset, masking, dynamic padding, and batch samplers.

One item is a cell as the model reads it: ``<cls>`` first, then its non-zero genes, at most ``max_len``
tokens. Which genes a longer cell keeps is ``select``: ``top`` keeps its highest-expressed genes (highest
bins; ties broken by a fixed per-gene priority, so a cell always reads the same genes: its label depends on
the model and the cell only), ``random`` draws a random subset anew each epoch (pretraining's augmentation),
``all`` keeps every gene. ``genes`` (sorted token ids, e.g. a tissue's highly variable genes) first restricts
a cell to those genes. With ``profile=True`` an item also carries the cell's whole (filtered) expression
profile, uncut, for a readout that sees every gene (:class:`celler.model.ProfileEncoder`); ``tokens=False``
leaves the token sequence at ``<cls>`` alone, for a readout that reads the profile only. For pretraining,
``mask_ratio`` of the gene values are hidden: each becomes the ``<mask>`` value id (``n_bins``, the extra
row of the value embedding) and its bin becomes the target; every other position has target -100.
``<cls>`` and ``<pad>`` are never masked and a cell with genes always has at least one masked value. With a
profile too, ``profile_hidden`` marks the same share of its profile genes, left out of the cell-level
objective's input (:meth:`celler.model.MaskedValueModel.profile_loss`).

All randomness of an item comes from ``numpy.random.default_rng((seed, epoch, cell index))``, so a cell
looks the same for a given seed and epoch whatever the process, worker or rank that reads it; that is
what makes a resumed run see exactly the data an uninterrupted one would.

Batch samplers yield lists of dataset positions for one epoch, ``set_epoch(epoch, start=k)`` skipping the
first ``k`` batches (resume). ``LengthBucketSampler`` sorts cells by length inside large random pools, cuts
the pools into batches and shuffles the batches, so cells in a batch have similar lengths and little
padding; ``RandomBatchSampler`` is the naive baseline. With ``world_size > 1`` each rank takes every
``world_size``-th batch of the same epoch order (the remainder is dropped so all ranks take equal steps).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from celler.errors import CellerError

IGNORE_INDEX = -100  # target at positions that are not predicted (cross_entropy's default ignore_index)


SELECTIONS = ("top", "random", "all")


def tie_priority(genes: np.ndarray) -> np.ndarray:
    """A fixed pseudo-random priority per gene id (a multiplicative hash): breaks ties between equal bins
    the same way in every cell, run and process, without favouring low ids."""
    return (np.asarray(genes, np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(11)


def top_genes(genes: np.ndarray, bins: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` highest-binned genes (ties by :func:`tie_priority`), in store order."""
    order = np.lexsort((tie_priority(genes), -bins.astype(np.int64)))
    return np.sort(order[:k])


class CellDataset(Dataset):
    """Cells ``indices`` of ``store`` (a TokenStore or ConcatStore) as model inputs (see the module doc)."""

    def __init__(self, store, indices=None, *, max_len: int = 1200, mask_ratio: float = 0.15, seed: int = 0,
                 select: str = "random", genes: np.ndarray | None = None, profile: bool = False,
                 tokens: bool = True):
        if max_len < 2:
            msg = f"max_len must be >= 2 (<cls> plus at least one gene), got {max_len}"
            raise CellerError(msg)
        if select not in SELECTIONS:
            msg = f"gene selection must be one of {SELECTIONS}, got {select!r}"
            raise CellerError(msg)
        if not 0.0 <= mask_ratio < 1.0:
            msg = f"mask_ratio must be in [0, 1), got {mask_ratio}"
            raise CellerError(msg)
        self.store = store
        self.indices = np.asarray(np.arange(len(store)) if indices is None else indices, np.int64)
        self.max_len = max_len
        self.mask_ratio = mask_ratio
        self.seed = seed
        self.select = select
        self.genes = None if genes is None else np.unique(np.asarray(genes, np.int64))
        self.profile = profile
        self.tokens = tokens  # False: the item's token sequence is <cls> alone (a readout that reads no tokens)
        self.cls_id = int(store.meta["cls_id"])
        self.pad_id = int(store.meta["pad_id"])
        self.mask_id = int(store.n_bins)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def lengths(self) -> np.ndarray:
        """Sequence length of each item (with <cls>, capped at max_len), for the batch samplers.

        With a gene filter this is the unfiltered length (an upper bound; only used to group cells)."""
        n = self.store.lengths[self.indices] + 1
        return n if self.select == "all" else np.minimum(n, self.max_len)

    def __getitem__(self, i: int) -> dict:
        idx = int(self.indices[i])
        genes, bins = self.store[idx]
        if self.genes is not None:
            keep = np.isin(genes, self.genes, assume_unique=True)
            genes, bins = genes[keep], bins[keep]
        profile = {"profile_genes": genes.astype(np.int64), "profile_values": bins.astype(np.int64)} \
            if self.profile else {}
        if not self.tokens:
            genes, bins = genes[:0], bins[:0]
        rng = np.random.default_rng((self.seed, self.epoch, idx))
        n = len(genes)
        if n > self.max_len - 1 and self.select != "all":  # a subset of the genes, kept in store order
            keep = (top_genes(genes, bins, self.max_len - 1) if self.select == "top"
                    else np.sort(rng.choice(n, self.max_len - 1, replace=False)))
            genes, bins, n = genes[keep], bins[keep], self.max_len - 1
        g = np.empty(n + 1, np.int64)
        g[0], g[1:] = self.cls_id, genes
        v = np.zeros(n + 1, np.int64)  # value id 0 at <cls>
        v[1:] = bins
        t = np.full(n + 1, IGNORE_INDEX, np.int64)
        if self.mask_ratio > 0 and n > 0:
            pos = 1 + rng.choice(n, max(1, round(self.mask_ratio * n)), replace=False)  # never position 0
            t[pos], v[pos] = v[pos], self.mask_id
        if profile and self.mask_ratio > 0:  # the cell-level objective: these genes are left out of its input
            profile["profile_hidden"] = rng.random(len(profile["profile_genes"])) < self.mask_ratio
        return {"index": idx, "genes": g, "values": v, "targets": t, **profile}


def collate(items: list[dict], *, pad_id: int) -> dict[str, torch.Tensor]:
    """Pad a list of items to the longest: genes/values/targets (B, L) int64, padding_mask (B, L) bool.

    Items with a profile also give it flat, as ``nn.EmbeddingBag`` reads it: ``profile_genes`` and
    ``profile_values`` (all cells' genes one after another) and ``profile_offsets`` (B,)."""
    B, L = len(items), max(len(it["genes"]) for it in items)
    genes = np.full((B, L), pad_id, np.int64)
    values = np.zeros((B, L), np.int64)
    targets = np.full((B, L), IGNORE_INDEX, np.int64)
    padding = np.ones((B, L), bool)
    for r, it in enumerate(items):
        n = len(it["genes"])
        genes[r, :n], values[r, :n], targets[r, :n] = it["genes"], it["values"], it["targets"]
        padding[r, :n] = False
    out = {
        "index": torch.tensor([it["index"] for it in items]),
        "genes": torch.from_numpy(genes),
        "values": torch.from_numpy(values),
        "targets": torch.from_numpy(targets),
        "padding_mask": torch.from_numpy(padding),
    }
    if "profile_genes" in items[0]:
        sizes = [len(it["profile_genes"]) for it in items]
        out["profile_genes"] = torch.from_numpy(np.concatenate([it["profile_genes"] for it in items]))
        out["profile_values"] = torch.from_numpy(np.concatenate([it["profile_values"] for it in items]))
        out["profile_offsets"] = torch.from_numpy(np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64))
    if "profile_hidden" in items[0]:
        out["profile_hidden"] = torch.from_numpy(np.concatenate([it["profile_hidden"] for it in items]))
    return out


class _EpochBatches(Sampler):
    """Shared part of the samplers: per-epoch batch order, sharding over ranks, skipping for resume."""

    def __init__(self, lengths, batch_size: int, *, seed: int = 0, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            msg = f"batch_size must be >= 1, got {batch_size}"
            raise CellerError(msg)
        self.lengths = np.asarray(lengths)
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 0, 0
        self._cache: tuple[int, list[np.ndarray]] | None = None

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate over epoch ``epoch``'s batches for this rank, skipping the first ``start`` of them."""
        self.epoch, self.start = epoch, start

    def epoch_batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        raise NotImplementedError

    def rank_batches(self) -> list[np.ndarray]:
        """This rank's batches of the current epoch (before skipping ``start``)."""
        if self._cache is None or self._cache[0] != self.epoch:
            batches = self.epoch_batches(np.random.default_rng((self.seed, self.epoch)))
            n = len(batches) // self.world_size * self.world_size
            self._cache = (self.epoch, batches[self.rank:n:self.world_size])
        return self._cache[1]

    def __iter__(self):
        for b in self.rank_batches()[self.start:]:
            yield b.tolist()

    def __len__(self) -> int:
        return max(0, len(self.rank_batches()) - self.start)

    def _chunks(self, order: np.ndarray) -> list[np.ndarray]:
        return [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]


class RandomBatchSampler(_EpochBatches):
    """Naive batches: a random permutation (or the dataset order, ``shuffle=False``) cut into batches."""

    def epoch_batches(self, rng):
        order = rng.permutation(len(self.lengths)) if self.shuffle else np.arange(len(self.lengths))
        return self._chunks(order)


class LengthBucketSampler(_EpochBatches):
    """Batches of similar length: sort by length inside random pools of ``pool_batches`` batches, then
    shuffle the batches. ``shuffle=False`` sorts the whole dataset by length (inference)."""

    def __init__(self, lengths, batch_size: int, *, pool_batches: int = 100, **kwargs):
        super().__init__(lengths, batch_size, **kwargs)
        self.pool_batches = pool_batches

    def epoch_batches(self, rng):
        if not self.shuffle:
            return self._chunks(np.argsort(-self.lengths, kind="stable"))
        order = rng.permutation(len(self.lengths))
        pool = self.batch_size * self.pool_batches
        batches = []
        for i in range(0, len(order), pool):
            chunk = order[i:i + pool]
            batches += self._chunks(chunk[np.argsort(-self.lengths[chunk], kind="stable")])
        return [batches[k] for k in rng.permutation(len(batches))]


def padding_fraction(batches, lengths) -> float:
    """Share of the padded (B x max length) tokens of ``batches`` that are padding."""
    lengths = np.asarray(lengths)
    real = sum(int(lengths[b].sum()) for b in batches)
    total = sum(len(b) * int(lengths[b].max()) for b in batches)
    return 1.0 - real / total if total else 0.0


__all__ = [
    "IGNORE_INDEX", "SELECTIONS", "CellDataset", "top_genes", "LengthBucketSampler", "RandomBatchSampler", "collate", "padding_fraction",
]
