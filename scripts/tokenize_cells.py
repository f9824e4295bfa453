"""Snakemake script: bin a dataset into a token store (logic in celler.stages.tokenize_stage)."""
from celler.config import all_datasets
from celler.errors import run_guarded
from celler.stages import tokenize_stage

sm = snakemake  # noqa: F821 (injected by Snakemake)
spec = all_datasets(sm.config)[sm.wildcards.dataset]
run_guarded(
    lambda: tokenize_stage(spec, cells_path=sm.input.cells, genes_path=sm.input.genes, mapping_path=sm.input.mapping,
                           vocab_path=sm.input.vocab, out=sm.output[0], n_bins=sm.params.n_bins,
                           scheme=sm.params.binning, normalize=sm.params.normalize, chunk_size=sm.params.chunk_size),
    log_path=sm.log[0],
)
