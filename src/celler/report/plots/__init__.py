"""Report figures: small functions over DataFrames / arrays, each returning a matplotlib Figure.

Figures are built with :class:`matplotlib.figure.Figure` directly (no pyplot state, any backend). Sizes grow
with the number of classes (up to ~60 stays readable): every class gets a fixed slot and the margins are sized
from the longest label, so tick labels never overlap. Categorical colours: Okabe-Ito (colour-blind safe) up to
8 classes, then tab20, then tab20 + tab20b + tab20c; continuous values use viridis. Celler is drawn with a
marker and colour no baseline uses. One module per part of a report: :mod:`~celler.report.plots.data` (QC, class
sizes, training), :mod:`~celler.report.plots.results` (F1, confidence, novelty), :mod:`~celler.report.plots.confusion`, :mod:`~celler.report.plots.embedding`,
:mod:`~celler.report.plots.markers`; :mod:`~celler.report.plots.base` holds what they share.
"""

from celler.report.plots.base import OKABE_ITO, PAGE_WIDTH_IN, empty_figure, palette, save_figure
from celler.report.plots.confusion import confusion_figure, confusion_heatmap, fraction_label
from celler.report.plots.data import (
    CONTINUED_PRETRAINING,
    SHARED_PRETRAINING,
    class_sizes,
    qc_distributions,
    qc_notes,
    selected_epoch,
    training_curves,
)
from celler.report.plots.embedding import umap_embedding
from celler.report.plots.markers import DOT_CELL, marker_dotplot
from celler.report.plots.results import confidence_by_class, f1_vs_size, novelty_by_type

__all__ = [
    "CONTINUED_PRETRAINING",
    "DOT_CELL",
    "OKABE_ITO",
    "PAGE_WIDTH_IN",
    "SHARED_PRETRAINING",
    "class_sizes",
    "confidence_by_class",
    "confusion_figure",
    "confusion_heatmap",
    "empty_figure",
    "f1_vs_size",
    "fraction_label",
    "marker_dotplot",
    "novelty_by_type",
    "palette",
    "qc_distributions",
    "qc_notes",
    "save_figure",
    "selected_epoch",
    "training_curves",
    "umap_embedding",
]
