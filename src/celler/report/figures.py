"""The figures of a tissue report, built from its :class:`~celler.report.inputs.TissueInputs`, and the facts
about them that the page states in words (selected epoch, Unassigned share, the marker panel, ...)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from celler.evaluate import markers as mk
from celler.evaluate.metrics import evaluate
from celler.report import plots
from celler.report.baseline import best_baseline_run
from celler.report.inputs import TissueInputs
from celler.report.plots.base import PAGE_WIDTH_IN, text_width
from celler.report.pretraining import pretrain_spikes

#: Figures of a tissue report: file stem -> title. The workflow declares one PNG per entry.
FIGURES = {
    "qc": "Quality control",
    "class_sizes": "Class sizes",
    "training_curves": "Training curves",
    "f1_vs_size": "Per-class F1 vs class size",
    "confusion": "Confusion matrix",
    "confidence": "Confidence and low-confidence calls",
    "confidence_true": "Confidence by true type",
    "novelty": "Novelty and Unassigned cells",
    "umap": "UMAP of the Celler embeddings",
    "dotplot_true": "Marker genes by true label",
    "dotplot_predicted": "Marker genes by predicted label",
}


def umap_coords(embedding: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """2-D UMAP of ``embedding`` (cells x dims); a PCA projection below 20 cells (too few for UMAP)."""
    import anndata as ad
    import scanpy as sc

    emb = np.asarray(embedding, dtype=np.float32)
    if len(emb) < 20:
        centred = emb - emb.mean(axis=0)
        u, s, _ = np.linalg.svd(centred, full_matrices=False)
        out = u[:, :2] * s[:2]
        return np.pad(out, ((0, 0), (0, 2 - out.shape[1])))
    a = ad.AnnData(obs=pd.DataFrame(index=[str(i) for i in range(len(emb))]), obsm={"X_celler": emb})
    sc.pp.neighbors(a, use_rep="X_celler", n_neighbors=min(15, len(emb) - 1), random_state=seed)
    sc.tl.umap(a, random_state=seed)
    return a.obsm["X_umap"]


def class_counts(inp: TissueInputs) -> pd.DataFrame:
    """Kept cells per class (rows) and split (columns: train, test, then any other)."""
    kept = inp.kept
    counts = pd.crosstab(kept["label"].astype(str), kept["split"].astype(str))
    first = [c for c in ("train", "test") if c in counts]
    return counts[first + [c for c in counts if c not in first]]


def tissue_figures(
    inp: TissueInputs, *, known: pd.DataFrame | None, qc_thresholds: Mapping | None, rare_fraction: float
) -> tuple[dict[str, Figure], dict]:
    """Every figure of :data:`FIGURES`, and ``facts``: ``results`` (level -> :func:`celler.evaluate.metrics.evaluate`
    result), ``selected`` (kept epoch row), ``spikes``, ``unassigned``, ``panel``, ``marker_notes`` and
    ``baseline`` (:func:`celler.report.baseline.best_baseline_run`, whose confusion tables are drawn beside
    Celler's)."""
    level = inp.level
    results = {
        lv: evaluate(inp.predictions_at(lv), inp.train_counts(lv), rare_fraction=rare_fraction)
        for lv in inp.levels
    }
    per_class = (
        inp.eval_per_class[inp.eval_per_class["level"] == level]
        if inp.eval_per_class is not None
        else inp.celler_per_class[inp.celler_per_class["level"] == level].assign(method="celler")
    )
    base = best_baseline_run(inp, rare_fraction=rare_fraction)  # drawn beside Celler's confusion matrices
    chosen = (inp.model_config or {}).get("chosen", {}).get("val_macro_f1")
    selected = plots.selected_epoch(inp.finetune_log, chosen)
    n_bins = ((inp.pretrain_config or {}).get("model") or {}).get("n_bins")
    figs = {
        "qc": plots.qc_distributions(inp.cells, thresholds=qc_thresholds, title=inp.tissue),
        "class_sizes": plots.class_sizes(class_counts(inp), rare_fraction=rare_fraction),
        "training_curves": plots.training_curves(
            inp.finetune_log,
            inp.pretrain_log,
            selected=selected,
            n_bins=n_bins,
            # a tissue's own pretraining continues another model (config.json's init); the shared one does not
            pretrain_title=plots.CONTINUED_PRETRAINING
            if (inp.pretrain_config or {}).get("init")
            else plots.SHARED_PRETRAINING,
        ),
        "f1_vs_size": plots.f1_vs_size(per_class, title=f"Per-class F1 vs training class size ({level})"),
        "confusion": plots.confusion_figure(
            {lv: r["confusion"] for lv, r in results.items()},
            baselines={lv: r["confusion"] for lv, r in (base["results"] if base else {}).items()},
            baseline=base["method"] if base else "",
        ),
    }
    (figs["confidence"], figs["confidence_true"]), unassigned = _confidence(inp)
    figs["novelty"] = plots.novelty_by_type(inp.predictions_at(), cut=inp.novelty_cut, order=inp.order())
    figs["umap"] = _umap(inp)
    dots, panel, notes = _marker_figures(inp, known)
    facts = {
        "results": results,
        "selected": selected,
        "spikes": pretrain_spikes(inp.pretrain_log),
        "n_bins": n_bins,
        "unassigned": unassigned,
        "panel": panel,
        "marker_notes": notes,
        "baseline": base,
    }
    return figs | dots, facts


def _confidence(inp: TissueInputs) -> tuple[tuple[Figure, Figure], dict]:
    """The confidence figure (the low-confidence flag at the stored thresholds, celler.model.calibration) and
    the facts of the Unassigned rule (novelty above the model's cut, celler.model.novelty)."""
    from celler.model.calibration import DEFAULT_THRESHOLD, low_confidence

    pred = inp.predictions_at()
    cal = (inp.calibration or {}).get(inp.level)
    # predictions.tsv carries the calibrated confidence, the flag and the Unassigned call (celler.model.classifier)
    low = (pred["low_confidence"].astype(bool).to_numpy() if "low_confidence" in pred
           else low_confidence(cal, pred["predicted"].to_numpy(), pred["confidence"].to_numpy()))
    mask = pred["unassigned"].astype(bool).to_numpy() if "unassigned" in pred else low
    default = float((cal or {}).get("threshold", DEFAULT_THRESHOLD))
    per_class = (cal or {}).get("class_thresholds") or {}  # the lookup celler.model.calibration.low_confidence makes
    cuts = pred["predicted"].astype(str).map(lambda c: float(per_class.get(c, default))).to_numpy()
    right = (pred["true"].astype(str) == pred["predicted"].astype(str)).to_numpy()
    fig = plots.confidence_by_class(pred, unassigned=low, thresholds=cuts, order=inp.order())
    by_true = plots.confidence_by_class(pred, unassigned=low, thresholds=cuts, order=inp.order(), by="true")
    facts = {
        "share": float(mask.mean()) if len(mask) else float("nan"),
        "n": int(mask.sum()),
        "low_share": float(low.mean()) if len(low) else float("nan"),
        "novelty": "unassigned" in pred and "novelty" in pred,
        "cut": inp.novelty_cut,
        "cut_cells": {k: v for k, v in ((inp.model_config or {}).get("chosen") or {}).items()
                      if k in ("n_val", "out_of_fold_cells")},
        "threshold": default,
        "per_class": bool(per_class),
        "calibrated": cal is not None,
        "wrong_caught": float(mask[~right].mean()) if (~right).any() else float("nan"),
        "right_lost": float(mask[right].mean()) if right.any() else float("nan"),
    }
    return (fig, by_true), facts

def _umap(inp: TissueInputs) -> Figure:
    by_cell = inp.predictions_at().set_index("cell")
    cells = np.asarray(inp.embeddings["cells"]).astype(str)
    keep = np.isin(cells, by_cell.index)
    coords = umap_coords(np.asarray(inp.embeddings["embedding"])[keep])
    shown = by_cell.loc[cells[keep]]
    true, pred = shown["true"].astype(str).to_numpy(), shown["predicted"].astype(str).to_numpy()
    return plots.umap_embedding(
        coords, {"true": true, "predicted": pred}, order=inp.order(), wrong=true != pred
    )


def _marker_figures(inp: TissueInputs, known: pd.DataFrame | None) -> tuple[dict, mk.MarkerPanel, dict]:
    """Dot plots of the test cells by true and by predicted label over one gene panel, chosen from the
    training cells' true labels; the same rows (every class) and colour scale in both."""
    a = inp.adata
    train = a[a.obs["celler_split"].astype(str).eq("train").to_numpy()]
    order = inp.order()
    pred = inp.predictions_at().set_index("cell")
    test = a[a.obs_names.isin(pred.index)].copy()
    for col in ("true", "predicted"):
        test.obs[col] = pred.loc[test.obs_names, col].astype(str).to_numpy()
    rows = order + sorted(set(test.obs["true"]) - set(order))  # test-only (open-set) classes last
    n_true, n_pred = test.obs["true"].value_counts(), test.obs["predicted"].value_counts()
    longest = [f"{r} ({max(n_true.get(r, 0), n_pred.get(r, 0)):,})" for r in rows]
    room = PAGE_WIDTH_IN - 2.4 - text_width(longest, 9)
    n_ranked, n_known = mk.marker_budget(len(order), max_columns=max(int(room / plots.DOT_CELL), len(order)))
    if known is None or known.empty:
        n_ranked, n_known = n_ranked + n_known, 0
    panel = mk.marker_panel(
        train, "celler_label", order=order, n_ranked=n_ranked, n_known=n_known, known=known
    )
    tables = {
        by: mk.dot_table(test, by, panel.gene_list, order=rows, keep_empty=True)
        for by in ("true", "predicted")
    }
    scale = pd.concat(tables.values()).groupby("gene")["mean"].max()
    weak = _listed(
        f"No clean marker (in >= {mk.CLEAN['in_group']:.0%} of the type's training cells, <= "
        f"{mk.CLEAN['out_group']:.0%} of the others, >= {mk.CLEAN['fold_change']:g}-fold) for",
        panel.unclean,
    )
    notes = {
        "true": " ".join(
            filter(None, [_listed("No test cells", [r for r in rows if n_true.get(r, 0) == 0]), weak])
        ),
        "predicted": " ".join(
            filter(
                None,
                [
                    _listed("Never predicted", [r for r in rows if n_pred.get(r, 0) == 0]),
                    _listed(
                        "Predicted but absent from the test truth (every such call is wrong)",
                        [
                            f"{r} ({n_pred[r]})"
                            for r in rows
                            if n_pred.get(r, 0) > 0 and n_true.get(r, 0) == 0
                        ],
                    ),
                ],
            )
        ),
    }
    figs = {
        f"dotplot_{by}": plots.marker_dotplot(
            tables[by],
            markers=panel.genes,
            scale=scale,
            note=notes[by],
            title=f"Marker genes, test cells by {'true label' if by == 'true' else 'label Celler predicted'}",
        )
        for by in ("true", "predicted")
    }
    return figs, panel, notes


def _listed(what: str, items: list[str]) -> str:
    return f"{what}: {', '.join(items)}." if items else ""
