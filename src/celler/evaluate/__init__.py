"""Evaluate: every method scored on the same cells, and the paper's tables.

:mod:`~celler.evaluate.metrics` (macro and per-class scores, rare-class recall, mean ± std over seeds),
:mod:`~celler.evaluate.experiments` (runs on shared splits, the loss ablation and its tables),
:mod:`~celler.evaluate.baselines` (CellTypist, ACTINN, SingleCellNet, logistic regression, kNN on the same
cells), :mod:`~celler.evaluate.markers` (known markers and the marker-gene panel of each cell type).
"""

__all__ = ["baselines", "experiments", "markers", "metrics"]
