"""The on-disk token store: every cell as its non-zero (gene token, value bin) pairs, readable at random.

Layout of a store directory (flat binary arrays, memory-mapped on read)::

    genes.bin    int32  token ids, cell after cell (sorted within a cell)
    bins.bin     uint8  value bins 1..n_bins-1, aligned with genes.bin
    offsets.bin  int64  n_cells + 1 offsets into the two arrays
    cells.tsv.gz        one row per cell: cell, dataset, batch, split, label, parent, n_tokens
    bin_edges.json      per-batch quantile edges (per_batch binning)
    vocab.json          the vocabulary the ids refer to (a copy, so an extended vocabulary travels along)
    meta.json           format version, counts, binning scheme, dtypes

Reading cell ``i`` is two slices of two memory maps: O(1), no decompression, no index to load, and any
number of stores (shards, datasets) can be read together by offsetting indices (:class:`ConcatStore`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from celler.config import DatasetSpec
from celler.data.binning import ValueSample, bin_per_batch, bin_per_cell, digitize
from celler.data.io import atomic_path
from celler.data.prepare import iter_chunks, normalised_log
from celler.data.vocab import GeneMapping
from celler.errors import CellerError

FORMAT_VERSION = 1


class TokenStoreWriter:
    """Appends cells chunk by chunk; ``close`` writes offsets and metadata."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._genes = (self.path / "genes.bin").open("wb")
        self._bins = (self.path / "bins.bin").open("wb")
        self._offsets = [0]
        self._cells: list[pd.DataFrame] = []

    def append(self, indptr: np.ndarray, token_ids: np.ndarray, bins: np.ndarray, cells: pd.DataFrame) -> None:
        self._genes.write(np.ascontiguousarray(token_ids, dtype=np.int32).tobytes())
        self._bins.write(np.ascontiguousarray(bins, dtype=np.uint8).tobytes())
        base = self._offsets[-1]
        self._offsets.extend((base + indptr[1:]).tolist())
        self._cells.append(cells)

    def bin_spooled(self, values_path: Path, edges: dict[str, np.ndarray], chunk_tokens: int = 20_000_000) -> None:
        """Write bins.bin from spooled float32 values, each cell with its batch's edges; deletes the spool."""
        self._bins.close()
        offsets = np.asarray(self._offsets, dtype=np.int64)
        n = int(offsets[-1])
        names, codes = _batch_codes(pd.concat([c["batch"] for c in self._cells]).to_numpy() if self._cells
                                    else np.zeros(0, str))
        values = np.memmap(values_path, dtype=np.float32, mode="r", shape=(n,)) if n else np.zeros(0, np.float32)
        with (self.path / "bins.bin").open("wb") as out:
            start_cell = 0
            while start_cell < len(offsets) - 1:  # whole cells, about chunk_tokens values at a time
                stop_cell = max(int(np.searchsorted(offsets, offsets[start_cell] + chunk_tokens, side="right")) - 1,
                                start_cell + 1)
                stop_cell = min(stop_cell, len(offsets) - 1)
                a, b = offsets[start_cell], offsets[stop_cell]
                v = np.asarray(values[a:b])
                code_of = np.repeat(codes[start_cell:stop_cell], np.diff(offsets[start_cell:stop_cell + 1]))
                bins = np.empty(b - a, np.uint8)
                for k, name in enumerate(names):
                    sel = code_of == k
                    bins[sel] = digitize(v[sel], edges[name])
                out.write(bins.tobytes())
                start_cell = stop_cell
        del values
        Path(values_path).unlink()

    def close(self, meta: dict, edges: dict[str, list[float]], vocab) -> None:
        self._genes.close()
        if not self._bins.closed:
            self._bins.close()
        offsets = np.asarray(self._offsets, dtype=np.int64)
        offsets.tofile(self.path / "offsets.bin")
        cells = pd.concat(self._cells) if self._cells else pd.DataFrame()
        cells["n_tokens"] = np.diff(offsets)
        cells.to_csv(self.path / "cells.tsv.gz", sep="\t", compression={"method": "gzip", "compresslevel": 1})
        (self.path / "bin_edges.json").write_text(json.dumps(edges))
        vocab.save(self.path / "vocab.json")
        meta = {**meta, "format_version": FORMAT_VERSION, "n_cells": len(offsets) - 1,
                "n_tokens": int(offsets[-1]), "vocab_size": len(vocab),
                "pad_id": vocab.pad_id, "cls_id": vocab.cls_id}
        (self.path / "meta.json").write_text(json.dumps(meta, indent=1))


