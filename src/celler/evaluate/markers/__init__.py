"""Marker genes for a tissue's cell types: one gene panel, chosen from the training cells' true labels.

**Data-driven markers** (:func:`marker_panel`): :func:`scanpy.tl.rank_genes_groups` (Wilcoxon, each type
against the rest) on the *training* cells grouped by their *true* label, ribosomal-protein and mitochondrial
genes left out (:data:`EXCLUDE`: they are high in every cell). Among the significant up-regulated genes
(BH-adjusted p < 0.05) a type prefers, in this order, genes detected in at least 10 points more of its
cells than of the others (not EEF1A1, which every cell has), genes "clean" by scanpy's
``filter_rank_genes_groups`` defaults (in >= 25% of its cells, <= 50% of the others, >= 2-fold) and genes
whose mean peaks in it; ties go to the most specific (share of its cells expressing the gene minus that
share in the other cells), so a dot plot's dot sizes differ between rows. The same panel serves every
plot of a report (by true and by predicted label), so they compare column by column; a wrong prediction
cannot make its own "markers".

**Known markers** come from three tables shipped in ``resources/markers``: PanglaoDB (27 Mar 2020),
CellMarker 2.0 (human) and ScType. A table's cell type is matched to a dataset label by words, conservatively:
every word of the table's name (after light normalisation: case, plurals, "cells", ``+`` signs, a few
abbreviations such as NK / Treg / Mono / DC) must occur in the label, and per table only the most specific
matching names are used. So ``"T cells"`` and ``"T helper cells"`` both fit ``"CD4+ T helper"``, and only
``"T helper cells"`` is kept; ``"Naive B cells"`` does not fit ``"CD19+ B"``. A known marker is *confirmed*
(starred in the plots) only where this data agrees: significantly up in its type against the rest and
highest on average in that type; the others are listed with what the data shows instead (highest in another
type, absent from the gene panel, excluded, ...). Every confirmed marker is plotted, beyond the columns a
type is given if need be (a confirmed INS left out of the beta columns misled).
"""

from celler.evaluate.markers.panel import (
    ALPHA,
    ANONYMOUS,
    CLEAN,
    CONFIRMED,
    EXCLUDE,
    MarkerPanel,
    anonymised,
    dot_table,
    excluded,
    marker_budget,
    marker_panel,
)
from celler.evaluate.markers.tables import (
    MARKER_FILES,
    TISSUE_ALIASES,
    default_markers_dir,
    known_markers,
    load_marker_tables,
    match_cell_types,
    name_tokens,
    tissue_rows,
)

__all__ = [
    "ALPHA",
    "ANONYMOUS",
    "CLEAN",
    "CONFIRMED",
    "EXCLUDE",
    "MARKER_FILES",
    "TISSUE_ALIASES",
    "MarkerPanel",
    "anonymised",
    "default_markers_dir",
    "dot_table",
    "excluded",
    "known_markers",
    "load_marker_tables",
    "marker_budget",
    "marker_panel",
    "match_cell_types",
    "name_tokens",
    "tissue_rows",
]
