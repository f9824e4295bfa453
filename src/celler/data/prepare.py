"""Stream a dataset's inputs as QC-filtered, vocabulary-mapped chunks: the one reader the later stages share.

Each chunk is a CSR matrix over the dataset's distinct tokens (duplicate genes summed onto one token), plus
the matching rows of the QC cell table. Tokenisation bins these values; the expression export writes them as
log-normalised AnnData for baselines and plots.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from celler.config import DatasetSpec
from celler.data.io import MatrixReader
from celler.data.vocab import GeneMapping, merge_matrix


@dataclass
class Chunk:
    cells: pd.DataFrame  # QC table rows of the kept cells in this chunk
    x: sp.csr_matrix  # cells x tokens, raw values as in the input (counts or log), duplicates summed
    library_size: np.ndarray  # per cell, sum over all input genes (for normalisation)
    kind: str  # 'counts' or 'log'


def token_columns(mapping: GeneMapping, genes: pd.DataFrame) -> np.ndarray:
    """The distinct token ids (sorted) of the genes that passed QC and mapped: the dataset's columns."""
    t = mapping.table.set_index("gene")
    kept = genes.index[genes["kept"]]
    ids = t.loc[kept, "token_id"].to_numpy() if len(kept) else np.zeros(0, int)
    return np.unique(ids[ids >= 0])


def iter_chunks(
    spec: DatasetSpec,
    cells: pd.DataFrame,
    genes: pd.DataFrame,
    mapping: GeneMapping,
    *,
    chunk_size: int = 20_000,
    row_range: tuple[int, int] | None = None,
) -> Iterator[Chunk]:
    """Yield :class:`Chunk` s over every input of ``spec`` in file order, kept cells only.

    ``row_range=(start, stop)`` reads only those input rows, counted over the inputs in order (one shard).
    """
    columns = token_columns(mapping, genes)
    col_of_token = pd.Series(np.arange(len(columns)), index=columns)
    gene_ok = genes["kept"]
    token_of_gene = mapping.table.set_index("gene")["token_id"]
    offset = 0
    for infile in spec.inputs:
        with MatrixReader(infile.path, spec.matrix) as reader:
            lo, hi = (0, reader.n_cells) if row_range is None else (
                max(row_range[0] - offset, 0), min(row_range[1] - offset, reader.n_cells))
            offset += reader.n_cells
            if lo >= hi:
                continue
            var = reader.var.index.astype(str)
            tok = token_of_gene.reindex(var).fillna(-1).astype(np.int64).to_numpy()
            tok[~gene_ok.reindex(var, fill_value=False).to_numpy(dtype=bool)] = -1
            col = np.where(tok >= 0, col_of_token.reindex(tok).fillna(-1).to_numpy(np.int64), -1)
            merge, used = merge_matrix(col)
            expand = sp.csr_matrix(
                (np.ones(len(used), np.float32), (np.arange(len(used)), used)), shape=(len(used), len(columns))
            )
            project = (merge @ expand).tocsr()  # input genes -> dataset token columns
            table = cells.reindex(reader.obs.index[lo:hi].astype(str))  # this range's rows only (one shard)
            kept = table["kept"].to_numpy(dtype=bool)
            for start in range(lo, hi, chunk_size):
                x = reader.rows(start, min(start + chunk_size, hi))
                rows = kept[start - lo:start - lo + x.shape[0]]
                if not rows.any():
                    continue
                x = x[rows]
                out = (x @ project).tocsr()
                out.sort_indices()
                out.eliminate_zeros()
                yield Chunk(
                    cells=table.iloc[start - lo:start - lo + len(rows)][rows],
                    x=out,
                    library_size=np.asarray(x.sum(axis=1)).ravel(),
                    kind=str(table["kind"].iloc[start - lo]),
                )


def normalised_log(chunk: Chunk, *, target_sum: float = 1e4, renormalise: bool = False) -> sp.csr_matrix:
    """log1p of counts scaled to ``target_sum`` per cell.

    Counts are scaled by their library size over all input genes (or over the kept tokens with
    ``renormalise``); log input is left as is, or brought back with expm1 and re-normalised over the kept
    tokens when ``renormalise`` (what CellTypist-style classifiers expect).
    """
    x = chunk.x.astype(np.float32, copy=True)
    if chunk.kind == "log":
        if not renormalise:
            return x
        x.data = np.expm1(x.data)
        lib = np.asarray(x.sum(axis=1)).ravel()
    else:
        lib = np.asarray(x.sum(axis=1)).ravel() if renormalise else chunk.library_size
    scale = np.divide(target_sum, lib, out=np.zeros_like(lib, dtype=np.float64), where=lib > 0)
    x.data *= np.repeat(scale, np.diff(x.indptr)).astype(np.float32)
    np.log1p(x.data, out=x.data)
    return x


def export_expression(spec: DatasetSpec, cells, genes, mapping, *, chunk_size: int = 20_000) -> ad.AnnData:
    """The kept cells x kept tokens as log1p(counts per 10,000), with labels, batch and split in ``obs``.

    For baselines, marker plots and the report: small labelled datasets, held in memory. Where the input holds
    counts, ``layers["counts"]`` keeps them (the kept genes' raw counts: what scVI / scANVI read).
    """
    parts, raw, obs = [], [], []
    for chunk in iter_chunks(spec, cells, genes, mapping, chunk_size=chunk_size):
        parts.append(normalised_log(chunk, renormalise=True))
        raw.append(chunk.x if chunk.kind == "counts" else None)
        obs.append(chunk.cells)
    columns = token_columns(mapping, genes)
    obs = pd.concat(obs)
    out = ad.AnnData(
        X=sp.vstack(parts).tocsr() if parts else sp.csr_matrix((0, len(columns)), dtype=np.float32),
        obs=pd.DataFrame({
            "celler_label": obs["label"].astype(str) if spec.labelled else "unlabelled",
            "celler_batch": obs["batch"].astype(str),
            "celler_split": obs["split"].astype(str),
        }, index=obs.index),
        var=pd.DataFrame({"token_id": columns}, index=[mapping.vocab.tokens[t] for t in columns]),
    )
    if raw and all(r is not None for r in raw):
        out.layers["counts"] = sp.vstack(raw).tocsr().astype(np.float32)
    if spec.parent_label:
        out.obs["celler_parent"] = obs["parent"].astype(str).to_numpy()
    out.uns["celler"] = {"dataset": spec.name, "X": "log1p(counts per 10,000 over the kept genes)"}
    return out