class TokenStore:
    """Random access to a token store: ``store[i] -> (token_ids int32, bins uint8)``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.exists():
            msg = f"{self.path}: not a token store (no meta.json); run the tokenize step first"
            raise CellerError(msg)
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format_version") != FORMAT_VERSION:
            msg = (f"{self.path}: token store format {self.meta.get('format_version')} is not the supported "
                   f"{FORMAT_VERSION}; re-run tokenisation with this Celler version")
            raise CellerError(msg)
        self.offsets = np.fromfile(self.path / "offsets.bin", dtype=np.int64)
        n = int(self.offsets[-1])
        self.genes = np.memmap(self.path / "genes.bin", dtype=np.int32, mode="r", shape=(n,)) if n else np.zeros(0, np.int32)
        self.bins = np.memmap(self.path / "bins.bin", dtype=np.uint8, mode="r", shape=(n,)) if n else np.zeros(0, np.uint8)
        self._cells = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.offsets[i], self.offsets[i + 1]
        return np.asarray(self.genes[a:b]), np.asarray(self.bins[a:b])

    @property
    def lengths(self) -> np.ndarray:
        """Number of non-zero tokens per cell (without ``<cls>``)."""
        return np.diff(self.offsets)

    @property
    def cells(self) -> pd.DataFrame:
        if self._cells is None:
            self._cells = pd.read_csv(self.path / "cells.tsv.gz", sep="\t", index_col=0, dtype={"label": str})
        return self._cells

    @property
    def n_bins(self) -> int:
        return int(self.meta["n_bins"])

    def vocab(self):
        from celler.data.vocab import Vocab

        return Vocab.load(self.path / "vocab.json")

    def distinct_tokens(self, chunk_tokens: int = 50_000_000) -> np.ndarray:
        """Sorted distinct token ids in the store: the genes a model trained on it has seen."""
        seen = np.zeros(int(self.meta["vocab_size"]), bool)
        for a in range(0, len(self.genes), chunk_tokens):
            seen[np.asarray(self.genes[a:a + chunk_tokens])] = True
        return np.flatnonzero(seen)

    def bin_edges(self) -> dict[str, np.ndarray]:
        return read_edges(self.path / "bin_edges.json")


def read_edges(path) -> dict[str, np.ndarray]:
    """Per-batch bin edges from a ``bin_edges.json`` (a store's, or the shared edges of a sharded dataset)."""
    return {b: np.asarray(e) for b, e in json.loads(Path(path).read_text()).items()}


class ConcatStore:
    """Several stores (shards, datasets) read as one, without copying; they must share vocabulary and bins."""

    def __init__(self, stores: list[TokenStore]):
        if not stores:
            msg = "ConcatStore needs at least one token store"
            raise CellerError(msg)
        first = stores[0].meta
        for s in stores[1:]:
            if s.meta["n_bins"] != first["n_bins"] or s.meta["vocab_size"] != first["vocab_size"]:
                msg = f"{s.path}: n_bins / vocabulary differ from {stores[0].path}; they cannot be read together"
                raise CellerError(msg)
        self.stores = stores
        self.meta = first
        self._starts = np.cumsum([0] + [len(s) for s in stores])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, i: int):
        k = int(np.searchsorted(self._starts, i, side="right") - 1)
        return self.stores[k][i - self._starts[k]]

    @property
    def lengths(self) -> np.ndarray:
        return np.concatenate([s.lengths for s in self.stores])

    @property
    def cells(self) -> pd.DataFrame:
        return pd.concat([s.cells for s in self.stores])

    @property
    def n_bins(self) -> int:
        return int(self.meta["n_bins"])

    def vocab(self):
        return self.stores[0].vocab()


