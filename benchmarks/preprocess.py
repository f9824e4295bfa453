"""Preprocessing throughput: QC + gene mapping + per-batch binning + token store on a synthetic atlas.

Generates (untimed) a long-tailed count matrix, 1,000,000 cells x 2,000 real gene symbols, ~10% non-zero,
4 batches, written chunk by chunk to an .h5ad; then times Celler's streamed stages end to end in this process
(peak RSS measured by the OS), and in the same run a per-cell Python loop binning like scGPT's Preprocessor
(np.quantile + np.digitize per cell) on a subsample.

Targets (2-core machine): >= 20,000 cells/s end to end, <= 4 GB peak RSS, >= 10x the per-cell loop.
Usage: python benchmarks/preprocess.py [--cells 1000000] [--genes 2000] [--loop-cells 20000]
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
from _common import append_results

from celler.config import dataset_spec
from celler.data.binning import bin_per_batch, quantile_edges
from celler.data.tokens import TokenStore
from celler.data.vocab import Vocab
from celler.resources import default_vocab_path
from celler.stages import map_stage, qc_stage, tokenize_stage


def write_synthetic(path: Path, n_cells: int, n_genes: int, *, density=0.1, n_batches=4, seed=0, chunk=10_000):
    """Stream a long-tailed synthetic count matrix into an .h5ad without holding it in memory."""
    rng = np.random.default_rng(seed)
    vocab = Vocab.load(default_vocab_path())
    symbols = [t for t in vocab.tokens if t.isalnum() and not t.startswith("LINC")][: n_genes - 10]
    genes = symbols + [f"MT-ND{i}" for i in range(1, 11)]
    n_classes = 40
    sizes = 0.8 ** np.arange(n_classes)
    labels = rng.choice(n_classes, size=n_cells, p=sizes / sizes.sum())
    gene_rate = rng.gamma(0.6, 1.0, size=n_genes)  # long-tailed gene means
    class_boost = rng.gamma(1.0, 1.0, size=(n_classes, n_genes)) ** 2
    batch = rng.integers(0, n_batches, size=n_cells)
    batch_scale = 1.0 + 0.5 * np.arange(n_batches)  # depth differs per batch
    with h5py.File(path, "w") as f:
        x = f.create_group("X")
        x.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": (n_cells, n_genes)})
        data = x.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.float32, chunks=(1 << 20,))
        idx = x.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(1 << 20,))
        indptr = [np.zeros(1, np.int64)]
        for s in range(0, n_cells, chunk):
            e = min(s + chunk, n_cells)
            w = gene_rate[None, :] * class_boost[labels[s:e]]
            p = density * w / w.mean(axis=1, keepdims=True)
            mask = rng.random((e - s, n_genes)) < np.minimum(p, 0.9)
            r, c = np.nonzero(mask)
            vals = rng.geometric(1.0 / (1.0 + batch_scale[batch[s:e]][r] * w[r, c])).astype(np.float32)
            n0 = data.shape[0]
            data.resize((n0 + len(vals),))
            idx.resize((n0 + len(vals),))
            data[n0:] = vals
            idx[n0:] = c.astype(np.int32)
            indptr.append(n0 + np.cumsum(np.bincount(r, minlength=e - s)))
        x.create_dataset("indptr", data=np.concatenate(indptr))
        obs = pd.DataFrame({"celltype": pd.Categorical([f"type_{k}" for k in labels]),
                            "batch": pd.Categorical([f"b{k}" for k in batch])},
                           index=[f"cell_{i}" for i in range(n_cells)])
        ad.io.write_elem(f, "obs", obs)
        ad.io.write_elem(f, "var", pd.DataFrame(index=genes))
        f.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})


def per_cell_loop_binning(x, n_bins: int) -> float:
    """Binning as scGPT's Preprocessor does it: a Python loop over densified cells, per-cell quantiles,
    two digitize calls with a random choice between them on ties, an int64 output row. Returns seconds."""
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    for i in range(x.shape[0]):
        row = x[i].toarray().ravel()
        nz = row.nonzero()[0]
        binned = np.zeros_like(row, dtype=np.int64)
        if nz.size:
            values = row[nz]
            bins = np.quantile(values, np.linspace(0, 1, n_bins - 1))
            lo = np.digitize(values, bins, right=False)
            hi = np.digitize(values, bins, right=True)
            binned[nz] = np.where(lo == hi, lo, lo + (rng.random(values.size) * (hi - lo + 1)).astype(np.int64))
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=1_000_000)
    ap.add_argument("--genes", type=int, default=2000)
    ap.add_argument("--loop-cells", type=int, default=20_000)
    ap.add_argument("--chunk-size", type=int, default=50_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as tmp:
        tmp = Path(tmp)
        h5 = tmp / "atlas.h5ad"
        t = time.perf_counter()
        # generate in a child process so this process's peak RSS measures the pipeline alone
        ctx = multiprocessing.get_context("spawn")
        child = ctx.Process(target=write_synthetic, args=(h5, args.cells, args.genes))
        child.start()
        child.join()
        gen_s = time.perf_counter() - t
        spec = dataset_spec("atlas", {"inputs": [str(h5)], "label": "celltype", "batch": "batch",
                                      "qc": {"min_genes": 50, "max_pct_mito": 20, "min_cells": 3}})
        stage_s = {}
        t = time.perf_counter()
        qc_stage(spec, cells_out=tmp / "cells.tsv.gz", genes_out=tmp / "genes.tsv.gz",
                 summary_out=tmp / "summary.tsv", plot_out=tmp / "qc.png", chunk_size=args.chunk_size)
        stage_s["qc"] = time.perf_counter() - t
        t = time.perf_counter()
        map_stage(spec, genes_path=tmp / "genes.tsv.gz", vocab_path=default_vocab_path(),
                  mapping_out=tmp / "mapping.tsv.gz", report_out=tmp / "report.tsv", vocab_out=tmp / "vocab.json")
        stage_s["map genes"] = time.perf_counter() - t
        t = time.perf_counter()
        tokenize_stage(spec, cells_path=tmp / "cells.tsv.gz", genes_path=tmp / "genes.tsv.gz",
                       mapping_path=tmp / "mapping.tsv.gz", vocab_path=tmp / "vocab.json", out=tmp / "tokens",
                       n_bins=51, scheme="per_batch", normalize=True, chunk_size=args.chunk_size)
        stage_s["bin + token store"] = time.perf_counter() - t
        total = sum(stage_s.values())
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        store = TokenStore(tmp / "tokens")
        n_kept = len(store)
        nnz_per_cell = store.meta["n_tokens"] / n_kept

        # Same run: binning alone, vectorised vs a per-cell Python loop, on the same subsample.
        from celler.data.io import MatrixReader

        with MatrixReader(h5) as r:
            sub = r.rows(0, args.loop_cells)
        sub.data = np.log1p(sub.data)
        loop_s = per_cell_loop_binning(sub, 51)
        t = time.perf_counter()
        edges = {"b": quantile_edges(sub.data, 51)}
        bin_per_batch(sub, np.array(["b"] * sub.shape[0]), edges)
        vec_s = time.perf_counter() - t

    bin_rate = args.cells / stage_s["bin + token store"]
    rows = [
        ("synthetic atlas", f"{args.cells:,} cells x {args.genes:,} genes, {nnz_per_cell:.0f} non-zero/cell kept, "
                            f"4 batches (generation {gen_s:.0f} s, untimed)"),
        *[(f"stage: {k}", f"{v:.1f} s") for k, v in stage_s.items()],
        ("end to end (QC + mapping + binning + store)", f"{total:.1f} s = {args.cells / total:,.0f} cells/s "
                                                       f"(target >= 20,000)"),
        ("peak RSS of the pipeline process", f"{peak_gb:.2f} GB (target <= 4 GB)"),
        (f"per-cell loop binning ({args.loop_cells:,} cells)", f"{args.loop_cells / loop_s:,.0f} cells/s"),
        ("vectorised per-batch binning, same cells", f"{args.loop_cells / vec_s:,.0f} cells/s "
                                                     f"({loop_s / vec_s:.0f}x the loop)"),
        ("end to end vs the loop's binning alone", f"{(args.cells / total) / (args.loop_cells / loop_s):.1f}x "
                                                   f"(target >= 10x)"),
        ("binning stage (edges + bins + store) vs the loop", f"{bin_rate / (args.loop_cells / loop_s):.1f}x"),
    ]
    table = "| what | figure |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)
    append_results("Preprocessing throughput (benchmarks/preprocess.py)", table)


if __name__ == "__main__":
    main()
