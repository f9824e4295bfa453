"""The file-to-file stage of ``celler annotate`` and the Snakemake rule: an annotated copy of the query (never
the query itself), a CSV, the label distribution and a marker dot plot."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from celler.annotate.model_dir import HETEROGENEOUS, UNASSIGNED
from celler.annotate.predict import annotate
from celler.annotate.result import AnnotationResult
from celler.errors import CellerError

log = logging.getLogger(__name__)


def annotate_file(query, model_dir, *, out, csv=None, labels_out=None, markers_out=None, force: bool = False,
                  **kwargs) -> AnnotationResult:
    """Annotate ``query`` (.h5ad) and write the annotated copy ``out`` (.h5ad), the per-cell CSV, the label
    distribution (TSV) and a marker dot plot of the predicted types; the query file is never modified.

    An output may replace an existing file, never the query, the model directory or a folder
    (:func:`celler.data.io.check_replaceable`; ``force`` allows a folder); this is checked before any work."""
    import anndata as ad

    from celler.data.io import atomic_path, check_replaceable

    query, out = Path(query), Path(out)
    if out.suffix != ".h5ad":
        msg = f"{out}: the annotated copy must be an .h5ad file"
        raise CellerError(msg)
    outputs = [Path(p) for p in (out, csv, labels_out, markers_out) if p]
    seen = [p.absolute() for p in outputs]
    for path in outputs:
        if seen.count(path.absolute()) > 1:
            msg = f"{path}: given for two outputs (--out and --csv?); give each output its own path"
            raise CellerError(msg)
    guard = {"inputs": (query, model_dir), "force": force}
    for path in outputs:
        check_replaceable(path, directory=False, **guard)
    result = annotate(query, model_dir, **kwargs)
    clock = time.perf_counter()
    adata = ad.read_h5ad(query)
    result.to_adata(adata)
    with atomic_path(out, **guard) as tmp:
        adata.write_h5ad(tmp)  # uncompressed, as CellTypist writes: gzip cost 5 s of 27 on 100k cells
    log.info("stage write the annotated copy: %.1f s", time.perf_counter() - clock)
    if csv:
        with atomic_path(csv, **guard) as tmp:
            result.predictions.rename_axis("cell").to_csv(tmp)
    by = "majority_voting" if "majority_voting" in result.predictions else "label"
    if labels_out:
        table = result.summary_frequency()
        if by != "label":
            voted = result.summary_frequency(by).rename(columns={by: "label"})
            table = table.merge(voted[["label", "n_cells"]], on="label", how="outer",
                                suffixes=("", "_majority_voting")).fillna(0)
        with atomic_path(labels_out, **guard) as tmp:
            table.to_csv(tmp, sep="\t", index=False)
    if markers_out:
        with atomic_path(markers_out, **guard) as tmp:
            marker_dotplot(adata, f"celler_{by}", tmp, matrix=kwargs.get("matrix", "X"),
                           title=f"{query.stem}: markers of the predicted types")
    return result


def marker_dotplot(adata, groupby: str, path, *, n_markers: int = 3, max_cells: int = 20_000,
                   matrix: str = "X", title: str = "", seed: int = 0) -> None:
    """A dot plot of the predicted types' top marker genes, drawn as the tissue reports draw theirs
    (:func:`celler.evaluate.markers.marker_panel`, :func:`celler.report.plots.marker_dotplot`; ribosomal and mitochondrial genes
    left out): rows types, columns genes. Types with fewer than 3 cells are left out (``Unassigned`` /
    ``Heterogeneous`` last); at most ``max_cells`` cells are used."""
    import anndata as ad
    import scanpy as sc

    from celler.data.io import to_csr
    from celler.data.qc import detect_kind
    from celler.evaluate import markers as mk
    from celler.report import plots

    raw = matrix == "raw" and adata.raw is not None
    x = adata.raw.X if raw else (adata.layers[matrix[7:]] if matrix.startswith("layers/") else adata.X)
    a = ad.AnnData(X=to_csr(x), obs=pd.DataFrame({"group": adata.obs[groupby].astype(str).to_numpy()},
                                                 index=adata.obs_names),
                   var=pd.DataFrame(index=adata.raw.var_names if raw else adata.var_names))
    a.var_names_make_unique()
    if a.n_obs > max_cells:
        a = a[np.random.default_rng(seed).choice(a.n_obs, max_cells, replace=False)].copy()
    if detect_kind(a.X.data) == "counts":
        sc.pp.normalize_total(a, target_sum=1e4)
        sc.pp.log1p(a)
    sizes = a.obs["group"].value_counts()
    groups = sorted(sizes[sizes >= 3].index, key=lambda g: (g in (UNASSIGNED, HETEROGENEOUS), -sizes[g]))
    title = title or "markers of the predicted types"
    if len(groups) >= 2:
        a = a[a.obs["group"].isin(groups)].copy()
        panel = mk.marker_panel(a, "group", order=groups, n_ranked=n_markers, n_known=0)
        fig = plots.marker_dotplot(mk.dot_table(a, "group", panel.gene_list, order=groups), markers=panel.genes,
                                   title=title)
    else:
        fig = plots.empty_figure("fewer than two predicted types with 3+ cells: no markers to compare")
    plots.save_figure(fig, path)
