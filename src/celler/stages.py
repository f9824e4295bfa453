"""The data stages as file-to-file functions: what each Snakemake script (and the CLI) calls.

Each stage reads its inputs, runs the package logic, and writes every output atomically, so a failure
leaves no partial files and the inputs are never touched.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from celler.config import DatasetSpec
from celler.data.io import MatrixReader, atomic_path
from celler.data.qc import read_qc, run_qc
from celler.data.vocab import GeneMapping, Vocab, load_ensembl_table, map_genes, read_mapping

log = logging.getLogger(__name__)


def qc_stage(spec: DatasetSpec, *, cells_out, genes_out, summary_out, plot_out, chunk_size: int = 20_000) -> None:
    """QC tables (cells with kept/reason/split, genes with n_cells), a summary and a plot."""
    cells, genes, summary = run_qc(spec, chunk_size=chunk_size)
    kinds = cells.groupby("input")["kind"].first()
    for path, kind in kinds.items():
        log.info("%s: %s", path, "raw counts -> normalise_total(1e4) + log1p where needed" if kind == "counts"
                 else "already log-normalised -> used as is")
    log.info("QC summary for %s: %s", spec.name,  # one line: a log that ends in an error stays one error line
             "; ".join(f"{r.step} -{r.removed} = {r.left}" for r in summary.itertuples()))
    for out, frame, index in ((cells_out, cells, True), (genes_out, genes, True), (summary_out, summary, False)):
        with atomic_path(out) as tmp:
            frame.to_csv(tmp, sep="\t", index=index, compression={"method": "gzip", "compresslevel": 1}
                         if str(out).endswith(".gz") else None)
    with atomic_path(plot_out) as tmp:
        plot_qc(cells, spec, tmp)


def dataset_var(spec: DatasetSpec, genes: pd.Index) -> pd.DataFrame:
    """The ``var`` rows of the QC genes, taken from the first input file that has each gene."""
    parts = []
    for f in spec.inputs:
        with MatrixReader(f.path, spec.matrix) as r:
            v = r.var.copy()
            v.index = v.index.astype(str)
            parts.append(v)
    var = pd.concat(parts)
    var = var[~var.index.duplicated()]
    return var.reindex(genes)


def map_stage(
    spec: DatasetSpec, *, genes_path, vocab_path, ensembl_path=None, mapping_out, report_out, vocab_out
) -> GeneMapping:
    """Map the dataset's genes to the vocabulary; write the mapping, a report and the run's vocabulary."""
    genes = pd.read_csv(genes_path, sep="\t", index_col=0)
    genes.index = genes.index.astype(str)
    var = dataset_var(spec, genes.index)
    mapping = map_genes(
        var, Vocab.load(vocab_path), mode=spec.vocab_mode, symbol_column=spec.gene_symbols,
        ensembl_to_symbol=load_ensembl_table(ensembl_path), min_overlap=spec.min_overlap,
        source=spec.files,
    )
    report = mapping.summary()
    unmapped = mapping.table.loc[mapping.table["source"] == "unmapped", "gene"]
    log.info("%s: %d of %d genes mapped (%s)", spec.name, mapping.n_mapped, len(mapping.table),
             "; ".join(f"{r.what} {r.n}" for r in report.itertuples()))
    with atomic_path(mapping_out) as tmp:
        mapping.table.to_csv(tmp, sep="\t", index=False)
    with atomic_path(report_out) as tmp:
        with open(tmp, "w") as fh:
            report.to_csv(fh, sep="\t", index=False)
            fh.write(f"# unmapped genes ({len(unmapped)}): {', '.join(unmapped)}\n")
    with atomic_path(vocab_out) as tmp:
        mapping.vocab.save(tmp)
    return mapping


def tokenize_stage(spec: DatasetSpec, *, cells_path, genes_path, mapping_path, vocab_path, out,
                   n_bins: int, scheme: str, normalize: bool, chunk_size: int = 20_000) -> Path:
    from celler.data.tokens import tokenize

    cells, genes = read_qc(cells_path, genes_path)
    mapping = read_mapping(mapping_path, vocab_path)
    return tokenize(spec, cells, genes, mapping, out, n_bins=n_bins, scheme=scheme, normalize=normalize,
                    chunk_size=chunk_size)


def expression_stage(spec: DatasetSpec, *, cells_path, genes_path, mapping_path, vocab_path, out) -> None:
    from celler.data.prepare import export_expression

    cells, genes = read_qc(cells_path, genes_path)
    adata = export_expression(spec, cells, genes, read_mapping(mapping_path, vocab_path))
    with atomic_path(out) as tmp:
        adata.write_h5ad(tmp, compression="gzip")


def finetune_config(section: dict):
    """A FinetuneConfig and the pretrained-model path from the config's ``finetune:`` section."""
    from dataclasses import fields

    from celler.train.finetune import FinetuneConfig

    names = {f.name for f in fields(FinetuneConfig)}
    values = {k: v for k, v in section.items() if k in names}
    init = str(values.get("init", "pretrained"))
    if init not in ("pretrained", "scratch"):  # a path to a scGPT (or Celler) model directory
        values["init"] = "pretrained"
    return FinetuneConfig(**values), (None if init in ("pretrained", "scratch") else init)


def finetune_stage(store_path, *, cfg, pretrained, model_out, predictions_out, embeddings_out, metrics_out,
                   per_class_out, train_cells=None, rare_fraction: float = 0.03, transductive: bool = False) -> None:
    """Fine-tune on a tissue's training cells, predict its test cells, and score the predictions.

    ``transductive``: the program view's axes are fitted on the test cells' expression too (never their labels),
    as pretraining's ``transductive`` reads them."""
    import numpy as np

    from celler.data.tokens import TokenStore
    from celler.evaluate.metrics import evaluate, scalar_row
    from celler.model.classifier import predictions_table
    from celler.train.finetune import finetune

    store = TokenStore(store_path)
    test = np.flatnonzero(store.cells["split"].astype(str).eq("test").to_numpy())
    model, levels, info = finetune(store_path, model_out, cfg, pretrained=pretrained, train_cells=train_cells,
                                   unlabelled_cells=store.cells.index[test] if transductive else None)
    pred, emb = predictions_table(model, store, test, cfg)
    rows, per_class = [], []
    for level, classes in levels.items():
        counts = pd.Series(info["class_counts"][level], index=classes)
        res = evaluate(pred, counts, rare_fraction=rare_fraction, level=level)
        rows.append({"level": level, **scalar_row(res)})
        per_class.append(res["per_class"].assign(level=level))
        log.info("%s level: macro-F1 %.3f, accuracy %.3f, rare recall %s", level, res["macro_f1"], res["accuracy"],
                 res["rare_recall"])
    for out, frame in ((predictions_out, pred), (metrics_out, pd.DataFrame(rows)),
                       (per_class_out, pd.concat(per_class).rename_axis("class").reset_index())):
        with atomic_path(out) as tmp:
            frame.to_csv(tmp, sep="\t", index=False)
    with atomic_path(embeddings_out) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, cells=np.asarray(store.cells.index[test], dtype=str), embedding=emb)


def plot_qc(cells: pd.DataFrame, spec: DatasetSpec, path) -> None:
    """The QC figure of the reports (:func:`celler.report.plots.qc_distributions`) with this dataset's
    thresholds."""
    from dataclasses import asdict

    from celler.report.plots import qc_distributions, save_figure

    save_figure(qc_distributions(cells, thresholds=asdict(spec.qc), title=spec.name), path)
