"""Sharded tokenisation: a large dataset as bounded-memory jobs whose stores equal one unsharded store.

A shard is a run of consecutive rows of one input file holding at most ``cells_per_shard`` kept cells (one
shard per input file without a limit). QC and gene mapping stay one streamed job per dataset (they need the
whole dataset: splits, gene detection counts); after them the work splits:

1. :func:`plan_shards` cuts the QC cell table into shards (the workflow's ``shard_plan`` checkpoint, which
   also writes each shard's rows of the cell table, so no shard job reads the whole table);
2. :func:`sample_shard` streams one shard and keeps a uniform random sample of each batch's non-zero values
   (all of them up to ``2 * max_values`` per batch, as unsharded tokenisation does);
3. :func:`merge_samples` merges the shards' samples into one set of per-batch quantile edges: the same
   edges as an unsharded pass while every batch has at most ``2 * max_values`` non-zero values (exact
   quantiles of the same values), from an equally valid uniform subsample beyond that;
4. :func:`tokenize_shard` bins one shard with those shared edges into its own token store.

The shards' stores, read together with :class:`celler.data.tokens.ConcatStore` (pretraining does this when given
several stores), hold the same cells in the same order with the same tokens as one unsharded store.
Steps 2 and 4 read only their shard; step 3 reads the samples batch by batch. :func:`tokenize_sharded` runs
all four in one process. ``python -m celler.data.shards {plan,sample,edges,tokenize}`` are the workflow's entry
points (workflow/rules/shards.smk).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from celler.config import DatasetSpec
from celler.data.binning import ValueSample, quantile_edges
from celler.data.io import atomic_path
from celler.data.qc import read_cells
from celler.data.tokens import read_edges
from celler.errors import CellerError

log = logging.getLogger(__name__)

PLAN_COLUMNS = ["shard", "input", "path", "start", "stop", "first", "n_kept"]


# --- 1. plan ------------------------------------------------------------------------------------------------


def plan_shards(cells: pd.DataFrame, spec: DatasetSpec, cells_per_shard: int | None = None) -> pd.DataFrame:
    """The shards of a dataset, one row each.

    ``cells`` is the QC cell table (every input row, in input order, with ``input`` and ``kept``). Columns:
    ``shard`` (name, e.g. ``0003``), ``input`` (index into ``spec.inputs``), ``path``, ``start`` / ``stop``
    (row range within that file), ``first`` (position of ``start`` in the cell table) and ``n_kept``. Files
    without kept cells get no shard.
    """
    if cells_per_shard is not None and cells_per_shard < 1:
        msg = f"{spec.name}: shards.cells_per_shard must be at least 1, got {cells_per_shard}"
        raise CellerError(msg)
    files = cells["input"].astype(str).to_numpy()
    kept_all = cells["kept"].to_numpy(dtype=bool)
    bounds = (
        np.r_[0, np.flatnonzero(files[1:] != files[:-1]) + 1, len(files)] if len(files) else np.zeros(1, int)
    )
    runs = [(str(files[a]), int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    rows = []
    for i, infile in enumerate(spec.inputs):
        if not runs or runs[0][0] != str(infile.path):
            continue  # a file with no cells
        _, first, end = runs.pop(0)
        kept = np.flatnonzero(kept_all[first:end])
        step = cells_per_shard or max(len(kept), 1)
        starts = [0, *kept[step::step].tolist()] if len(kept) else []
        for a, b in zip(starts, [*starts[1:], end - first], strict=True):
            rows.append(
                {
                    "input": i,
                    "path": str(infile.path),
                    "start": a,
                    "stop": b,
                    "first": first + a,
                    "n_kept": int(kept_all[first + a : first + b].sum()),
                }
            )
    if runs:
        msg = (
            f"{spec.name}: the QC cell table has rows of {runs[0][0]} out of the configured input order; "
            "re-run QC"
        )
        raise CellerError(msg)
    plan = pd.DataFrame(rows, columns=PLAN_COLUMNS[1:])
    width = max(4, len(str(max(len(plan) - 1, 0))))
    plan.insert(0, "shard", [f"{k:0{width}d}" for k in range(len(plan))])
    return plan


def shard_cells(cells: pd.DataFrame, row: pd.Series) -> pd.DataFrame:
    """The QC cell-table rows of one shard."""
    return cells.iloc[int(row["first"]) : int(row["first"]) + int(row["stop"]) - int(row["start"])]


def shard_spec(spec: DatasetSpec, row: pd.Series) -> DatasetSpec:
    """``spec`` reduced to the shard's input file (same name, so the store says which dataset it holds)."""
    return replace(spec, inputs=(spec.inputs[int(row["input"])],))


# --- 2. per-shard value samples -----------------------------------------------------------------------------


