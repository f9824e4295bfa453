"""The sections of a tissue page: summary, data, training, results, embeddings, marker genes."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from celler.evaluate.markers import CONFIRMED, MarkerPanel
from celler.report import pretraining
from celler.report.baseline import baseline_note
from celler.report.comparison import HEADLINE, compare, comparison_table, verdict
from celler.report.inputs import TissueInputs
from celler.report.page import cards, details, metric_table, names, note, table, warning

NAV = [  # the page's order: the result and what backs it first, how it was made after
    ("summary", "Summary"),
    ("results", "Results"),
    ("markers", "Marker genes"),
    ("embeddings", "Embeddings"),
    ("data", "Data"),
    ("training", "Training"),
    ("provenance", "Provenance"),
]

#: HTML captions of the figures (the Snakemake report's captions are in workflow/report/*.rst).
CAPTIONS = {
    "qc": "Genes per cell, total per cell and (when the data has MT- genes) mitochondrial percentage of the "
    "kept cells and of the cells a QC filter removed; dashed lines mark the thresholds that were applied.",
    "class_sizes": "Kept cells per class and split, largest first (log scale); the dotted line marks the "
    "rare-class threshold ({rare:.0%} of the training cells).",
    "training_curves": "Left: the pretraining masked-value loss per step of the model this tissue "
    "starts from (the one shared by every tissue, or this tissue's continued pretraining of it: the "
    "panel's title says which); middle and right: this tissue's fine-tuning loss and validation "
    "macro-F1 per epoch; the dashed line marks the epoch that was kept (the best validation subclass "
    "macro-F1, a tie keeping the later).",
    "f1_vs_size": "F1 of each class on the test cells (mean over seeds) against its number of training "
    "cells (log scale): Celler is the black star, each baseline its own marker; classes are named on top "
    "with their test cells; the shaded band holds the rare classes. High F1 on the left: the tail is "
    "handled.",
    "confusion": "Each cell: test cells of the true class (row, with its total) predicted as the column's "
    "label, and that count as a share of the row (colour; '>.99' is just below 1, '1' exactly all). The "
    "diagonal is the per-class recall. Beside (or below) Celler's, where baselines ran: the best baseline's on "
    "the same test cells, with the same rows, columns and colour scale, so a shared error sits in the same cell.",
    "confidence": "Confidence of each test-cell call by predicted class, right and wrong calls apart; the "
    "black bar is the class's low-confidence threshold (celler annotate flags a call below it in "
    "low_confidence and keeps its label); the share on the right is the class's calls it flags. The axis (logit "
    "scale) spans the lowest to the highest confidence and threshold, so a narrow band near 1 fills it.",
    "confidence_true": "The same confidences by true type: a type whose cells are often called with little "
    "confidence (a rare or a mixed-up type) shows here, whatever they were called; the share on the right is "
    "the type's cells flagged low_confidence (held to their predicted class's threshold).",
    "novelty": "Novelty of each test cell by its true type: the squared distance to the nearest training "
    "type in the tissue's principal-axis space; the black line is the cut above which celler annotate "
    "labels a cell Unassigned (set so that 2% of the validation cells pass it); the share on the right "
    "is the type's cells above it. A type the model was trained on should sit left of the cut.",
    "umap": "UMAP of Celler's embeddings of the test cells by true and by predicted label (same colours), "
    "and the misclassified cells (black). The embedding is the fine-tuned classifier's own representation, "
    "trained to separate these labels, so it looks clean by construction: it shows where errors sit, not "
    "that the types separate in the data (the marker plots below show that, from expression).",
    "dotplot_true": "The marker panel on the test cells grouped by their true label; row labels give the "
    "number of cells.",
    "dotplot_predicted": "The same genes, rows and colour scale, test cells grouped by the label Celler "
    "predicted: a row that differs from the one above holds wrong calls.",
}


#: what a tissue page is made from, relative to results/{tissue}/ (linked where the file exists)
SOURCES = {
    "celler/predictions.tsv": "every test cell's call, confidence, novelty and flags",
    "celler/metrics.tsv": "Celler's metrics",
    "celler/per_class.tsv": "Celler's per-class metrics",
    "evaluation/metrics.tsv": "every method and seed",
    "evaluation/per_class.tsv": "every method's per-class metrics",
    "model/calibration.json": "the confidence calibration (low-confidence thresholds)",
    "model/novelty.npz": "the novelty index (the Unassigned cut)",
    "model/config.json": "the fine-tuning settings",
}


def source_links(page_dir: Path, tissue_dir: Path) -> str:
    """Relative links from the page to the files its numbers come from, and to the annotated queries
    (results/annotate/{tissue}/), those that exist."""
    import os

    files = [(tissue_dir / rel, what) for rel, what in SOURCES.items()]
    annotated = tissue_dir.parent / "annotate" / tissue_dir.name
    files += [(f, "an annotated query") for f in sorted(annotated.glob("*.h5ad")) + sorted(annotated.glob("*.csv"))]
    items = [f'<li><a href="{html.escape(Path(os.path.relpath(f, page_dir)).as_posix())}">'
             f"{html.escape(Path(os.path.relpath(f, page_dir)).as_posix())}</a>: {html.escape(what)}</li>"
             for f, what in files if f.exists()]
    return f'<details><summary>Files behind this page</summary><ul>{"".join(items)}</ul></details>' if items else ""


#: The title of the box that shows a tissue's ``label_note`` (config.yaml).
LABEL_NOTE = "These labels are known to be noisy."


def summary_section(inp: TissueInputs, links: str = "", label_note: str | None = None) -> str:
    """The result at a glance: Celler against the best baseline on this tissue, per level; ``links``: the
    files it is made from (:func:`source_links`); ``label_note``: the config's warning about this tissue's
    labels, shown in a box above everything else."""
    box = warning(LABEL_NOTE, label_note) if label_note else ""
    if inp.eval_metrics is None or inp.eval_metrics.empty:
        body = note(
            "No baseline evaluation in this run (set <code>evaluate</code> in the config): Celler alone. "
            + ", ".join(
                f"{HEADLINE[m]} {inp.celler_metrics[m].iloc[0]:.3f}"
                for m in HEADLINE
                if m in inp.celler_metrics
            )
        )
        return f'<section id="summary"><h2>Summary</h2>{box}{body}{links}</section>'
    rows = compare(inp.eval_metrics, inp.levels)
    main = rows[rows["level"] == inp.level]
    return (
        f'<section id="summary"><h2>Summary</h2>{box}'
        f'<p class="headline">{html.escape(verdict(main, unit="level"))}</p>{comparison_table(rows)}'
        + note(
            "Means over the evaluation seeds on the same test cells; the best baseline is chosen per "
            "metric and level. Blue: Celler ahead, orange: behind, grey: level (within 0.01)."
        )
        + links
        + "</section>"
    )


def data_section(inp: TissueInputs, shown: dict[str, str], class_table: pd.DataFrame) -> str:
    kept, genes = inp.kept, inp.genes
    batches = kept["batch"].fillna("").astype(str) if "batch" in kept else pd.Series("", index=kept.index)
    items = [
        ("cells before QC", f"{len(inp.cells):,}"),
        ("cells after QC", f"{len(kept):,}"),
        ("genes before QC", f"{len(genes):,}"),
        ("genes after QC", f"{int(genes['kept'].astype(bool).sum()):,}"),
        ("genes in the model vocabulary", f"{inp.adata.n_vars:,}"),
        ("cell types", len(class_table)),
        ("batches", batches[batches != ""].nunique()),
        ("test cells", f"{int((kept['split'] == 'test').sum()):,}"),
    ]
    batch_tab = pd.crosstab(batches.replace("", "(none)"), kept["split"].astype(str))
    batch_tab = batch_tab.rename_axis(index="batch", columns=None).reset_index()
    unmapped = (
        details(f"{len(inp.unmapped)} unmapped genes", note(names(inp.unmapped))) if inp.unmapped else ""
    )
    counts = class_table.assign(total=class_table.sum(axis=1)).sort_values("total", ascending=False)
    counts = counts.rename_axis(index="class", columns=None).reset_index()
    return (
        f'<section id="data"><h2>Data</h2>{cards(items)}'
        f"<h3>Quality control</h3>{table(inp.qc_summary)}{shown['qc']}"
        f"<h3>Vocabulary coverage</h3>{table(inp.vocab)}{unmapped}"
        f"<h3>Batches</h3>{table(batch_tab)}"
        f"<h3>Class sizes</h3>{shown['class_sizes']}{details('Class sizes as a table', table(counts))}"
        "</section>"
    )


def training_section(inp: TissueInputs, shown: dict[str, str], facts: dict, index_href: str = "") -> str:
    """Training curves; the pretraining notes (:func:`celler.report.pretraining.tissue_notes`) link the index
    page (``index_href``), which explains the pretraining loss spikes once."""
    parts = pretraining.tissue_notes(inp.pretrain_config, inp.pretrain_log is not None, facts, index_href)
    if facts.get("selected") is not None:
        parts.append(note(f"Fine-tuning kept epoch {facts['selected'] + 1} (dashed line)."))
    return f'<section id="training"><h2>Training</h2>{"".join(parts)}{shown["training_curves"]}</section>'


def per_class_rows(per_class: pd.DataFrame, train_counts: pd.Series) -> pd.DataFrame:
    """The per-class table as shown: a class without test cells says so (its precision, recall and F1 are
    undefined, not 0), and a training class that is neither in the test cells nor predicted gets its row too."""
    df = per_class.set_index("class") if "class" in per_class else per_class.copy()
    missing = [c for c in train_counts.index.astype(str) if c not in df.index]
    if missing:
        extra = pd.DataFrame(index=pd.Index(missing, name=df.index.name))
        extra["support"] = 0
        df = pd.concat([df, extra])
    if "train_count" in df:
        df["train_count"] = train_counts.reindex(df.index.astype(str)).fillna(0).astype(int).to_numpy()
    none = df["support"].fillna(0).astype(int).eq(0).to_numpy()
    df["note"] = ["no test cells" if n else "" for n in none]
    for col in ("precision", "recall", "f1"):
        if col in df:
            df[col] = df[col].astype(float).where(~none, float("nan"))
    if "rare" in df:
        df["rare"] = df["rare"].eq(True)  # a row added here has no flag: not rare
    return df.reset_index().rename(columns={"index": "class"})


def results_section(
    inp: TissueInputs, summary: pd.DataFrame, shown: dict[str, str], facts: dict, rare_fraction: float
) -> str:
    n_seeds = int(summary["n_seeds"].max()) if len(summary) else 1
    if inp.eval_metrics is None or inp.eval_metrics.empty:
        what = "Celler only (no baseline evaluation in this run: set <code>evaluate</code> in the config)."
    else:
        what = "Celler and the baselines on the same test cells."
    spread = (
        f"Mean ± std over {n_seeds} seeds."
        if n_seeds > 1
        else "One seed, so no spread is shown (set <code>evaluate.seeds: [0, 1, 2]</code> for mean ± std)."
    )
    per_class = "".join(
        details(f"Celler per-class metrics ({level})",
                table(per_class_rows(part.drop(columns="level"), inp.train_counts(level)))
                + note("train_count: the training cells the model was fitted on, without the validation cells "
                       "that chose its epoch and calibration (the class-size figure counts both)."), open_=True)
        for level, part in inp.celler_per_class.groupby("level", sort=False)
    )
    result = facts["results"][inp.level]
    open_set = (
        note(
            f"{result['n_open']} test cells belong to classes without training cells (open set) and "
            "are left out of the confusion matrix."
        )
        if result["n_open"]
        else ""
    )
    how = (
        f"{what} {spread} Celler highlighted; the best value per level in bold. Rare recall: mean recall "
        f"over the classes below {rare_fraction:.0%} of the training cells."
    ) + _levels_text(inp)
    return (
        '<section id="results"><h2>Results</h2>'
        f"<h3>Metrics</h3>{note(how)}{metric_table(summary)}"
        f"<h3>Per-class F1 vs class size</h3>{shown['f1_vs_size']}{per_class}"
        f"<h3>Confusion matrix</h3>{open_set}{note(baseline_note(facts.get('baseline'), inp))}{shown['confusion']}"
        f"<h3>Unassigned cells and low-confidence calls</h3>{note(_unassigned_text(facts['unassigned']))}"
        f"{shown['novelty']}{shown['confidence']}{shown['confidence_true']}"
        "</section>"
    )


def _levels_text(inp: TissueInputs) -> str:
    """For a two-level tissue: how the parent calls are made and how often a cell's two calls disagree."""
    from celler.evaluate.metrics import hierarchy_disagreement

    sub_to_parent = inp.labels.get("subclass_to_parent") or {}
    if "parent" not in inp.levels or not sub_to_parent:
        return ""
    sub = inp.predictions_at("subclass").set_index("cell")["predicted"]
    par = inp.predictions_at("parent").set_index("cell")["predicted"]
    share = hierarchy_disagreement(sub, par, sub_to_parent)
    return (f" The parent level has its own head, trained with the subclass head on the same readout (not "
            f"derived from the subclass call): {share:.1%} of the test cells ({round(share * len(sub)):,}) get a "
            "parent call that is not their subclass call's parent.")


