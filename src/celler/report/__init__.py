"""Self-contained HTML reports: one page per tissue (figures embedded as base64 PNG) and an index page.

One idea per module: :mod:`~celler.report.inputs` (what a report reads), :mod:`~celler.report.figures` (the
figures and the facts the page states), :mod:`~celler.report.comparison` (Celler against the best baseline),
:mod:`~celler.report.sections` (the tissue page's sections), :mod:`~celler.report.provenance` (versions,
configuration, wall times), :mod:`~celler.report.page` (HTML building blocks, CSS),
:mod:`~celler.report.tissue`
and :mod:`~celler.report.index` (the two pages).
"""

from celler.report.figures import FIGURES, umap_coords
from celler.report.index import build_index
from celler.report.tissue import build_tissue_report

__all__ = ["FIGURES", "build_index", "build_tissue_report", "umap_coords"]
