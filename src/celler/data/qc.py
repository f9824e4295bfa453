"""Quality control, streamed in row chunks: per-cell metrics, filters, and the reasons cells were removed.

QC never rewrites the expression matrix: it writes a cell table (kept or the reason for removal, metrics,
label, batch, split) and a gene table; tokenisation then reads the input with those masks applied. That
keeps memory bounded by the chunk size at any atlas size.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import scipy.sparse as sp

from celler.config import DatasetSpec
from celler.data.io import MatrixReader
from celler.data.splits import assign_split
from celler.errors import CellerError

log = logging.getLogger(__name__)

REASONS = ("dropped label", "missing label", "min_genes", "min_counts", "max_pct_mito")


def detect_kind(data: np.ndarray, *, source: str = "input") -> str:
    """'counts' when the sampled non-zero values are all whole numbers, else 'log' (log-normalised).

    Counts carrying float noise (every value within ``COUNT_NOISE`` of a whole number >= 1, e.g. after a
    float32 round trip) are counts too, with a warning naming ``source``.
    """
    sample = np.asarray(data[: 200_000], dtype=np.float64)
    if sample.size == 0:
        return "counts"
    whole = np.rint(sample)
    if np.array_equal(sample, whole):
        return "counts"
    off = np.abs(sample - whole)
    if (whole >= 1).any() and off.max() <= COUNT_NOISE:  # noise on zeros too (whole 0) leaves counts counts
        log.warning("%s: values are whole numbers plus float noise (up to %.2g): treated as raw counts; "
                    "round them to silence this warning, or pass log-normalised values if not counts",
                    source, off.max())
        return "counts"
    return "log"


COUNT_NOISE = 0.01


def _input_genes(readers: list[MatrixReader], how: str) -> pd.Index:
    """The dataset's gene names (each once: a name repeated in a file is one gene, its columns summed)."""
    genes = []
    for r in readers:
        names = r.var.index.astype(str)
        if not names.is_unique:
            dup = names[names.duplicated()]
            log.warning("%s: %d duplicate gene names (e.g. %s); their columns are summed into one gene",
                        r.path, len(dup), ", ".join(dup[:3]))
        genes.append(names.unique())
    out = genes[0]
    for g in genes[1:]:
        out = out.intersection(g, sort=False) if how == "intersect" else out.union(g, sort=False)
    return out