class SavedSample:
    """A :class:`ValueSample` written by ``save``: metadata now, each batch's values when asked."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with np.load(self.path) as z:
            names = [str(b) for b in z["batches"]]
            self.p = dict(zip(names, z["p"].tolist(), strict=True))
            self.seen = dict(zip(names, z["seen"].tolist(), strict=True))
        self._key = {b: f"v{k}" for k, b in enumerate(names)}

    @property
    def batches(self) -> list[str]:
        return list(self.p)

    def values(self, batch: str) -> np.ndarray:
        with np.load(self.path) as z:
            return z[self._key[batch]]


def sample_shard(
    spec: DatasetSpec,
    row: pd.Series,
    cells: pd.DataFrame,
    genes: pd.DataFrame,
    mapping,
    *,
    normalize: bool = True,
    chunk_size: int = 20_000,
    max_values: int = 20_000_000,
    seed: int = 0,
) -> ValueSample:
    """Stream one shard (``cells``: its rows of the QC table, or the whole table) into a :class:`ValueSample`
    of the values tokenisation bins: log1p(counts per 10,000) for counts when ``normalize``, else as input."""
    from celler.data.prepare import iter_chunks, normalised_log

    sample = ValueSample(max_values=max_values, seed=seed + int(row["first"]))
    for chunk in iter_chunks(
        shard_spec(spec, row),
        cells,
        genes,
        mapping,
        chunk_size=chunk_size,
        row_range=(int(row["start"]), int(row["stop"])),
    ):
        sample.add_rows(normalised_log(chunk) if normalize else chunk.x, chunk.cells["batch"].to_numpy())
    return sample


# --- 3. shared edges ----------------------------------------------------------------------------------------


def merge_samples(
    samples: Iterable[ValueSample | SavedSample], n_bins: int, *, max_values: int = 20_000_000, seed: int = 0
) -> dict[str, np.ndarray]:
    """Per-batch quantile edges from the shards' samples (a batch may span shards).

    While a batch's values were all held (``p == 1``) and number at most ``2 * max_values``, the edges are the
    exact quantiles of all its values: those of unsharded tokenisation. Beyond that each shard's sample is
    thinned to one common inclusion probability (at most ``max_values / seen``), giving a uniform sample.
    Loads one batch at a time.
    """
    samples = list(samples)
    rng = np.random.default_rng(seed)
    order = list(dict.fromkeys(b for s in samples for b in s.batches))  # first seen, in shard order
    edges = {}
    for b in order:
        have = [s for s in samples if b in s.p]
        seen = sum(s.seen[b] for s in have)
        exact = all(s.p[b] == 1.0 for s in have) and seen <= 2 * max_values
        q = 1.0 if exact else min(min(s.p[b] for s in have), max_values / max(seen, 1))
        parts = []
        for s in have:
            v = s.values(b)
            if q < s.p[b]:
                v = v[rng.random(v.size) < q / s.p[b]]
            parts.append(v)
        edges[b] = quantile_edges(np.concatenate(parts) if parts else np.zeros(0, np.float32), n_bins)
        if not exact:
            log.info(
                "batch %s: edges from a uniform sample of %d of its %d values", b, sum(map(len, parts)), seen
            )
    return edges


def write_edges(edges: dict[str, np.ndarray], path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({b: np.asarray(e).tolist() for b, e in edges.items()}))


# --- 4. per-shard stores ------------------------------------------------------------------------------------


def tokenize_shard(
    spec: DatasetSpec,
    row: pd.Series,
    cells: pd.DataFrame,
    genes: pd.DataFrame,
    mapping,
    out: str | Path,
    *,
    edges: dict[str, np.ndarray] | None,
    n_bins: int = 51,
    scheme: str = "per_batch",
    normalize: bool = True,
    chunk_size: int = 20_000,
) -> Path:
    """The token store of one shard, binned with the dataset's shared ``edges`` (per_batch binning)."""
    from celler.data.tokens import tokenize

    if scheme == "per_batch" and edges is None:
        msg = f"{spec.name}: a shard needs the dataset's shared bin edges (per_batch binning): merge_samples"
        raise CellerError(msg)
    return tokenize(
        shard_spec(spec, row),
        cells,
        genes,
        mapping,
        out,
        n_bins=n_bins,
        scheme=scheme,
        normalize=normalize,
        edges=edges if scheme == "per_batch" else None,
        chunk_size=chunk_size,
        row_range=(int(row["start"]), int(row["stop"])),
    )


def tokenize_sharded(
    spec: DatasetSpec,
    cells: pd.DataFrame,
    genes: pd.DataFrame,
    mapping,
    out_dir: str | Path,
    *,
    cells_per_shard: int | None = None,
    n_bins: int = 51,
    scheme: str = "per_batch",
    normalize: bool = True,
    chunk_size: int = 20_000,
    max_values: int = 20_000_000,
    seed: int = 0,
) -> list[Path]:
    """All four steps in one process: the ``out_dir/<shard>/`` token stores, in order (read: ConcatStore)."""
    plan = plan_shards(cells, spec, cells_per_shard)
    edges = None
    if scheme == "per_batch":
        samples = [
            sample_shard(
                spec,
                r,
                shard_cells(cells, r),
                genes,
                mapping,
                normalize=normalize,
                chunk_size=chunk_size,
                max_values=max_values,
                seed=seed,
            )
            for _, r in plan.iterrows()
        ]
        edges = merge_samples(samples, n_bins, max_values=max_values, seed=seed)
    return [
        tokenize_shard(
            spec,
            r,
            shard_cells(cells, r),
            genes,
            mapping,
            Path(out_dir) / r["shard"],
            edges=edges,
            n_bins=n_bins,
            scheme=scheme,
            normalize=normalize,
            chunk_size=chunk_size,
        )
        for _, r in plan.iterrows()
    ]


