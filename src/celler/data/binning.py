"""Discretising expression into value tokens: bin 0 is zero, bins 1..n_bins-1 split the non-zero values.

Two schemes:

* ``per_batch`` (the Celler paper): quantile edges over all non-zero values of a batch, so one value means
  the same bin for every cell of that batch; edges are saved and reused to bin new data.
* ``per_cell`` (scGPT): quantiles over each cell's own non-zero values, so bins are ranks within the cell.

Ties: a value equal to several (duplicated) edges gets the middle of the bins it spans (mid-rank), which
keeps the map monotone and puts the mass of a tied value (e.g. count 1) at its mean quantile.
All functions work on CSR ``.data`` arrays, never densify, and are vectorised.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from celler.data.io import atomic_path


def quantile_edges(values: np.ndarray, n_bins: int) -> np.ndarray:
    """The ``n_bins - 2`` interior edges splitting non-zero ``values`` into ``n_bins - 1`` equal-mass bins."""
    if n_bins < 3:
        msg = f"n_bins must be at least 3 (zero plus two non-zero bins), got {n_bins}"
        raise ValueError(msg)
    if values.size == 0:
        return np.zeros(n_bins - 2, dtype=np.float64)
    q = np.linspace(0.0, 1.0, n_bins)[1:-1]
    return np.quantile(values.astype(np.float64), q)


def digitize(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin ids 1..len(edges)+1 for non-zero ``values`` given sorted ``edges`` (mid-rank on ties).

    One binary search per value; a value that equals an edge run ``edges[a:b]`` gets bin ``1 + (a + b) // 2``.
    """
    edges = np.asarray(edges, dtype=values.dtype)
    right = np.searchsorted(edges, values, side="right")
    first = np.searchsorted(edges, edges, side="left")  # start of each edge's tie run
    prev = np.maximum(right - 1, 0)
    tie = (right > 0) & (edges[prev] == values) if edges.size else np.zeros(values.shape, bool)
    left = np.where(tie, first[prev], right)
    return (1 + (left + right) // 2).astype(np.uint8 if edges.size < 255 else np.uint16)


class ValueSample:
    """A uniform random sample of each batch's non-zero values, of bounded size.

    Every value seen is held with the same probability ``p[batch]``: 1 until more than ``2 * max_values`` are
    held, then ``p`` shrinks so that about ``max_values`` are (held values thinned, later ones sampled at the
    new ``p``). ``seen`` counts all values, so samples of several shards merge into one uniform sample.
    """

    def __init__(self, max_values: int = 20_000_000, seed: int = 0):
        self.max_values = max_values
        self.rng = np.random.default_rng(seed)
        self.p: dict[str, float] = {}
        self.seen: dict[str, int] = {}
        self._parts: dict[str, list[np.ndarray]] = {}
        self._held: dict[str, int] = {}

    def add_rows(self, x, batches) -> None:
        """Add the non-zero values of a CSR matrix whose row i belongs to batch ``batches[i]``."""
        names, codes = np.unique(np.asarray(batches).astype(str), return_inverse=True)
        code_of = np.repeat(codes.astype(np.int32), np.diff(x.indptr)) if len(names) > 1 else None
        for k, b in enumerate(names):
            self.add(b, x.data if code_of is None else x.data[code_of == k])

    def add(self, batch: str, values: np.ndarray) -> None:
        p = self.p.setdefault(batch, 1.0)
        self.seen[batch] = self.seen.get(batch, 0) + values.size
        v = values.astype(np.float32, copy=True)
        if p < 1.0:
            v = v[self.rng.random(v.size) < p]
        self._parts.setdefault(batch, []).append(v)
        self._held[batch] = self._held.get(batch, 0) + v.size
        if self._held[batch] > 2 * self.max_values:
            held = np.concatenate(self._parts[batch])
            new_p = p * self.max_values / held.size
            held = held[self.rng.random(held.size) < new_p / p]
            self._parts[batch], self._held[batch], self.p[batch] = [held], held.size, new_p

    @property
    def batches(self) -> list[str]:
        return list(self.p)

    def values(self, batch: str) -> np.ndarray:
        parts = self._parts.get(batch, [])
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def save(self, path: str | Path) -> None:
        names = self.batches
        with atomic_path(path) as tmp, Path(tmp).open("wb") as fh:
            np.savez(
                fh,
                batches=np.asarray(names, dtype=str),
                p=np.asarray([self.p[b] for b in names]),
                seen=np.asarray([self.seen[b] for b in names], dtype=np.int64),
                **{f"v{k}": self.values(b) for k, b in enumerate(names)},
            )

    def edges(self, n_bins: int) -> dict[str, np.ndarray]:
        """Per-batch quantile edges of the sampled values (exact while a batch has <= 2 x max_values)."""
        return {b: quantile_edges(self.values(b), n_bins) for b in self.batches}


def bin_per_batch(x: sp.csr_matrix, batches: np.ndarray, edges: dict[str, np.ndarray]) -> np.ndarray:
    """Bins for ``x.data`` (same order), each row binned with the edges of its batch."""
    names, codes = np.unique(np.asarray(batches).astype(str), return_inverse=True)
    if len(names) == 1:
        return digitize(x.data, edges[names[0]])
    out = np.zeros(x.nnz, dtype=np.uint8)
    code_of = np.repeat(codes.astype(np.int32), np.diff(x.indptr))
    for k, b in enumerate(names):
        sel = code_of == k
        out[sel] = digitize(x.data[sel], edges[b])
    return out


def bin_per_cell(x: sp.csr_matrix, n_bins: int) -> np.ndarray:
    """Bins for ``x.data`` from each cell's own empirical quantiles (scGPT's scheme), vectorised.

    A value's bin is ``1 + floor(F * (n_bins - 1))`` clipped to ``n_bins - 1``, with ``F`` its mid-rank
    fraction among the cell's non-zero values, so ties share a bin and the map is monotone within a cell.
    """
    n = np.diff(x.indptr)
    row = np.repeat(np.arange(x.shape[0]), n)
    order = np.lexsort((x.data, row))  # by row, then value
    v_sorted, r_sorted = x.data[order], row[order]
    pos = np.arange(x.nnz) - np.repeat(x.indptr[:-1], n)  # rank within row (of sorted values)
    # mid-rank over ties: first and last position of each (row, value) run
    new_run = np.ones(x.nnz, dtype=bool)
    new_run[1:] = (r_sorted[1:] != r_sorted[:-1]) | (v_sorted[1:] != v_sorted[:-1])
    run_id = np.cumsum(new_run) - 1
    first = pos[new_run]
    last = np.append(pos[np.flatnonzero(new_run)[1:] - 1], pos[-1] if x.nnz else 0)
    mid = (first[run_id] + last[run_id]) / 2.0
    frac = (mid + 0.5) / n[r_sorted]
    bins_sorted = np.minimum(1 + np.floor(frac * (n_bins - 1)), n_bins - 1).astype(np.uint8)
    out = np.empty(x.nnz, dtype=np.uint8)
    out[order] = bins_sorted
    return out
