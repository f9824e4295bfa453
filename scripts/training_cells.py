"""Snakemake script: the training-cell list of one (tissue, imbalance, seed) (celler.evaluate.experiments)."""
from celler.errors import run_guarded
from celler.evaluate.experiments import training_cells_stage

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_guarded(
    lambda: training_cells_stage(sm.input[0], imbalance=sm.wildcards.imbalance, seed=int(sm.wildcards.seed),
                                 cells_out=sm.output.cells, table_out=sm.output.table),
    log_path=sm.log[0],
)
