"""The index page: the cross-tissue summary (Celler against the best baseline per tissue, MultiQC's
general-statistics table as the model), one sentence saying who wins, and links to the tissue pages."""

from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from celler.report import pretraining
from celler.report.comparison import TIE, compare, comparison_table, verdict
from celler.report.inputs import evaluation_tables
from celler.report.page import note, page


def summary_rows(reports: Mapping[str, Path]) -> pd.DataFrame:
    """:func:`~celler.report.comparison.compare` rows of every tissue with an evaluation, main level first;
    a ``tissue`` column and ``main`` (the tissue's first level) added. Celler alone (its
    ``celler/metrics.tsv``)
    where no baseline ran."""
    parts = []
    for tissue, report in reports.items():
        d = Path(report).parent
        metrics, _ = evaluation_tables(d)
        labels = d / "model" / "labels.json"
        levels = list(json.loads(labels.read_text())["levels"]) if labels.exists() else None
        if metrics is None or metrics.empty:
            own = d / "celler" / "metrics.tsv"
            if not own.exists():
                continue
            metrics = pd.read_csv(own, sep="\t").assign(method="celler", seed=0)
        rows = compare(metrics, levels)
        if len(rows):
            parts.append(rows.assign(tissue=tissue, main=rows["level"].iloc[0]))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def build_index(
    tissues: Sequence[str] | Mapping[str, str | Path], out_html: str | Path, *, pretrain_log: str | Path | None = None
) -> Path:
    """Write the index page.

    ``tissues``: tissue names (reports at ``<folder of out_html>/<tissue>/report.html``) or a mapping
    tissue ->
    report path. Each tissue's numbers come from ``evaluation/metrics.tsv`` next to its report (Celler's
    ``celler/metrics.tsv`` alone when there is no evaluation). ``pretrain_log``: the shared pretraining's
    ``train_log.csv``, whose loss spikes the page explains once for every tissue page
    (:func:`celler.report.pretraining.index_section`; none: no such section).
    """
    from celler.data.io import atomic_path

    out_html = Path(out_html)
    base = out_html.parent
    reports = {
        t: Path(p)
        for t, p in (
            tissues.items()
            if isinstance(tissues, Mapping)
            else ((t, base / t / "report.html") for t in tissues)
        )
    }
    rows = summary_rows(reports)
    links = {t: _link(t, r, base) for t, r in reports.items()}
    if len(rows):
        main = rows[rows["level"] == rows["main"]]
        seeds = sorted(set(rows["n_seeds"]))
        models = {t: model_summary(Path(r).parent) for t, r in reports.items()}
        lead = [("tissue", [f'<td class="txt">{links[t]}</td>' for t in rows["tissue"]]),
                ("model", [f'<td class="txt">{html.escape(models[t])}</td>' for t in rows["tissue"]])]
        body = (
            f'<h2>Results across tissues</h2><p class="headline">{html.escape(verdict(main))}</p>'
            + comparison_table(rows, lead=lead)
            + note(
                f"Each tissue's test cells, means over {'/'.join(map(str, seeds))} "
                f"seed{'s' if seeds != [1] else ''} of the "
                "evaluation table (<code>results/{tissue}/evaluation/metrics.tsv</code>); the best baseline "
                f"is chosen per metric, tissue and level. Blue: Celler ahead, orange: behind, grey: level "
                f"(within {TIE}). The first row of a tissue is its main (finest) label level; the "
                "sentence above is about those rows."
            )
        )
    else:
        body = note("No tissue has results yet.")
    missing = [t for t in reports if t not in set(rows.get("tissue", []))]
    if missing:
        body += "<h3>Without results</h3><ul>" + "".join(f"<li>{links[t]}</li>" for t in missing) + "</ul>"
    body += pretraining.index_section(pretrain_log)
    n = len(reports)
    html_text = page("Celler reports", f"{n} tissue{'s' if n != 1 else ''}: Celler against the baselines", body)
    with atomic_path(out_html) as tmp:
        Path(tmp).write_text(html_text, encoding="utf-8")
    return out_html


#: a gene list that is mostly names like gene_484 has no biological markers (CBMC's anonymised panel)
ANONYMISED = re.compile(r"^gene_?\d+$", re.IGNORECASE)


def model_summary(tissue_dir: Path) -> str:
    """Which model made the calls (model/config.json): readout, where its weights started, the loss; and a flag
    when the tissue's genes are anonymised (model/genes.json), so its marker plots cannot be read biologically."""
    cfg_path, genes_path = tissue_dir / "model" / "config.json", tissue_dir / "model" / "genes.json"
    if not cfg_path.exists():
        return "–"
    cfg = json.loads(cfg_path.read_text())
    ft = cfg.get("finetune", {})
    pretrained = str(cfg.get("pretrained") or "")
    start = ("from scratch" if ft.get("init") == "scratch" or not pretrained
             else "the tissue's own continued pretraining" if Path(pretrained).name == "pretrained"
             else "the shared pretraining")
    loss = (cfg.get("chosen") or {}).get("loss") or ft.get("loss", "?")
    text = f"{ft.get('readout', '?')} readout, {start}, {loss} loss"
    if genes_path.exists():
        genes = json.loads(genes_path.read_text())
        if genes and sum(bool(ANONYMISED.match(str(g))) for g in genes) > len(genes) / 2:
            text += "; anonymised genes (no biological markers)"
    return text


def _link(tissue: str, report: Path, base: Path) -> str:
    href = html.escape(Path(os.path.relpath(report, base)).as_posix())
    return f'<a href="{href}">{html.escape(tissue)}</a>' + ("" if report.exists() else " (not built)")
