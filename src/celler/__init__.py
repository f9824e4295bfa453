"""Celler: cell-type annotation with a genomic language model trained for long-tailed labels.

One subpackage per stage, in the order the data flows (imports only go down this list):

* :mod:`celler.data`: a user's ``.h5ad`` files to token stores (QC, genes, bins; no torch)
* :mod:`celler.model`: the encoder, its heads, the classifier and what it reads
* :mod:`celler.train`: pretraining and fine-tuning, the long-tail losses
* :mod:`celler.evaluate`: metrics, runs on shared splits, the baselines, marker genes
* :mod:`celler.report`: figures and the HTML pages
* :mod:`celler.annotate`: new data through a trained model

Above them, :mod:`celler.stages` (the file-to-file functions the Snakemake scripts call), :mod:`celler.cli` and
:mod:`celler.preflight`; shared by all, :mod:`celler.config`, :mod:`celler.errors`, :mod:`celler.resources`.
"""

__version__ = "0.1.0"

from celler.errors import CellerError

__all__ = ["CellerError", "__version__"]
