"""The ``celler`` command: ``tokenize`` and ``annotate``, each run under :func:`celler.errors.run_guarded` (a
user-fixable problem ends as one line on stderr and exit status 1, never a traceback)."""

from __future__ import annotations

import argparse
from pathlib import Path

from celler.errors import CellerError, run_guarded

FORCE_HELP = ("replace an existing output Celler did not write (never an input, nor the current folder); "
              "without it an output may only replace a file, an empty folder or a folder Celler wrote")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="celler", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("tokenize", help="QC, map genes and tokenise one .h5ad file into a token store")
    p.add_argument("h5ad")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--vocab", default=None, help="vocabulary JSON (default: the bundled scGPT vocabulary)")
    p.add_argument("--label", default=None, help="obs column with the cell-type label")
    p.add_argument("--batch", default=None, help="obs column with the batch")
    p.add_argument("--min-genes", type=int, default=200, help="QC: minimum detected genes per cell")
    p.add_argument("--matrix", default="X")
    p.add_argument("--n-bins", type=int, default=51)
    p.add_argument("--binning", default="per_batch", choices=["per_batch", "per_cell"])
    p.add_argument("--vocab-mode", default="match", choices=["match", "extend"])
    p.add_argument("--force", action="store_true", help=FORCE_HELP)
    _add_annotate_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "tokenize":
        run_guarded(lambda: _tokenize(args))
    elif args.command == "annotate":
        run_guarded(lambda: _annotate(args))


def _tokenize(args) -> None:
    from celler.config import dataset_spec
    from celler.data.io import atomic_path, check_replaceable
    from celler.data.vocab import Vocab
    from celler.resources import default_vocab_path

    check_replaceable(args.out, directory=True, inputs=[args.h5ad], force=args.force)  # before any work
    if not 3 <= args.n_bins <= 256:  # options are checked before the QC work, so a mistake costs nothing
        msg = f"--n-bins {args.n_bins}: n_bins must be between 3 and 256 (bins are stored as uint8)"
        raise CellerError(msg)
    Vocab.load(args.vocab or default_vocab_path())  # a missing or broken vocabulary file fails here
    spec = dataset_spec(Path(args.h5ad).stem, {
        "inputs": [args.h5ad], "label": args.label, "batch": args.batch, "matrix": args.matrix,
        "vocab_mode": args.vocab_mode, "qc": {"min_genes": args.min_genes, "min_cells": 1}})
    # all or nothing: a failed step leaves no output directory
    with atomic_path(args.out, inputs=[args.h5ad], force=args.force) as out:
        _tokenize_into(spec, out, args)


def _tokenize_into(spec, out: Path, args) -> None:
    from celler.resources import default_vocab_path
    from celler.stages import map_stage, qc_stage, tokenize_stage

    qc_stage(spec, cells_out=out / "qc_cells.tsv.gz", genes_out=out / "qc_genes.tsv.gz",
             summary_out=out / "qc_summary.tsv", plot_out=out / "qc.png")
    map_stage(spec, genes_path=out / "qc_genes.tsv.gz", vocab_path=args.vocab or default_vocab_path(),
              mapping_out=out / "mapping.tsv.gz", report_out=out / "vocab_report.tsv", vocab_out=out / "vocab.json")
    tokenize_stage(spec, cells_path=out / "qc_cells.tsv.gz", genes_path=out / "qc_genes.tsv.gz",
                   mapping_path=out / "mapping.tsv.gz", vocab_path=out / "vocab.json", out=out / "tokens",
                   n_bins=args.n_bins, scheme=args.binning, normalize=True)


def _add_annotate_parser(sub) -> None:
    p = sub.add_parser("annotate", help="predict cell types of a query .h5ad with a fine-tuned tissue model",
                       description="Annotate QUERY.h5ad with a fine-tuned Celler model; writes an annotated "
                       "copy (the query file is never modified) and a per-cell CSV.")
    p.add_argument("query", help="query .h5ad (counts or log-normalised expression)")
    p.add_argument("--model", required=True, help="fine-tuned model directory (results/<tissue>/model)")
    p.add_argument("--out", required=True, help="annotated copy of the query (.h5ad)")
    p.add_argument("--csv", default=None, help="per-cell predictions CSV (default: --out with .csv)")
    p.add_argument("--threshold", type=float, default=None,
                   help="confidence below which a call is flagged low_confidence, keeping its label (default: "
                   "the model's calibrated per-class thresholds); Unassigned is for novel cells (novelty.npz)")
    p.add_argument("--batch-key", default=None,
                   help="obs column with the query's batches (bin edges per batch)")
    p.add_argument("--majority-voting", action="store_true", help="add cluster-level majority voting")
    p.add_argument("--min-prop", type=float, default=0.0,
                   help="majority voting: a cluster whose top label has a smaller share is Heterogeneous")
    p.add_argument("--top-k", type=int, default=3,
                   help="probabilities of the k most likely types per cell")
    p.add_argument("--matrix", default="X", help="X, raw or layers/NAME (default X)")
    p.add_argument("--gene-symbols", default=None, help="var column with gene symbols (default: var_names)")
    p.add_argument("--min-overlap", type=float, default=0.3,
                   help="least share of the model's genes the query must contain (default 0.3)")
    p.add_argument("--batch-size", default="auto", help="cells per forward pass, or auto (fits free memory)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--force", action="store_true", help=FORCE_HELP)


def _annotate(args) -> None:
    from celler.annotate import annotate_file

    if args.batch_size != "auto" and not str(args.batch_size).isdigit():
        msg = f"--batch-size must be a positive integer or auto, got {args.batch_size!r}"
        raise CellerError(msg)
    result = annotate_file(
        args.query, args.model, out=args.out, csv=args.csv or str(Path(args.out).with_suffix(".csv")),
        batch_key=args.batch_key, threshold=args.threshold, majority_voting=args.majority_voting,
        min_prop=args.min_prop, top_k=args.top_k, matrix=args.matrix, gene_symbols=args.gene_symbols,
        min_overlap=args.min_overlap, device=args.device,
        batch_size=args.batch_size if args.batch_size == "auto" else int(args.batch_size), force=args.force)
    print(result)


if __name__ == "__main__":
    main()