def _cut_cells(c: dict) -> str:
    """Which cells set the novelty cut (celler.model.novelty; celler.train.crossfit below 50 validation cells)."""
    if "n_val" not in c:
        return ""
    text = f"; set on {c['n_val']:,} validation cells"
    if c.get("out_of_fold_cells"):
        text += (f" and {c['out_of_fold_cells']:,} training cells, each scored by a model trained without it "
                 "(too few validation cells for a cut of their own)")
    return text


def _unassigned_text(u: dict) -> str:
    if u["novelty"]:
        rule = (f"<code>celler annotate</code> labels a cell Unassigned when its novelty passes the model's cut "
                f"({u['cut']:.1f}, novelty.npz{_cut_cells(u.get('cut_cells') or {})}): unlike every training type, "
                "whatever its confidence")
    else:
        rule = ("this model has no novelty index (trained before novelty scores), so Unassigned falls back to "
                "its confidence thresholds")
    caught = (
        ""
        if pd.isna(u["wrong_caught"])
        else f" Unassigned takes {u['wrong_caught']:.0%} of the wrong calls and {u['right_lost']:.0%} of the "
        "right ones."
    )
    return (
        f"{rule}. It leaves {u['n']:,} of these test cells ({u['share']:.1%}) Unassigned.{caught} A call below "
        f"its class's confidence threshold keeps its label and is flagged <code>low_confidence</code> "
        f"({u['low_share']:.1%} of the test cells). Novelty, confidence and both flags are columns of "
        "<code>celler/predictions.tsv</code>."
    )


