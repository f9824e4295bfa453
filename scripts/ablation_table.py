"""Snakemake script: the loss ablation table (the paper's Table 4 analogue)."""
from celler.errors import run_guarded
from celler.evaluate.experiments import ablation_table

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_guarded(lambda: ablation_table(sm.params.files, sm.output[0]), log_path=sm.log[0])
