"""Comparison runs on shared splits: training-cell lists, baseline and Celler runs, and their evaluation.

Every run of every method on a tissue reads the same two things: the QC split (train / test cells, fixed at
QC time) and a training-cell list for its (imbalance, seed). ``natural`` lists all training cells; ``ratioN``
is the induced long tail (:func:`celler.data.longtail.induce_long_tail`) at imbalance N, seeded. The test cells are
never subsampled. Each run writes one prediction table (cell, split, level, true, predicted, confidence), so
the evaluation never cares which method produced it.
"""

from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from celler.data.io import atomic_path
from celler.data.longtail import induce_long_tail
from celler.data.qc import read_cells
from celler.errors import CellerError
from celler.evaluate.metrics import evaluate, scalar_row

log = logging.getLogger(__name__)


def parse_imbalance(imbalance: str) -> float | None:
    """'natural' -> None; 'ratio10' -> 10.0."""
    if imbalance == "natural":
        return None
    m = re.fullmatch(r"ratio(\d+(?:\.\d+)?)", imbalance)
    if not m:
        msg = f"imbalance must be 'natural' or 'ratioN' (e.g. ratio10), got {imbalance!r}"
        raise CellerError(msg)
    return float(m.group(1))


def training_cells_stage(cells_path, *, imbalance: str, seed: int, cells_out, table_out) -> None:
    """Write the training-cell list (one name per line) and its per-class table for (imbalance, seed)."""
    cells = read_cells(cells_path)
    train = cells.loc[cells["split"] == "train", "label"].astype(str)
    ratio = parse_imbalance(imbalance)
    if ratio is None:
        kept = train.index
        table = train.value_counts().rename("n_kept").to_frame()
        table["n_available"] = table["n_kept"]
        realised = float(table["n_kept"].max() / table["n_kept"].min())
    else:
        kept, table, realised = induce_long_tail(train, ratio, seed)
    log.info("%s seed %d: %d training cells, realised imbalance %.2f", imbalance, seed, len(kept), realised)
    with atomic_path(cells_out) as tmp:
        Path(tmp).write_text("\n".join(map(str, kept)) + "\n")
    with atomic_path(table_out) as tmp:
        with open(tmp, "w") as fh:
            fh.write(f"# imbalance={imbalance} seed={seed} realised_ratio={realised:.4f}\n")
            table.rename_axis("class").to_csv(fh, sep="\t")


def read_cell_list(path) -> pd.Index:
    return pd.Index([line for line in Path(path).read_text().split("\n") if line])


def train_counts(cells: pd.DataFrame, train_cells: pd.Index) -> dict[str, pd.Series]:
    """Training cells per class, per level ('subclass' from ``label``, 'parent' from ``parent``)."""
    sub = cells.loc[cells.index.intersection(train_cells)]
    out = {"subclass": sub["label"].astype(str).value_counts()}
    if "parent" in sub and sub["parent"].notna().any():
        out["parent"] = sub["parent"].dropna().astype(str).value_counts()
    return out


def baseline_stage(expr_path, *, method: str, seed: int, train_cells_path, out, params: dict | None = None) -> None:
    """Run baseline ``method`` on the tissue's expression matrix, trained on the listed cells only."""
    import anndata as ad

    from celler.evaluate.baselines import run_baseline

    adata = ad.read_h5ad(expr_path)
    keep = read_cell_list(train_cells_path)
    use = adata.obs["celler_split"].eq("test") | adata.obs_names.isin(keep)
    adata = adata[use.to_numpy()].copy()
    pred = run_baseline(method, adata, seed=seed, **(params or {}))
    with atomic_path(out) as tmp:
        pred.to_csv(tmp, sep="\t", index=False)


def celler_run_stage(store_path, *, cfg, pretrained, seed: int, train_cells_path, out,
                     transductive: bool = False) -> None:
    """Fine-tune Celler with ``cfg`` (seeded) on the listed training cells; write test predictions only.

    The run's model directory is temporary: runs exist to be compared, the tissue's model is the main rule's.
    ``transductive``: the program view's axes read the test cells' expression too (never their labels), as the
    main rule (``celler.stages.finetune_stage``) and pretraining do.
    """
    from celler.data.tokens import TokenStore
    from celler.model.classifier import predictions_table
    from celler.train.finetune import finetune

    cfg = replace(cfg, seed=seed)
    store = TokenStore(store_path)
    test = np.flatnonzero(store.cells["split"].astype(str).eq("test").to_numpy())
    with tempfile.TemporaryDirectory() as tmp:
        model, _, info = finetune(store_path, Path(tmp) / "model", cfg, pretrained=pretrained,
                                  train_cells=read_cell_list(train_cells_path),
                                  unlabelled_cells=store.cells.index[test] if transductive else None)
    pred, _ = predictions_table(model, store, test, cfg)
    log.info("chosen loss %s %s (validation macro-F1 %.3f)", info["loss"], info["loss_params"], info["val_macro_f1"])
    with atomic_path(out) as tmp:
        pred.to_csv(tmp, sep="\t", index=False)


