"""Snakemake script: score every run of one tissue (celler.evaluate.experiments.evaluate_stage)."""
import pandas as pd

from celler.errors import run_guarded
from celler.evaluate.experiments import evaluate_stage

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_guarded(
    lambda: evaluate_stage(pd.DataFrame(sm.params.runs), sm.input.cells, metrics_out=sm.output.metrics,
                           per_class_out=sm.output.per_class, rare_fraction=sm.params.rare_fraction),
    log_path=sm.log[0],
)