def embeddings_section(shown: dict[str, str]) -> str:
    return f'<section id="embeddings"><h2>Embeddings</h2>{shown["umap"]}</section>'


def markers_section(
    panel: MarkerPanel, marker_tissue: str | None, shown: dict[str, str], label_note: str | None = None
) -> str:
    how = (
        "Columns: genes chosen from the <b>training</b> cells grouped by their <b>true</b> label (Wilcoxon "
        "<code>rank_genes_groups</code>, significant and up in the type, peaking there, most specific "
        "first), so both plots below share one gene panel and compare column by column. Ribosomal-protein "
        "and mitochondrial genes are left out"
        + (f" ({len(panel.excluded)} gene{'s' if len(panel.excluded) != 1 else ''} here)" if panel.excluded else "")
        + ". <b>*</b>: a known marker (PanglaoDB, CellMarker 2.0, ScType) that this data confirms: up in its "
        "type against the rest and highest on average there; every confirmed one (of a type's ten most listed) is "
        "a column, so a type with many gets more columns. Dot size: share of the row's cells expressing "
        "the gene; colour: mean log-normalised expression over the gene's highest mean in either plot."
    )
    parts = [note(how)]
    if label_note:  # the rows are the labels: a wrong label shows as a type "expressing" another's markers
        parts.append(note('<b>Noisy labels</b>: the rows group cells by labels this page warns about (see '
                          '<a href="#summary">Summary</a>); a marker lit in the "wrong" row may be wrong labels.'))
    if panel.anonymised:
        parts.append(
            note(
                "<b>The gene names of this dataset are anonymised</b> (e.g. <code>gene_000</code>): no "
                "known marker can be matched, so every column is data-driven."
            )
        )
    if panel.known is not None and len(panel.known):
        parts.append(
            details(
                f"Known markers of tissue '{marker_tissue}' and what this data says about them",
                _known_table(panel.known),
            )
        )
        absent = panel.known[panel.known["status"] == "absent from the gene panel"]
        if len(absent):
            parts.append(
                note(
                    "Known markers absent from this dataset's gene panel: "
                    + "; ".join(
                        f"{html.escape(t)}: {names(g['gene'], 8)}"
                        for t, g in absent.groupby("label", sort=False)
                    )
                    + "."
                )
            )
    elif marker_tissue and not panel.anonymised:
        parts.append(
            note(
                f'No cell type of the marker tables for "{html.escape(marker_tissue)}" matched these labels.'
            )
        )
    elif not marker_tissue and not panel.anonymised:
        parts.append(
            note("No <code>marker_tissue</code> configured for this tissue: data-driven markers only.")
        )
    return (
        f'<section id="markers"><h2>Marker genes</h2>{"".join(parts)}'
        f"{shown['dotplot_true']}{shown['dotplot_predicted']}</section>"
    )


def _known_table(known: pd.DataFrame) -> str:
    """One row per type: its confirmed known markers, those the data contradicts (and where they peak)."""
    rows = []
    for label, part in known.groupby("label", sort=False):
        ok = part[part["status"] == CONFIRMED]
        off = part[part["status"].str.startswith("not enriched")]
        other = part[
            ~part.index.isin(ok.index)
            & ~part.index.isin(off.index)
            & (part["status"] != "absent from the gene panel")
        ]
        rows.append(
            {
                "cell type": label,
                "confirmed here": ", ".join(ok["gene"]) or "–",
                "not enriched here (highest in)": "; ".join(
                    f"{g} ({h})" for g, h in zip(off["gene"], off["highest_in"], strict=True)
                )
                or "–",
                "other": "; ".join(f"{g}: {s}" for g, s in zip(other["gene"], other["status"], strict=True))
                or "–",
            }
        )
    return note("The tables' top markers of each type (most votes across the three tables first).") + table(
        pd.DataFrame(rows)
    )