def _batch_codes(batches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    names, codes = np.unique(np.asarray(batches).astype(str), return_inverse=True)
    return names, codes


def tokenize(
    spec: DatasetSpec,
    cells: pd.DataFrame,
    genes: pd.DataFrame,
    mapping: GeneMapping,
    out: str | Path,
    *,
    n_bins: int = 51,
    scheme: str = "per_batch",
    normalize: bool = True,
    edges: dict[str, np.ndarray] | None = None,
    chunk_size: int = 20_000,
    max_edge_values: int = 20_000_000,
    seed: int = 0,
    row_range: tuple[int, int] | None = None,
) -> Path:
    """Bin and write the kept cells of ``spec`` as a token store at ``out`` (atomically).

    Values are log1p(counts per 10,000) for count input when ``normalize`` (log input is used as is), then
    binned with ``scheme`` ('per_batch' quantile edges over each batch's non-zero values, or 'per_cell').
    The input is read once: per-batch values are spooled to a temporary float32 file while their edges are
    estimated, then binned from that file; given ``edges`` (e.g. shared by the shards of one atlas) bins are
    written directly. Memory is bounded by ``chunk_size``. ``row_range=(start, stop)`` tokenises only those
    input rows (one shard; see :mod:`celler.data.shards`).
    """
    if scheme not in ("per_batch", "per_cell"):
        msg = f"binning scheme must be 'per_batch' or 'per_cell', got {scheme!r}"
        raise CellerError(msg)
    if not 3 <= n_bins <= 256:
        msg = f"n_bins must be between 3 and 256 (bins are stored as uint8), got {n_bins}"
        raise CellerError(msg)
    from celler.data.prepare import token_columns

    columns = token_columns(mapping, genes)
    spool = scheme == "per_batch" and edges is None
    sampler = ValueSample(max_values=max_edge_values, seed=seed) if spool else None
    with atomic_path(out) as tmp:
        writer = TokenStoreWriter(tmp)
        spool_file = (tmp / "values.f32").open("wb") if spool else None
        with tqdm(total=int(cells["kept"].sum()), desc=f"{spec.name}: tokenize", unit="cell", mininterval=5) as bar:
            chunks = iter_chunks(spec, cells, genes, mapping, chunk_size=chunk_size, row_range=row_range)
            for chunk in chunks:
                x = normalised_log(chunk) if normalize else chunk.x
                batches = chunk.cells["batch"].astype(str).to_numpy()
                if spool:
                    sampler.add_rows(x, batches)
                    spool_file.write(np.ascontiguousarray(x.data, dtype=np.float32).tobytes())
                    bins = np.zeros(0, np.uint8)  # written after the pass, once the edges are known
                elif scheme == "per_batch":
                    bins = bin_per_batch(x, batches, edges)
                else:
                    bins = bin_per_cell(x, n_bins)
                table = pd.DataFrame({
                    "dataset": spec.name,
                    "batch": batches,
                    "split": chunk.cells["split"].to_numpy(),
                    "label": chunk.cells["label"].to_numpy(),
                    "parent": chunk.cells["parent"].to_numpy(),
                }, index=chunk.cells.index)
                writer.append(x.indptr, columns[x.indices], bins, table)
                bar.update(x.shape[0])
        if spool:
            spool_file.close()
            edges = sampler.edges(n_bins)
            writer.bin_spooled(tmp / "values.f32", edges)
        writer.close(
            {"dataset": spec.name, "n_bins": n_bins, "binning": scheme, "normalize": normalize,
             "input_kind": str(cells.loc[cells["kept"], "kind"].iloc[0])},
            {b: np.asarray(e).tolist() for b, e in (edges or {}).items()},
            mapping.vocab,
        )
    return Path(out)
