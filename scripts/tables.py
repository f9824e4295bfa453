"""Snakemake script: the paper's Table 2 and Table 3 analogues over all tissues."""
from pathlib import Path

from celler.errors import run_guarded
from celler.evaluate.experiments import comparison_tables

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_guarded(lambda: comparison_tables(sm.params.files, Path(sm.output[0]).parent), log_path=sm.log[0])
