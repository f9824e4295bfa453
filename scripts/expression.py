"""Snakemake script: the QC'd, mapped, log-normalised matrix of a tissue for baselines and plots."""
from celler.config import all_datasets
from celler.errors import run_guarded
from celler.stages import expression_stage

sm = snakemake  # noqa: F821 (injected by Snakemake)
spec = all_datasets(sm.config)[sm.wildcards.tissue]
run_guarded(
    lambda: expression_stage(spec, cells_path=sm.input.cells, genes_path=sm.input.genes, mapping_path=sm.input.mapping,
                             vocab_path=sm.input.vocab, out=sm.output[0]),
    log_path=sm.log[0],
)
