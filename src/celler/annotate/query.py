"""A query made into a token store with the model's settings: genes mapped, values normalised as in
training, bins from the query's own batches (see the package docstring)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from celler.annotate.model_dir import TrainedModel
from celler.errors import CellerError

log = logging.getLogger(__name__)


def query_file(adata_or_path, tmp: Path, *, matrix: str, batch_key,
                gene_symbols) -> tuple[Path, pd.DataFrame]:
    """The query as an .h5ad path (an in-memory AnnData is written to ``tmp`` first) and its obs."""
    from celler.data.io import MatrixReader

    if isinstance(adata_or_path, str | Path):
        path = Path(adata_or_path)
        with MatrixReader(path, matrix) as reader:  # checks existence, suffix, readability, the matrix
            obs = reader.obs.copy()
        return path, obs
    try:
        import anndata as ad
    except ImportError as e:  # pragma: no cover
        raise CellerError(str(e)) from e
    if not isinstance(adata_or_path, ad.AnnData):
        msg = f"query must be an AnnData or a path to an .h5ad file, got {type(adata_or_path).__name__}"
        raise CellerError(msg)
    a = adata_or_path
    if matrix == "X":
        x, var = a.X, a.var
    elif matrix == "raw":
        if a.raw is None:
            msg = "query: matrix 'raw' requested but the AnnData has no .raw"
            raise CellerError(msg)
        x, var = a.raw.X, a.raw.var
    elif matrix.startswith("layers/") and matrix[7:] in a.layers:
        x, var = a.layers[matrix[7:]], a.var
    else:
        msg = f"query: matrix {matrix!r} not found; use X, raw or layers/NAME"
        raise CellerError(msg)
    from celler.data.vocab import ensembl_column

    keep = [c for c in (gene_symbols, ensembl_column(var)) if c]  # what map_genes may read
    obs = a.obs[[c for c in a.obs.columns if c == batch_key]].copy() if batch_key else pd.DataFrame(
        index=a.obs_names)
    var_out = var[[c for c in var.columns if c in keep]].copy()
    path = tmp / "query.h5ad"
    ad.AnnData(X=x, obs=obs, var=var_out).write_h5ad(path)
    return path, a.obs


def tokenize_query(path: Path, model: TrainedModel, out: Path, *, batch_key=None, matrix: str = "X",
                   gene_symbols=None, min_overlap: float = 0.3, chunk_size: int = 20_000):
    """Map, normalise and bin the query as the model's training data was (module docstring, steps 1-3);
    returns the temporary token store and the coverage figures."""
    from celler.config import DatasetSpec, InputFile
    from celler.data.io import MatrixReader
    from celler.data.qc import detect_kind
    from celler.data.tokens import TokenStore, tokenize
    from celler.data.vocab import load_ensembl_table, map_genes
    from celler.resources import resources_dir

    with MatrixReader(path, matrix) as reader:
        if reader.n_cells == 0:
            msg = f"{path}: the query has no cells"
            raise CellerError(msg)
        var = reader.var.copy()
        var.index = var.index.astype(str)
        if not var.index.is_unique:
            dup = var.index[var.index.duplicated()][0]
            msg = f"{path}: duplicate gene name {dup!r}; make names unique (adata.var_names_make_unique())"
            raise CellerError(msg)
        if batch_key and batch_key not in reader.obs.columns:
            have = ", ".join(map(str, reader.obs.columns))
            msg = f"{path}: batch column {batch_key!r} not found in obs (have {have})"
            raise CellerError(msg)
        kind = None
        for _, x in reader.chunks(chunk_size):
            if x.nnz:
                kind = detect_kind(x.data)
                break
        if kind is None:
            msg = f"{path}: the expression matrix is all zeros; nothing to annotate"
            raise CellerError(msg)
        obs = reader.obs
        batch = (obs[batch_key].astype(str).to_numpy() if batch_key
                 else np.full(reader.n_cells, "query", object))
        cell_names = obs.index.astype(str)
    ens = resources_dir() / "ensembl_to_symbol.tsv.gz"
    mapping = map_genes(var, model.vocab, mode="match", symbol_column=gene_symbols,
                        ensembl_to_symbol=load_ensembl_table(ens if ens.exists() else None),
                        min_overlap=0.0, source=str(path))
    tok = mapping.table["token_id"].to_numpy()
    special = np.isin(tok, [model.vocab.token_to_id[t] for t in ("<pad>", "<cls>", "<eoc>")])
    known = (tok >= 0) & ~special
    if model.genes is not None:
        known &= np.isin(tok, model.genes)
        n_model = len(model.genes)
    else:
        n_model = len(model.vocab) - 3
    n_found = len(np.unique(tok[known]))
    coverage = {"query_genes": len(var), "query_genes_used": int(known.sum()), "model_genes": int(n_model),
                "model_genes_found": int(n_found), "model_coverage": n_found / max(n_model, 1),
                "query_coverage": float(known.mean()) if len(var) else 0.0}
    log.info("gene coverage: %d of the model's %d genes found in the query (%.1f%%); %d of the query's %d "
             "genes used (%.1f%%)", n_found, n_model, 100 * coverage["model_coverage"], known.sum(), len(var),
             100 * coverage["query_coverage"])
    if n_found == 0:
        example = ", ".join(var.index[:3])
        msg = (f"{path}: no gene of the query is one of the model's {n_model} genes (query genes look like "
               f"{example}); use gene symbols or Ensembl ids as var_names, or pass the var column with "
               "symbols")
        raise CellerError(msg)
    share = coverage["model_coverage"] if model.genes is not None else coverage["query_coverage"]
    if share < min_overlap:
        what = ("of the model's genes are in the query" if model.genes is not None
                else "of the query's genes are known")
        msg = (f"{path}: only {n_found} genes ({share:.1%}) {what} (minimum {min_overlap:.0%}); predictions "
               f"would rest on too few genes. Check the gene names or lower min_overlap")
        raise CellerError(msg)
    genes = pd.DataFrame({"kept": known}, index=var.index)
    cells = pd.DataFrame({"input": str(path), "kind": kind, "batch": batch, "split": "query", "label": None,
                          "parent": None, "kept": True}, index=cell_names)
    scheme = model.token_meta.get("binning", "per_batch")
    small = pd.Series(batch).value_counts()
    small = small[small < 50]
    if scheme == "per_batch" and len(small):
        log.warning("query batches with fewer than 50 cells get noisy bin edges: %s", small.to_dict())
    spec = DatasetSpec(name=Path(path).stem, inputs=(InputFile(Path(path)),), matrix=matrix)
    tokenize(spec, cells, genes, mapping, out, n_bins=int(model.token_meta["n_bins"]), scheme=scheme,
             normalize=bool(model.token_meta.get("normalize", True)), chunk_size=chunk_size)
    coverage["input_kind"] = kind
    return TokenStore(out), coverage


# -------------------------------------------------------------------------------------------- predict