# --- workflow entry points: python -m celler.data.shards ... -----------------------------------------------------


def read_plan(plan_dir: str | Path) -> pd.DataFrame:
    return pd.read_csv(Path(plan_dir) / "plan.tsv", sep="\t", dtype={"shard": str, "path": str})


def plan_stage(spec: DatasetSpec, *, cells_path, out_dir, cells_per_shard: int | None = None) -> pd.DataFrame:
    """``out_dir/plan.tsv`` and ``out_dir/cells/<shard>.tsv.gz`` (each shard's rows of the QC cell table)."""
    cells = read_cells(cells_path)
    plan = plan_shards(cells, spec, cells_per_shard)
    with atomic_path(out_dir) as tmp:
        (tmp / "cells").mkdir(parents=True)
        plan.to_csv(tmp / "plan.tsv", sep="\t", index=False)
        for _, r in plan.iterrows():
            shard_cells(cells, r).to_csv(
                tmp / "cells" / f"{r['shard']}.tsv.gz",
                sep="\t",
                compression={"method": "gzip", "compresslevel": 1},
            )
    log.info(
        "%s: %d kept cells in %d shard(s)\n%s",
        spec.name,
        int(plan["n_kept"].sum()),
        len(plan),
        plan.to_string(index=False),
    )
    return plan


def _shard_inputs(args):
    from celler.data.qc import read_qc
    from celler.data.vocab import read_mapping

    plan = read_plan(args.plan)
    row = plan.set_index("shard", drop=False).loc[args.shard]
    cells, genes = read_qc(Path(args.plan) / "cells" / f"{args.shard}.tsv.gz", args.genes)
    return row, cells, genes, read_mapping(args.mapping, args.vocab)


def _dataset(args) -> DatasetSpec:
    from celler.config import all_datasets

    return all_datasets(json.loads(args.config))[args.dataset]


def main(argv: list[str] | None = None) -> None:
    from celler.errors import run_guarded

    parser = argparse.ArgumentParser(prog="python -m celler.data.shards", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", required=True, help="JSON with the dataset's config block and defaults")
    common.add_argument("--dataset", required=True)
    p = sub.add_parser("plan", parents=[common], help="cut the QC cell table into shards")
    p.add_argument("--cells", required=True)
    p.add_argument("--cells-per-shard", type=int, default=None)
    p.add_argument("--out", required=True, help="plan directory")
    shard = argparse.ArgumentParser(add_help=False, parents=[common])  # what reading one shard needs
    for a in ("--plan", "--shard", "--genes", "--mapping", "--vocab", "--out"):
        shard.add_argument(a, required=True)
    shard.add_argument("--no-normalize", action="store_true")
    shard.add_argument("--chunk-size", type=int, default=20_000)
    p = sub.add_parser("sample", parents=[shard], help="sample one shard's values for the shared bin edges")
    p.add_argument("--max-values", type=int, default=20_000_000)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("tokenize", parents=[shard], help="tokenise one shard with the shared bin edges")
    p.add_argument("--edges", default=None)
    p.add_argument("--n-bins", type=int, default=51)
    p.add_argument("--binning", default="per_batch", choices=["per_batch", "per_cell"])
    p = sub.add_parser("edges", help="merge the shards' samples into shared per-batch bin edges")
    p.add_argument("--samples", nargs="+", required=True)
    p.add_argument("--n-bins", type=int, default=51)
    p.add_argument("--max-values", type=int, default=20_000_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    def run() -> None:
        if args.command == "plan":
            plan_stage(
                _dataset(args), cells_path=args.cells, out_dir=args.out, cells_per_shard=args.cells_per_shard
            )
        elif args.command == "sample":
            row, cells, genes, mapping = _shard_inputs(args)
            sample_shard(
                _dataset(args),
                row,
                cells,
                genes,
                mapping,
                normalize=not args.no_normalize,
                chunk_size=args.chunk_size,
                max_values=args.max_values,
                seed=args.seed,
            ).save(args.out)
        elif args.command == "edges":
            write_edges(
                merge_samples(
                    map(SavedSample, args.samples), args.n_bins, max_values=args.max_values, seed=args.seed
                ),
                args.out,
            )
        else:
            row, cells, genes, mapping = _shard_inputs(args)
            tokenize_shard(
                _dataset(args),
                row,
                cells,
                genes,
                mapping,
                args.out,
                edges=read_edges(args.edges) if args.edges else None,
                n_bins=args.n_bins,
                scheme=args.binning,
                normalize=not args.no_normalize,
                chunk_size=args.chunk_size,
            )

    run_guarded(run)


if __name__ == "__main__":
    main()
