"""Snakemake script: one baseline run on a tissue's shared split (celler.evaluate.experiments.baseline_stage)."""
from celler.errors import run_guarded
from celler.evaluate.experiments import baseline_stage

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_guarded(
    lambda: baseline_stage(sm.input.expr, method=sm.wildcards.method, seed=int(sm.wildcards.seed),
                           train_cells_path=sm.input.train_cells, out=sm.output[0], params=sm.params.settings),
    log_path=sm.log[0],
)
