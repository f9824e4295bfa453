"""What a tissue report reads from ``results/{tissue}/``, loaded once and checked (a missing file is
named)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from celler.data.qc import read_qc
from celler.errors import CellerError


def need(path: Path) -> Path:
    """``path``, or a one-line error naming it."""
    if not path.exists():
        msg = f"report input missing: {path} (run the workflow up to fine-tuning first)"
        raise CellerError(msg)
    return path


def read_tsv(path: Path, **kw) -> pd.DataFrame:
    return pd.read_csv(need(path), sep="\t", **kw)


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def vocab_report(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """The gene-mapping summary table and the unmapped genes of ``vocab/report.tsv``."""
    lines = need(path).read_text().splitlines()
    rows = [ln.split("\t") for ln in lines[1:] if ln and not ln.startswith("#")]
    unmapped = []
    for ln in lines:
        if ln.startswith("# unmapped genes") and ":" in ln:
            unmapped = [g.strip() for g in ln.split(":", 1)[1].split(",") if g.strip()]
    table = pd.DataFrame(rows, columns=["what", "n"]) if rows else pd.DataFrame(columns=["what", "n"])
    return table, unmapped


def evaluation_tables(tissue_dir: Path) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """The baseline comparison (``evaluation/metrics.tsv``, ``per_class.tsv``) at the natural class
    imbalance, or None where absent."""
    out = []
    for name in ("metrics.tsv", "per_class.tsv"):
        path = tissue_dir / "evaluation" / name
        t = read_tsv(path) if path.exists() else None
        if t is not None and "imbalance" in t:
            t = t[t["imbalance"].astype(str) == "natural"]
        out.append(t)
    return out[0], out[1]


def run_predictions_path(results_dir: Path, tissue: str, method: str, seed: int) -> Path:
    """Where the workflow's ``baseline`` rule writes a run's predictions (workflow/rules/evaluate.smk)."""
    return Path(results_dir) / "runs" / tissue / "natural" / method / f"seed{int(seed)}" / "predictions.tsv"


@dataclass
class TissueInputs:
    """Everything a tissue report reads."""

    tissue: str
    results_dir: Path
    cells: pd.DataFrame
    genes: pd.DataFrame
    qc_summary: pd.DataFrame
    vocab: pd.DataFrame
    unmapped: list[str]
    labels: dict
    model_config: dict | None
    calibration: dict | None
    novelty_cut: float  # the model's novelty cut (novelty.npz; NaN for a model trained before novelty scores)
    finetune_log: pd.DataFrame
    pretrain_log: pd.DataFrame | None
    pretrain_config: dict | None
    predictions: pd.DataFrame
    celler_metrics: pd.DataFrame
    celler_per_class: pd.DataFrame
    embeddings: dict
    adata: object
    eval_metrics: pd.DataFrame | None
    eval_per_class: pd.DataFrame | None

    @property
    def tissue_dir(self) -> Path:
        return self.results_dir / self.tissue

    @property
    def levels(self) -> list[str]:
        return list(self.labels["levels"])

    @property
    def level(self) -> str:
        """The main (first, finest) label level: the one most figures show."""
        return self.levels[0]

    def order(self, level: str | None = None) -> list[str]:
        return [str(c) for c in self.labels["levels"][level or self.level]]

    @property
    def kept(self) -> pd.DataFrame:
        return self.cells[self.cells["kept"].astype(bool)]

    def predictions_at(self, level: str | None = None) -> pd.DataFrame:
        p = self.predictions
        return p[p["level"] == (level or self.level)] if "level" in p else p

    def run_predictions(self, method: str, seed: int) -> pd.DataFrame | None:
        """The prediction table of one evaluation run at natural imbalance
        (``results/runs/{tissue}/natural/{method}/seed{seed}/predictions.tsv``), or None where absent."""
        path = run_predictions_path(self.results_dir, self.tissue, method, seed)
        return read_tsv(path, dtype={"cell": str, "true": str, "predicted": str}) if path.exists() else None

    def train_counts(self, level: str) -> pd.Series:
        return pd.Series(self.labels["class_counts"][level], index=self.labels["levels"][level])


def load_tissue(
    tissue: str, results_dir: Path, pretrain_log: str | Path | None, *, evaluation: bool
) -> TissueInputs:
    import anndata as ad

    d = results_dir / tissue
    vocab, unmapped = vocab_report(d / "vocab" / "report.tsv")
    eval_metrics, eval_per_class = evaluation_tables(d) if evaluation else (None, None)
    with np.load(need(d / "celler" / "embeddings.npz"), allow_pickle=False) as npz:
        embeddings = {k: npz[k] for k in npz.files}
    cells, genes = read_qc(need(d / "qc" / "cells.tsv.gz"), need(d / "qc" / "genes.tsv.gz"))
    pre_log = Path(pretrain_log) if pretrain_log else None
    return TissueInputs(
        tissue=tissue,
        results_dir=results_dir,
        cells=cells,
        genes=genes.reset_index(),
        qc_summary=read_tsv(d / "qc" / "summary.tsv"),
        vocab=vocab,
        unmapped=unmapped,
        labels=json.loads(need(d / "model" / "labels.json").read_text()),
        model_config=_json(d / "model" / "config.json"),
        calibration=_json(d / "model" / "calibration.json"),
        novelty_cut=_novelty_cut(d / "model" / "novelty.npz"),
        finetune_log=pd.read_csv(need(d / "model" / "train_log.csv")),
        pretrain_log=pd.read_csv(pre_log) if pre_log and pre_log.exists() else None,
        pretrain_config=_json(pre_log.parent / "config.json") if pre_log else None,
        predictions=read_tsv(
            d / "celler" / "predictions.tsv", dtype={"cell": str, "true": str, "predicted": str}
        ),
        celler_metrics=read_tsv(d / "celler" / "metrics.tsv"),
        celler_per_class=read_tsv(d / "celler" / "per_class.tsv"),
        embeddings=embeddings,
        adata=ad.read_h5ad(need(d / "expr.h5ad")),
        eval_metrics=eval_metrics,
        eval_per_class=eval_per_class,
    )


def _novelty_cut(path: Path) -> float:
    if not path.exists():
        return float("nan")
    with np.load(path) as z:
        return float(z["cut"])
