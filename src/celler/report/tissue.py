"""The report of one tissue: read its results, draw the figures, write one self-contained HTML page."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

from celler.evaluate import markers as mk
from celler.evaluate.metrics import SCALAR_METRICS, summarise
from celler.report import plots, sections
from celler.report.figures import FIGURES, class_counts, tissue_figures
from celler.report.inputs import TissueInputs, load_tissue
from celler.report.page import DPI, img, page
from celler.report.provenance import provenance_section

log = logging.getLogger(__name__)


def build_tissue_report(
    tissue: str,
    results_dir: str | Path,
    out_html: str | Path,
    *,
    marker_tissue: str | None = None,
    markers_dir: str | Path | None = None,
    figures_dir: str | Path | None = None,
    pretrain_log: str | Path | None = None,
    evaluation: bool = True,
    rare_fraction: float = 0.03,
    qc_thresholds: Mapping[str, float] | None = None,
    run_config: Mapping | None = None,
    index_html: str | Path | None = None,
    label_note: str | None = None,
) -> Path:
    """Write the HTML report of one tissue and its figures.

    Reads ``{results_dir}/{tissue}/``: ``qc/`` (cells, genes, summary), ``vocab/report.tsv``, ``expr.h5ad``,
    ``model/`` (``train_log.csv``, ``labels.json``, ``config.json``, ``calibration.json``, ``model.pt``),
    ``celler/`` (predictions, metrics, per_class, embeddings), with ``evaluation``
    ``evaluation/{metrics,per_class}.tsv`` when they exist, and ``results_dir/benchmarks/`` (wall times).
    ``pretrain_log``: the pretraining ``train_log.csv`` (its ``config.json`` beside it; none: fine-tuning
    curves only). ``marker_tissue``: the tissue name in the marker tables (none: data-driven markers only);
    ``markers_dir``: the tables' folder (default ``resources/markers``). ``rare_fraction``: the rare-class
    threshold the evaluation used. ``run_config``: the workflow configuration that ran (shown, and the
    source of ``qc_thresholds`` when those are not given). ``index_html``: the index page the report links
    back to (default ``report_index.html`` one folder above the report's). ``label_note``: a warning about the
    tissue's labels (config ``tissues.<tissue>.label_note``; default: ``run_config``'s), boxed at the top.

    Writes ``out_html`` and one PNG per entry of :data:`FIGURES` to ``figures_dir`` (default: ``figures/``
    next to ``out_html``). Returns the HTML path.
    """
    from celler.data.io import atomic_path

    out_html = Path(out_html)
    fig_dir = Path(figures_dir) if figures_dir is not None else out_html.parent / "figures"
    index_html = Path(index_html) if index_html is not None else out_html.parent.parent / "report_index.html"
    if qc_thresholds is None and run_config:
        from celler.config import all_datasets

        qc_thresholds = asdict(all_datasets(run_config)[tissue].qc)
    if label_note is None and run_config:
        label_note = ((run_config.get("tissues") or {}).get(tissue) or {}).get("label_note")
    inp = load_tissue(tissue, Path(results_dir), pretrain_log, evaluation=evaluation)
    figs, facts = tissue_figures(
        inp,
        known=_known(inp, marker_tissue, markers_dir),
        qc_thresholds=qc_thresholds,
        rare_fraction=rare_fraction,
    )
    shown = {}
    for name, fig in figs.items():
        path = plots.save_figure(fig, fig_dir / f"{name}.png", dpi=DPI)
        shown[name] = img(path, FIGURES[name], sections.CAPTIONS[name].format(rare=rare_fraction))
    log.info("wrote %d figures to %s", len(figs), fig_dir)
    back = Path(os.path.relpath(index_html, out_html.parent)).as_posix()
    body = "\n".join(
        [
            # what a biologist reads first: the result, its details, the markers; how it was made after
            sections.summary_section(
                inp, sections.source_links(out_html.parent, Path(results_dir) / tissue), label_note
            ),
            sections.results_section(inp, _metric_summary(inp), shown, facts, rare_fraction),
            sections.markers_section(facts["panel"], marker_tissue, shown, label_note),
            sections.embeddings_section(shown),
            sections.data_section(inp, shown, class_counts(inp)),
            sections.training_section(inp, shown, facts, back),
            provenance_section(inp, run_config),
        ]
    )
    html = page(
        f"Celler report: {tissue}",
        "Cell-type annotation for long-tailed labels",
        body,
        sections.NAV,
        back=back,
    )
    with atomic_path(out_html) as tmp:
        Path(tmp).write_text(html, encoding="utf-8")
    log.info("wrote %s (%.1f MB)", out_html, out_html.stat().st_size / 1e6)
    return out_html


def _known(inp: TissueInputs, marker_tissue: str | None, markers_dir):
    """The marker tables' entries for the tissue's labels (all genes, so absent ones can be named)."""
    if not marker_tissue or mk.anonymised(inp.adata.var_names):
        return None
    known = mk.known_markers(
        inp.order(), mk.load_marker_tables(markers_dir), None, tissue=marker_tissue, n=None
    )
    return known if len(known) else None


def _metric_summary(inp: TissueInputs):
    """Mean / std over seeds per level and method, levels in model order and Celler first."""
    from celler.evaluate.baselines import BASELINES

    order = ("celler", *BASELINES)
    if inp.eval_metrics is not None and not inp.eval_metrics.empty:
        runs = inp.eval_metrics
    else:
        runs = inp.celler_metrics.assign(method="celler", seed=0)
    runs = runs[["method", "seed", "level", *[m for m in SCALAR_METRICS if m in runs]]]
    summary = summarise(runs, seed_col="seed")
    lev = summary["level"].map({lv: i for i, lv in enumerate(inp.levels)}).fillna(len(inp.levels))
    meth = summary["method"].map(lambda m: order.index(m) if m in order else len(order))
    return summary.assign(_l=lev, _m=meth).sort_values(["_l", "_m"], kind="stable").drop(columns=["_l", "_m"])
