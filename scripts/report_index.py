"""Snakemake script: the cross-tissue index page (logic in celler.report.build_index)."""

from pathlib import Path

from celler.errors import run_guarded
from celler.report.index import build_index

sm = snakemake  # noqa: F821 (injected by Snakemake)
reports = {Path(p).parent.name: p for p in sm.input.reports}
pretrain_log = Path(sm.input.pretrained) / "train_log.csv" if sm.input.pretrained else None  # the shared model
run_guarded(lambda: build_index(reports, sm.output[0], pretrain_log=pretrain_log), log_path=sm.log[0])