def evaluate_runs(runs: pd.DataFrame, cells_path, *, rare_fraction: float = 0.03) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score every run of one tissue.

    ``runs`` has columns method, seed, imbalance, predictions (path), train_cells (path). Returns
    ``(metrics, per_class)``: one row per run and level with the scalar metrics, and the per-class table.
    """
    cells = read_cells(cells_path)
    rows, per_class = [], []
    for run in runs.itertuples(index=False):
        pred = pd.read_csv(run.predictions, sep="\t", dtype={"true": str, "predicted": str})
        counts = train_counts(cells, read_cell_list(run.train_cells))
        for level in pred["level"].unique():
            res = evaluate(pred, counts[level], rare_fraction=rare_fraction, level=level)
            key = {"method": run.method, "imbalance": run.imbalance, "seed": run.seed, "level": level}
            rows.append(key | scalar_row(res))
            per_class.append(res["per_class"].rename_axis("class").reset_index().assign(**key))
    metrics = pd.DataFrame(rows)
    per_class = pd.concat(per_class, ignore_index=True) if per_class else pd.DataFrame()
    front = ["method", "imbalance", "seed", "level"]
    return metrics, per_class[front + [c for c in per_class.columns if c not in front]]


def evaluate_stage(runs: pd.DataFrame, cells_path, *, metrics_out, per_class_out, rare_fraction: float = 0.03) -> None:
    metrics, per_class = evaluate_runs(runs, cells_path, rare_fraction=rare_fraction)
    for out, frame in ((metrics_out, metrics), (per_class_out, per_class)):
        with atomic_path(out) as tmp:
            frame.to_csv(tmp, sep="\t", index=False)


def comparison_tables(metric_files: dict[str, str], out_dir) -> None:
    """The paper's Table 2 (tissue x level x method) and Table 3 (dataset x method) analogues, natural
    imbalance, mean ± std over seeds, as TSV and Markdown in ``out_dir``."""
    from celler.evaluate.metrics import table2, table3, write_table

    runs = pd.concat([pd.read_csv(p, sep="\t").assign(tissue=t, dataset=t) for t, p in metric_files.items()])
    runs = runs[runs["imbalance"] == "natural"]
    out_dir = Path(out_dir)
    write_table(table2(runs), out_dir / "table2_levels.tsv")
    write_table(table3(runs[runs["level"] == "subclass"]), out_dir / "table3_datasets.tsv")


def ablation_table(metric_files: dict[str, str], out, *, reference: str = "ce") -> Path:
    """The loss ablation (Table 4 analogue): mean ± std over seeds per benchmark (tissue, imbalance, level) of
    each Celler loss and of the baselines run on the same (induced) training cells; and, written next to it as
    ``<out>_paired``, each loss's paired difference from ``reference`` (CE; the first loss run if CE was not).
    Returns the paired table's TSV path."""
    from celler.evaluate.metrics import paired_differences, table4, write_table

    runs = pd.concat([pd.read_csv(p, sep="\t").assign(tissue=t) for t, p in metric_files.items()])
    celler = runs["method"].str.startswith("celler")
    runs["loss"] = np.where(celler, runs["method"].str.removeprefix("celler_"), "–")
    runs["method"] = np.where(celler, "celler", runs["method"])
    runs["dataset"] = runs["tissue"] + "/" + runs["imbalance"] + "/" + runs["level"]
    write_table(table4(runs), out)
    losses = runs.loc[celler, "loss"]
    if reference not in set(losses):
        reference = losses.iloc[0]
    paired = paired_differences(runs[celler], reference=reference).assign(reference=reference)
    return write_table(paired, Path(out).with_name(Path(out).stem + "_paired"))[0]  # write_table adds .tsv/.md
