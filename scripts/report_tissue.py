"""Snakemake script: HTML report and figures of one tissue (logic in celler.report.build_tissue_report)."""

from pathlib import Path

from celler.errors import run_guarded
from celler.report.tissue import build_tissue_report

sm = snakemake  # noqa: F821 (injected by Snakemake)
pretrained = sm.input.pretrained or None  # the pretrained model directory, or none (scratch / scGPT weights)
pretrain_log = Path(pretrained) / "train_log.csv" if pretrained else None
run_guarded(
    lambda: build_tissue_report(
        sm.wildcards.tissue,
        Path(sm.input.expr).parent.parent,
        sm.output.html,
        marker_tissue=sm.params.marker_tissue,
        markers_dir=Path(sm.input.markers[0]).parent,
        figures_dir=Path(sm.output.qc).parent,
        pretrain_log=pretrain_log,
        evaluation=bool(sm.input.evaluation),
        rare_fraction=sm.params.rare_fraction,
        run_config=sm.config,
        index_html=sm.params.index,
        label_note=sm.params.label_note,
    ),
    log_path=sm.log[0],
)
