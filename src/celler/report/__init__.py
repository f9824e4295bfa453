"""Self-contained HTML reports: one page per tissue (figures embedded as base64 PNG) and an index page.

One idea per module: :mod:`~celler.report.plots` (the figures, one module per part of a page),
:mod:`~celler.report.inputs` (what a report reads), :mod:`~celler.report.figures` (the
figures and the facts the page states), :mod:`~celler.report.comparison` (Celler against the best baseline),
:mod:`~celler.report.sections` (the tissue page's sections), :mod:`~celler.report.provenance` (versions,
configuration, wall times), :mod:`~celler.report.page` (HTML building blocks, CSS),
:mod:`~celler.report.tissue`
and :mod:`~celler.report.index` (the two pages).
"""

__all__ = ["comparison", "figures", "index", "inputs", "page", "plots", "provenance", "sections", "tissue"]
