"""Snakemake script: annotate one query .h5ad with its tissue's model (celler.annotate.annotate_file)."""
import torch

from celler.annotate import annotate_file
from celler.errors import run_guarded

sm = snakemake  # noqa: F821 (injected by Snakemake)
torch.set_num_threads(sm.threads)  # no more threads than the job was given: oversubscription is ~20x slower
run_guarded(
    lambda: annotate_file(sm.input.query, sm.input.model, out=sm.output.h5ad, csv=sm.output.csv,
                          labels_out=sm.output.labels, markers_out=sm.output.markers, **sm.params.settings),
    log_path=sm.log[0],
)
