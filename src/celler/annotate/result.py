"""What annotation returns: labels, confidences, top-k calls and embeddings, and their AnnData / CSV forms."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from celler.annotate.model_dir import UNASSIGNED
from celler.errors import CellerError


@dataclass
class AnnotationResult:
    """Per-cell predictions (``predictions``: label, confidence, parent, top-k, ...), the class probability
    matrix (cells x ``classes``), the Celler embeddings and run information (``info``)."""

    predictions: pd.DataFrame
    probabilities: np.ndarray
    classes: list[str]
    embeddings: np.ndarray
    info: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        n = len(self.predictions)
        un = float((self.predictions["label"] == UNASSIGNED).mean()) if n else 0.0
        cut = self.info.get("novelty_cut")
        return (f"AnnotationResult: {n} cells, {len(self.classes)} types, {un:.1%} {UNASSIGNED} ("
                + (f"novelty cut {cut:.3g}" if cut is not None else
                   f"threshold {self.info.get('threshold', float('nan')):.3g}") + "); top labels: "
                + ", ".join(f"{k} {v}" for k, v in self.predictions["label"].value_counts().head(4).items()))

    def summary_frequency(self, by: str = "label") -> pd.DataFrame:
        """Cells per predicted label (or ``by="majority_voting"``): count, share, mean confidence."""
        if by not in self.predictions:
            msg = f"no column {by!r} in the predictions (have {list(self.predictions)})"
            raise CellerError(msg)
        p = self.predictions
        g = p.groupby(p[by].astype(str), observed=True)
        out = pd.DataFrame({"n_cells": g.size(), "mean_confidence": g["confidence"].mean()})
        out["fraction"] = out["n_cells"] / max(len(p), 1)
        out = out.sort_values("n_cells", ascending=False)
        out.index.name = by
        return out[["n_cells", "fraction", "mean_confidence"]].reset_index()

    def to_csv(self, path) -> None:
        """The per-cell predictions as CSV (one row per cell, ``cell`` first), written atomically."""
        from celler.data.io import atomic_path

        with atomic_path(path) as tmp:
            self.predictions.rename_axis("cell").to_csv(tmp)

    def to_adata(self, adata, *, prefix: str = "celler_"):
        """Write the predictions into ``adata`` (matched by cell name) and return it.

        ``obs``: ``{prefix}label``, ``confidence``, ``low_confidence``, ``novelty``, ``parent_label`` (two-level
        models), ``top{k}_label`` /
        ``top{k}_prob``, ``n_genes`` (model genes detected), ``majority_voting`` / ``over_clustering`` when
        voted; ``obsm``: ``X_celler`` (embeddings), ``celler_proba`` (probabilities, columns =
        ``uns["celler"]["classes"]``); ``uns["celler"]``: model, threshold, temperature, coverage, ...
        """
        names = pd.Index(adata.obs_names.astype(str))
        pos = self.predictions.index.get_indexer(names)
        if (pos < 0).any():
            missing = names[pos < 0][:3].tolist()
            msg = (f"{int((pos < 0).sum())} cells of the AnnData (e.g. {missing}) are not in this annotation "
                   "result")
            raise CellerError(msg)
        p = self.predictions.iloc[pos]
        for col in p.columns:
            values = p[col].to_numpy()
            if p[col].dtype == object:
                values = pd.Categorical(values.astype(str))
            adata.obs[f"{prefix}{col}"] = values
        adata.obsm["X_celler"] = self.embeddings[pos]
        adata.obsm["celler_proba"] = self.probabilities[pos].astype(np.float32)
        adata.uns["celler"] = _h5ad_safe({**self.info, "classes": list(self.classes)})
        return adata


def _h5ad_safe(obj):
    """``obj`` with None dropped and numpy scalars made plain, so it can be stored in ``uns``."""
    if isinstance(obj, dict):
        return {str(k): _h5ad_safe(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list | tuple):
        return [_h5ad_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


# ------------------------------------------------------------------------------------------- annotate