def run_qc(spec: DatasetSpec, *, chunk_size: int = 20_000) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Compute QC for every input of ``spec``.

    Returns ``(cells, genes, summary)``: ``cells`` is indexed by cell name with columns ``input``, ``kind``
    ('counts'/'log'), ``n_genes``, ``total``, ``pct_mito``, ``label``, ``parent``, ``batch``, ``split``,
    ``kept`` and ``reason``; ``genes`` is indexed by gene with ``n_cells`` (over kept cells) and ``kept``;
    ``summary`` counts the cells removed per reason.
    """
    readers = [MatrixReader(f.path, spec.matrix) for f in spec.inputs]
    try:
        genes = _input_genes(readers, spec.genes)
        if len(genes) == 0:
            msg = f"{spec.files}: the input files share no gene names; check the inputs or set genes: union"
            raise CellerError(msg)
        tables = [_cell_metrics(r, f, spec, chunk_size) for r, f in zip(readers, spec.inputs, strict=True)]
        cells = pd.concat(tables)
        if not cells.index.is_unique:
            dup = cells.index[cells.index.duplicated()][0]
            msg = f"{spec.files}: cell name {dup!r} occurs in more than one of these files; make names unique"
            raise CellerError(msg)
        _apply_filters(cells, spec)
        if not cells["kept"].any():
            worst = cells["reason"].value_counts().idxmax()
            msg = (f"{spec.files}: no cells left after QC (most removed by {worst!r}); "
                   "relax the qc thresholds or check drop_labels")
            raise CellerError(msg)
        n_cells = pd.Series(0, index=genes, dtype=np.int64)
        for r in readers:
            n_cells += _gene_counts(r, genes, cells["kept"], chunk_size)
    finally:
        for r in readers:
            r.close()
    gene_table = pd.DataFrame({"n_cells": n_cells, "kept": n_cells >= max(spec.qc.min_cells, 1)})
    gene_table.index.name = "gene"
    kept = cells[cells["kept"]]
    cells["split"] = "excluded"
    cells.loc[kept.index, "split"] = assign_split(kept, spec.split, source=spec.files)
    summary = qc_summary(cells, gene_table)
    return cells, gene_table, summary


def _cell_metrics(reader: MatrixReader, infile, spec: DatasetSpec, chunk_size: int) -> pd.DataFrame:
    obs = reader.obs
    columns = {"label": spec.label, "parent_label": spec.parent_label, "batch": spec.batch}
    for key, col in columns.items():
        if col and col not in obs.columns:
            have = ", ".join(map(str, obs.columns)) or "none"
            msg = f"{reader.path}: obs column {col!r} (config key {key!r}) not found; available: {have}"
            raise CellerError(msg)
    if spec.split.get("by") == "column" and spec.split["column"] not in obs.columns:
        msg = f"{reader.path}: split column {spec.split['column']!r} not found in obs"
        raise CellerError(msg)
    mito = np.asarray(reader.var.index.astype(str).str.upper().str.startswith("MT-"))
    n_genes = np.zeros(reader.n_cells, np.int64)
    total = np.zeros(reader.n_cells, np.float64)
    mito_total = np.zeros(reader.n_cells, np.float64)
    kind = None
    for start, x in reader.chunks(chunk_size):
        kind = kind or (detect_kind(x.data, source=str(reader.path)) if x.nnz else None)
        stop = start + x.shape[0]
        n_genes[start:stop] = np.diff(x.indptr)
        total[start:stop] = np.asarray(x.sum(axis=1)).ravel()
        mito_total[start:stop] = x @ mito.astype(np.float32) if mito.any() else 0.0
    if kind is None:
        msg = (f"{reader.path}: the expression matrix ({spec.matrix}) is all zeros; check the file or choose "
               "another matrix")
        raise CellerError(msg)
    log.info("%s: values look like %s", reader.path, "raw counts" if kind == "counts" else "log-normalised data")
    df = pd.DataFrame(index=obs.index.astype(str))
    df.index.name = "cell"
    df["input"] = str(reader.path)
    df["kind"] = kind
    df["n_genes"] = n_genes
    df["total"] = total
    df["pct_mito"] = np.divide(100 * mito_total, total, out=np.zeros_like(total), where=total > 0)
    df["label"] = _labels(obs, spec.label, reader.path) if spec.label else None
    df["parent"] = obs[spec.parent_label].astype(object).to_numpy() if spec.parent_label else None
    df["batch"] = obs[spec.batch].astype(str).to_numpy() if spec.batch else spec.name
    df["input_split"] = infile.split
    if spec.split.get("by") == "column":
        df[spec.split["column"]] = obs[spec.split["column"]].astype(str).to_numpy()
    return df


def _labels(obs: pd.DataFrame, column: str, path) -> np.ndarray:
    """The label column as objects, empty / blank strings as missing; an error when no cell has a label."""
    labels = obs[column].astype(object)
    labels = labels.where(~labels.astype(str).str.strip().isin(["", "nan"]) & labels.notna(), None)
    if labels.isna().all():
        msg = (f"{path}: obs column {column!r} (config key 'label') is empty for every cell; choose the column "
               "with the cell types")
        raise CellerError(msg)
    return labels.to_numpy()


def _apply_filters(cells: pd.DataFrame, spec: DatasetSpec) -> None:
    """Set ``reason`` to the first failed filter (in the order of ``REASONS``) and ``kept``."""
    q = spec.qc
    counts = cells["kind"] == "counts"  # count thresholds mean nothing on log values
    checks = [
        ("dropped label", cells["label"].astype(str).isin(spec.drop_labels) if spec.labelled else None),
        ("missing label", cells["label"].isna() | (cells["label"].astype(str) == "nan") if spec.labelled else None),
        ("min_genes", cells["n_genes"] < q.min_genes),
        ("min_counts", counts & (cells["total"] < q.min_counts)),
        ("max_pct_mito", counts & (cells["pct_mito"] > q.max_pct_mito)),
    ]
    reason = pd.Series("", index=cells.index, dtype=object)
    for name, fail in checks:
        if fail is not None:
            reason[(reason == "") & fail.to_numpy()] = name
    cells["reason"] = reason
    cells["kept"] = reason == ""


def _gene_counts(reader: MatrixReader, genes: pd.Index, kept: pd.Series, chunk_size: int) -> pd.Series:
    """Kept cells in which each of ``genes`` is detected (columns of a repeated gene name summed first)."""
    pos = genes.get_indexer(reader.var.index.astype(str))
    cols = np.flatnonzero(pos >= 0)
    to_gene = sp.csr_matrix((np.ones(len(cols), np.float32), (cols, pos[cols])),
                            shape=(reader.shape[1], len(genes)))
    keep_rows = kept.reindex(reader.obs.index.astype(str)).to_numpy(dtype=bool)
    n_cells = np.zeros(len(genes), np.int64)
    for start, x in reader.chunks(chunk_size):
        y = (x[keep_rows[start:start + x.shape[0]]] @ to_gene).tocsr()
        y.eliminate_zeros()
        n_cells += np.bincount(y.indices, minlength=len(genes))
    return pd.Series(n_cells, index=genes)


def qc_summary(cells: pd.DataFrame, genes: pd.DataFrame) -> pd.DataFrame:
    """One row per step: cells (or genes) removed and left."""
    rows = [{"step": "input cells", "removed": 0, "left": len(cells)}]
    left = len(cells)
    for r in REASONS:
        n = int((cells["reason"] == r).sum())
        left -= n
        rows.append({"step": f"cells: {r}", "removed": n, "left": left})
    rows.append({"step": "genes: min_cells", "removed": int((~genes["kept"]).sum()), "left": int(genes["kept"].sum())})
    for s in ("train", "test"):
        rows.append({"step": f"split: {s}", "removed": 0, "left": int((cells["split"] == s).sum())})
    return pd.DataFrame(rows)


def read_cells(cells_path) -> pd.DataFrame:
    """The QC cell table (index: cell names as strings)."""
    cells = pd.read_csv(cells_path, sep="\t", index_col=0, dtype={"label": object, "parent": object, "batch": str})
    cells.index = cells.index.astype(str)
    return cells


def read_qc(cells_path, genes_path) -> tuple[pd.DataFrame, pd.DataFrame]:
    cells = read_cells(cells_path)
    genes = pd.read_csv(genes_path, sep="\t", index_col=0)
    genes.index = genes.index.astype(str)
    return cells, genes
