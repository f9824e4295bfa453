"""Snakemake script: map a dataset's genes to the vocabulary (logic in celler.stages.map_stage)."""
from celler.config import all_datasets
from celler.errors import run_guarded
from celler.stages import map_stage

sm = snakemake  # noqa: F821 (injected by Snakemake)
spec = all_datasets(sm.config)[sm.wildcards.dataset]
run_guarded(
    lambda: map_stage(spec, genes_path=sm.input.genes, vocab_path=sm.input.vocab, ensembl_path=sm.input.ensembl or None,
                      mapping_out=sm.output.mapping, report_out=sm.output.report, vocab_out=sm.output.vocab),
    log_path=sm.log[0],
)
