"""Snakemake script: QC tables and plot for one dataset (logic in celler.stages.qc_stage)."""
from celler.config import all_datasets
from celler.errors import run_guarded
from celler.stages import qc_stage

sm = snakemake  # noqa: F821 (injected by Snakemake)
spec = all_datasets(sm.config)[sm.wildcards.dataset]
run_guarded(
    lambda: qc_stage(spec, cells_out=sm.output.cells, genes_out=sm.output.genes, summary_out=sm.output.summary,
                     plot_out=sm.output.plot, chunk_size=sm.params.chunk_size),
    log_path=sm.log[0],
)
