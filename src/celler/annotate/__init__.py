"""Annotate new data with a fine-tuned tissue model: ``annotate(query, model_dir) -> AnnotationResult``.

The query goes through the same steps as the training data, with the settings read from the model
directory (nothing else from the workflow is needed):

1. **Genes.** The query's genes are mapped onto the model's vocabulary (symbols, case-insensitive, then
   Ensembl ids) and restricted to the genes the model was trained on; duplicates are summed onto one token.
   Coverage is logged both ways (share of the model's genes found in the query, share of the query's genes
   the model knows); below ``min_overlap`` of the model's genes, or with none at all, it stops with a
   :class:`CellerError`. No QC: every cell is annotated (a cell with none of the model's genes is
   ``Unassigned``).
2. **Values.** Count input becomes log1p(counts per 10,000) when the model was trained normalised, log input
   is used as is (the detection of the QC step).
3. **Bins: which edges a new batch gets.** With ``per_batch`` binning (the Celler default) a training
   batch's bin edges are the quantiles of *that batch's own* non-zero values, so a bin means "this
   expression rank within its batch", not an absolute level; that is what cancels depth and
   platform differences between batches. A query batch is a new batch, so it gets edges computed the same
   way from its own non-zero values (over the model's genes) and the stored training edges are never
   applied to it: another study's edges would shift every bin by the depth difference. ``batch_key`` names
   the query's batch column (one set of edges per batch); without it the whole query is one batch, so
   keep it when the query mixes samples sequenced to very different depths. With ``per_cell`` binning
   each cell is binned by its own quantiles and no edges are needed. The query is tokenised by
   :func:`celler.data.tokens.tokenize` into a temporary token store (streamed in chunks, deleted afterwards;
   an in-memory AnnData is first written to a temporary .h5ad, since the tokenizer reads files).
4. **Prediction.** Cells are run through the classifier in batches of similar length (``batch_size="auto"``
   fits the free memory of the device; a CUDA out-of-memory halves it and retries), with a progress bar,
   on CPU or GPU; at most the training ``max_len`` tokens per cell, as in training.
5. **Confidence, novelty and Unassigned.** Two questions, two numbers. *Which known type?*
   ``softmax(logits / T)`` with the temperature ``T`` from ``calibration.json`` (per label level, see
   :mod:`celler.model.calibration`); a call below its class's confidence threshold keeps its label and is
   flagged ``low_confidence`` (``threshold=`` replaces the per-class thresholds by one cut). *A known type at
   all?* ``novelty``: the squared Mahalanobis distance to the nearest training type in the tissue's
   principal-axis space (:mod:`celler.model.novelty`, ``novelty.npz``); a cell above the model's cut is
   ``Unassigned`` at every level, whatever its confidence, and so is a cell with none of the model's genes.
   A rare type keeps its cells: its few training cells make it less confident, not further away. A model
   without ``novelty.npz`` (trained before it) falls back to its confidence thresholds, with a warning.
6. **Majority voting** (optional, as CellTypist): the cells are over-clustered (Leiden on a neighbour graph
   of the Celler embeddings) and each cluster gets its most frequent label; a cluster whose top label
   covers less than ``min_prop`` of its cells is ``Heterogeneous``.

:func:`annotate_file` is the file-to-file stage used by ``celler annotate`` and the Snakemake rule: it writes
an annotated copy of the query (the query file is never modified), a CSV, a label distribution table and
a marker dot plot of the predicted types.
"""

from celler.annotate.files import annotate_file, marker_dotplot
from celler.annotate.model_dir import HETEROGENEOUS, UNASSIGNED, TrainedModel, load_model, training_genes
from celler.annotate.predict import annotate, auto_batch_size, predict
from celler.annotate.query import tokenize_query
from celler.annotate.result import AnnotationResult
from celler.annotate.voting import vote

__all__ = [
    "HETEROGENEOUS", "UNASSIGNED", "AnnotationResult", "TrainedModel", "annotate", "annotate_file", "auto_batch_size",
    "load_model", "marker_dotplot", "predict", "tokenize_query", "training_genes", "vote",
]
