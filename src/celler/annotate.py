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
5. **Confidence.** ``softmax(logits / T)`` with the temperature ``T`` from ``calibration.json`` (per label
   level, written at the end of fine-tuning, see :mod:`celler.model.calibration`); cells whose top probability
   is below the threshold of its predicted class are ``Unassigned`` (per-class thresholds, so a rare class
   called with less confidence keeps its right calls; see :mod:`celler.model.calibration`), and so is a cell
   with none of the model's genes. ``threshold=`` replaces them all by one cut (0 assigns every cell that
   has any of the model's genes).
   Without a ``calibration.json`` the default is ``T = 1`` and threshold
   :data:`celler.model.calibration.DEFAULT_THRESHOLD` (0.5).
6. **Majority voting** (optional, as CellTypist): the cells are over-clustered (Leiden on a neighbour graph
   of the Celler embeddings) and each cluster gets its most frequent label; a cluster whose top label
   covers less than ``min_prop`` of its cells is ``Heterogeneous``.

:func:`annotate_file` is the file-to-file stage used by ``celler annotate`` and the Snakemake rule: it writes
an annotated copy of the query (the query file is never modified), a CSV, a label distribution table and
a marker dot plot of the predicted types.
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from celler import __version__
from celler.data.io import read_json
from celler.errors import CellerError
from celler.model.calibration import DEFAULT_THRESHOLD, unassigned

log = logging.getLogger(__name__)
UNASSIGNED = "Unassigned"
HETEROGENEOUS = "Heterogeneous"
MODEL_FILES = ("model.pt", "labels.json", "vocab.json", "config.json", "token_meta.json")


# ----------------------------------------------------------------------------------------------- model


@dataclass
class TrainedModel:
    """A fine-tuned model directory, loaded: classifier, label maps, vocabulary, tokenisation settings,
    calibration and the genes it was trained on."""

    path: Path
    classifier: object  # celler.model.classifier.CellClassifier
    labels: dict
    vocab: object  # celler.data.vocab.Vocab
    token_meta: dict
    config: dict
    calibration: dict | None
    genes: np.ndarray | None  # token ids the model was trained on (None: unknown, all vocabulary genes)

    @property
    def classes(self) -> list[str]:
        return list(self.classifier.levels["subclass"])

    @property
    def max_len(self) -> int:
        return int(self.config.get("finetune", {}).get("max_len", 256))

    def level_calibration(self, level: str) -> dict:
        """``{"temperature", "threshold"}`` of one label level (a flat calibration.json is the subclass's)."""
        cal = self.calibration or {}
        if "temperature" not in cal:
            cal = cal.get(level, {})
        elif level != "subclass":
            cal = {}
        return {"temperature": float(cal.get("temperature", 1.0)),
                "threshold": float(cal.get("threshold", DEFAULT_THRESHOLD)), "calibrated": bool(cal),
                "class_thresholds": dict(cal.get("class_thresholds") or {})}

    def __repr__(self) -> str:
        c = self.classifier.encoder.config
        cal = self.level_calibration("subclass")
        levels = ", ".join(f"{len(v)} {k} types" for k, v in self.classifier.levels.items())
        genes = f"{len(self.genes)} genes" if self.genes is not None else "genes unknown (whole vocabulary)"
        return (f"Celler model {self.path} ({levels}; {genes}; d_model {c.d_model}, {c.n_layers} layers; "
                f"{self.token_meta.get('binning')} binning, {self.token_meta.get('n_bins')} bins; "
                f"temperature {cal['temperature']:.3g}, threshold {cal['threshold']:.3g} "
                f"{'(calibrated)' if cal['calibrated'] else '(default)'}; "
                f"celler {self.config.get('celler_version')})")


def load_model(model_dir, *, device: str = "cpu") -> TrainedModel:
    """Load a fine-tuned model directory (``results/<tissue>/model``) for annotation; clear errors if not."""
    from celler.data.vocab import Vocab
    from celler.model.classifier import load_classifier

    d = Path(model_dir)
    if not d.is_dir():
        msg = f"{d}: model directory not found; pass a fine-tuned model (results/<tissue>/model)"
        raise CellerError(msg)
    for name in MODEL_FILES:
        if not (d / name).exists():
            msg = (f"{d}: missing {name}; is this a complete Celler fine-tuned model directory "
                   "(results/<tissue>/model)?")
            raise CellerError(msg)
    classifier, labels = load_classifier(d, device=device)
    config, meta = read_json(d / "config.json"), read_json(d / "token_meta.json")
    for key, ok in (("n_bins", lambda v: isinstance(v, int) and v > 1),
                    ("binning", lambda v: v in (None, "per_batch", "per_cell"))):
        if not ok(meta.get(key)):
            msg = (f"{d / 'token_meta.json'}: {key} is {meta.get(key)!r}, not a valid setting; the file is "
                   "damaged or from another program: restore it from the fine-tuning run")
            raise CellerError(msg)
    cal_path = d / "calibration.json"
    calibration = read_json(cal_path) if cal_path.exists() else None
    if calibration is None:
        log.warning("%s: no calibration.json; using temperature 1 and threshold %.2f", d, DEFAULT_THRESHOLD)
    vocab = Vocab.load(d / "vocab.json")
    if len(vocab) != classifier.encoder.config.vocab_size:
        msg = (f"{d}: vocab.json has {len(vocab)} tokens but the model's gene embedding "
               f"{classifier.encoder.config.vocab_size} rows; the directory mixes files of different models")
        raise CellerError(msg)
    genes = training_genes(d, config, vocab)
    return TrainedModel(d, classifier, labels, vocab, meta, config, calibration, genes)


def training_genes(model_dir: Path, config: dict, vocab) -> np.ndarray | None:
    """Token ids of the genes the model was trained on.

    From ``genes.json`` (a list of gene tokens) in the model directory; else from the token store named in
    config.json when it is still there; else ``None`` (every vocabulary gene is used, with a warning).
    Restricting the query to these genes matters: a gene the classifier never saw has an untrained (or only
    pretrained) embedding, and the bin edges of a batch are quantiles over exactly these genes.
    """
    path = Path(model_dir) / "genes.json"
    if path.exists():
        tokens = read_json(path, expect=list)
        ids = [vocab.token_to_id[t] for t in tokens if isinstance(t, str) and t in vocab]
        return np.unique(np.asarray(ids, dtype=np.int64))
    recorded = config.get("token_store")
    if recorded:  # a relative path is relative to the workflow directory: the cwd or an ancestor of the model
        recorded = Path(recorded)
        candidates = [recorded] if recorded.is_absolute() else [
            recorded, *(p / recorded for p in Path(model_dir).resolve().parents)]
        store = next((c for c in candidates if (c / "meta.json").exists() and (c / "genes.bin").exists()),
                     None)
        if store is not None:
            from celler.data.tokens import TokenStore

            ids = TokenStore(store).distinct_tokens()
            if len(ids) and ids.max() < len(vocab):
                log.info("%s has no genes.json; training genes taken from its token store %s", model_dir,
                         store)
                return ids
    log.warning("%s: the genes the model was trained on are unknown (no genes.json, token store not found); "
                "every vocabulary gene of the query is used, which hurts predictions when the query has "
                "genes the training data lacked", model_dir)
    return None


# --------------------------------------------------------------------------------------------- result


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
        return (f"AnnotationResult: {n} cells, {len(self.classes)} types, {un:.1%} {UNASSIGNED} (threshold "
                f"{self.info.get('threshold', float('nan')):.3g}); top labels: "
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

        ``obs``: ``{prefix}label``, ``confidence``, ``parent_label`` (two-level models), ``top{k}_label`` /
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


def annotate(
    adata_or_path,
    model_dir,
    *,
    batch_key: str | None = None,
    threshold: float | None = None,
    majority_voting: bool = False,
    over_clustering=None,
    min_prop: float = 0.0,
    top_k: int = 3,
    batch_size: int | str = "auto",
    device: str = "auto",
    min_overlap: float = 0.3,
    matrix: str = "X",
    gene_symbols: str | None = None,
    chunk_size: int = 20_000,
    progress: bool = True,
) -> AnnotationResult:
    """Predict the cell type of every cell of a query (``.h5ad`` path or AnnData) with a fine-tuned model.

    ``batch_key``: obs column of the query's batches (bin edges per batch, see the module docstring);
    ``threshold``: confidence below which a cell is ``Unassigned`` (default: the calibrated one);
    ``majority_voting``: add cluster-level voting (``over_clustering``: an obs column name or per-cell array
    of clusters instead of the Leiden over-clustering; ``min_prop``: top-label share below which a cluster is
    ``Heterogeneous``); ``top_k``: probabilities of the k most likely types per cell;
    ``min_overlap``: least share of the model's genes the query must contain; ``matrix``: X, raw or
    layers/NAME; ``gene_symbols``: a var column with gene symbols when var_names are something else.
    """
    if top_k < 1:
        msg = f"top_k must be >= 1, got {top_k}"
        raise CellerError(msg)
    for name, value in (("threshold", threshold), ("min_prop", min_prop)):
        if value is not None and not 0.0 <= float(value) <= 1.0:
            msg = f"{name} must be between 0 and 1, got {value}"
            raise CellerError(msg)
    if isinstance(adata_or_path, str | Path):  # the cheap checks first, before loading the model
        if not Path(adata_or_path).is_file():
            what = "is a folder, not an .h5ad file" if Path(adata_or_path).is_dir() else "query file not found"
            msg = f"{adata_or_path}: {what}"
            raise CellerError(msg)
        if Path(adata_or_path).suffix != ".h5ad":
            msg = (f"{adata_or_path}: not an .h5ad file; convert the query with anndata first "
                   "(e.g. sc.read_10x_mtx(...).write_h5ad(...))")
            raise CellerError(msg)
    dev = _device(device)
    model = load_model(model_dir, device=str(dev))
    log.info("%r", model)
    with tempfile.TemporaryDirectory(prefix="celler-annotate-") as tmp:
        path, obs = _query_file(adata_or_path, Path(tmp), matrix=matrix, batch_key=batch_key,
                                gene_symbols=gene_symbols)
        if not isinstance(adata_or_path, str | Path):
            matrix = "X"  # the temporary copy holds the chosen matrix as X
        store, coverage = tokenize_query(path, model, Path(tmp) / "tokens", batch_key=batch_key,
                                         matrix=matrix, gene_symbols=gene_symbols, min_overlap=min_overlap,
                                         chunk_size=chunk_size)
        logits, emb = predict(model, store, batch_size=batch_size, device=dev, progress=progress)
        n_genes = store.lengths.copy()
        batches = store.cells["batch"].astype(str).to_numpy()
        cells = store.cells.index.astype(str)
    result = _assemble(model, cells, logits, emb, n_genes, threshold=threshold, top_k=top_k)
    result.info.update({"coverage": coverage, "batch_key": batch_key or "",
                        "n_batches": int(len(np.unique(batches))), "query": str(path) if isinstance(
                            adata_or_path, str | Path) else "AnnData"})
    if majority_voting:
        clusters = over_clustering
        if isinstance(over_clustering, str):
            if over_clustering not in obs:
                msg = (f"over_clustering column {over_clustering!r} not in the query's obs "
                       f"(have {list(obs.columns)})")
                raise CellerError(msg)
            col = obs[over_clustering].copy()
            col.index = col.index.astype(str)
            clusters = col.reindex(cells).to_numpy()
        vote(result, clusters=clusters, min_prop=min_prop)
    frac = float((result.predictions["label"] == UNASSIGNED).mean())
    log.info("annotated %d cells: %.1f%% %s; %s", len(cells), 100 * frac, UNASSIGNED,
             result.summary_frequency().head(8).to_dict("records"))
    return result


def _device(name: str) -> torch.device:
    """The torch device for ``auto`` / ``cpu`` / ``cuda[:N]``; one-line error: no GPU, a bad name."""
    from celler.model.classifier import pick_device

    try:
        dev = pick_device(str(name))
    except RuntimeError as e:
        msg = f"device {name!r} is not a device; use auto, cpu or cuda"
        raise CellerError(msg) from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        msg = f"device {name!r}: no CUDA GPU is visible here; use --device cpu (or auto)"
        raise CellerError(msg)
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        msg = f"device {name!r}: only {torch.cuda.device_count()} CUDA GPU(s) visible; use cuda:0 or auto"
        raise CellerError(msg)
    if dev.type not in ("cpu", "cuda"):
        msg = f"device {name!r} is not supported; use auto, cpu or cuda"
        raise CellerError(msg)
    return dev


def _query_file(adata_or_path, tmp: Path, *, matrix: str, batch_key,
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


def auto_batch_size(model: TrainedModel, device: torch.device) -> int:
    """Cells per forward pass that fit comfortably in the device's free memory (a power of two, 8..4096).

    Per cell, inference holds about ``max_len x (16 d_model + 4 d_ff)`` floats of activations in one block,
    plus ``n_heads x max_len^2`` attention scores when the fused kernels are not used; half the free
    memory (a quarter of the available RAM, at most 2 GB, on CPU) is the budget.
    """
    c = model.classifier.encoder.config
    L = model.max_len
    per_cell = 4 * (L * (16 * c.d_model + 4 * c.d_ff) + c.n_heads * L * L)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget, cap = 0.5 * free, 4096
    else:
        try:
            import psutil

            avail = psutil.virtual_memory().available
        except ImportError:  # pragma: no cover
            avail = 8 * 2**30
        budget, cap = min(0.25 * avail, 2 * 2**30), 512
    n = int(max(8, min(cap, budget // max(per_cell, 1))))
    return 2 ** int(math.log2(n))


def predict(model: TrainedModel, store, *, batch_size="auto", device=None, progress: bool = True):
    """Logits per level ``{level: (n, C)}`` and embeddings ``(n, d)`` of every cell of ``store``, in order."""
    from tqdm import tqdm

    from celler.model.classifier import predict_logits
    from celler.train.finetune import FinetuneConfig

    device = device or next(model.classifier.parameters()).device
    bs = auto_batch_size(model, device) if batch_size == "auto" else int(batch_size)
    if bs < 1:
        msg = f"batch_size must be >= 1 or 'auto', got {batch_size!r}"
        raise CellerError(msg)
    names = {f.name for f in fields(FinetuneConfig)}
    saved = {"gene_selection": "random", **model.config.get("finetune", {})}  # models before gene_selection
    cfg = FinetuneConfig(**{k: v for k, v in saved.items() if k in names})
    cfg = replace(cfg, max_len=model.max_len, device=str(device))
    n = len(store)
    order = np.argsort(-store.lengths, kind="stable")  # longest first: the peak memory shows at once
    levels = model.classifier.levels
    out = {k: torch.zeros(n, len(v)) for k, v in levels.items()}
    emb = np.zeros((n, model.classifier.embedding_dim), np.float32)
    log.info("predicting %d cells on %s, %d cells per batch", n, device, bs)
    with tqdm(total=n, desc="annotate", unit="cell", disable=not progress, mininterval=2) as bar:
        start = 0
        while start < n:
            block = order[start:start + 16 * bs]
            try:
                logits, e = predict_logits(model.classifier, store, block, replace(cfg, batch_size=bs))
            except torch.OutOfMemoryError:
                if bs == 1:
                    raise
                torch.cuda.empty_cache()
                bs //= 2
                log.warning("out of memory; retrying with %d cells per batch", bs)
                continue
            for k, v in logits.items():
                out[k][block] = v
            emb[block] = e
            start += len(block)
            bar.update(len(block))
    return out, emb


def _assemble(model: TrainedModel, cells, logits, emb, n_genes, *, threshold, top_k) -> AnnotationResult:
    """Calibrated probabilities -> labels, confidence, Unassigned, top-k, parent level."""
    levels = model.classifier.levels
    table = pd.DataFrame(index=pd.Index(cells, name="cell"))
    info = {"model": str(model.path), "celler_version": __version__,
            "binning": model.token_meta.get("binning"), "n_bins": int(model.token_meta.get("n_bins", 0))}
    no_genes = np.asarray(n_genes) == 0
    probs = {}
    for level in levels:
        cal = model.level_calibration(level)
        rule = cal if threshold is None else {"threshold": float(threshold)}  # --threshold: one cut for all
        t = rule["threshold"]
        prob = torch.softmax(logits[level].float() / cal["temperature"], dim=1).numpy()
        probs[level] = prob
        classes = np.asarray(levels[level], dtype=object)
        top = np.argmax(prob, axis=1)
        conf = prob[np.arange(len(prob)), top]
        label = classes[top].copy()
        label[unassigned(rule, label, conf) | no_genes] = UNASSIGNED
        if level == "subclass":
            table["label"] = label
            table["confidence"] = conf.astype(np.float32)
            k = min(top_k, prob.shape[1])
            rank = np.argsort(-prob, axis=1, kind="stable")[:, :k]
            for j in range(k):
                table[f"top{j + 1}_label"] = classes[rank[:, j]]
                table[f"top{j + 1}_prob"] = prob[np.arange(len(prob)), rank[:, j]].astype(np.float32)
            info.update({"threshold": t, "temperature": cal["temperature"], "calibrated": cal["calibrated"],
                         "class_thresholds": rule.get("class_thresholds", {}),
                         "threshold_source": "given" if threshold is not None else (
                             "calibration.json" if cal["calibrated"] else "default")})
        else:
            table[f"{level}_label"] = label
            table[f"{level}_confidence"] = conf.astype(np.float32)
            info[f"{level}_threshold"] = t
            info[f"{level}_temperature"] = cal["temperature"]
    sub_to_parent = model.labels.get("subclass_to_parent") or {}
    if "parent" not in levels and sub_to_parent:  # a parent map without a parent head: derive it
        table["parent_label"] = [sub_to_parent.get(x, UNASSIGNED) for x in table["label"]]
    table["n_genes"] = np.asarray(n_genes, dtype=np.int32)
    return AnnotationResult(table, probs["subclass"].astype(np.float32), list(levels["subclass"]), emb, info)


# ------------------------------------------------------------------------------------- majority voting


def over_cluster(embeddings: np.ndarray, *, resolution: float | None = None, seed: int = 0) -> np.ndarray:
    """Over-clustering of the cells on their Celler embeddings: Leiden on a 15-neighbour graph, resolution
    growing with the number of cells (5 below 5,000 cells ... 30 above 200,000, as CellTypist); k-means
    with about one cluster per 30 cells when Leiden (igraph) is not installed."""
    from celler.baselines.celltypist_lr import celltypist_resolution

    n = len(embeddings)
    if resolution is None:
        resolution = celltypist_resolution(n)
    try:
        import anndata as ad
        import igraph  # noqa: F401 (scanpy's Leiden needs it)
        import scanpy as sc

        a = ad.AnnData(X=np.zeros((n, 0), np.float32), obsm={"X_celler": embeddings})
        sc.pp.neighbors(a, n_neighbors=min(15, n - 1), use_rep="X_celler", random_state=seed)
        sc.tl.leiden(a, resolution=resolution, flavor="igraph", n_iterations=2, directed=False,
                     random_state=seed)
        return a.obs["leiden"].astype(str).to_numpy()
    except ImportError:
        from sklearn.cluster import KMeans

        log.info("igraph not installed: over-clustering with k-means instead of Leiden")
        k = max(2, min(n // 30, 500))
        return KMeans(k, n_init=1, random_state=seed).fit_predict(embeddings).astype(str)


def majority_vote(labels, clusters, *, min_prop: float = 0.0) -> np.ndarray:
    """Each cluster's most frequent label for all its cells (``Unassigned`` votes too); ``Heterogeneous``
    where that label covers less than ``min_prop`` of the cluster."""
    t = pd.crosstab(pd.Series(np.asarray(labels, dtype=str), name="label"),
                    pd.Series(np.asarray(clusters, dtype=str), name="cluster"))
    share = t / t.sum(axis=0)
    winner = t.idxmax(axis=0)
    winner[share.max(axis=0) < min_prop] = HETEROGENEOUS
    return winner.reindex(np.asarray(clusters, dtype=str)).to_numpy(dtype=object)


def vote(result: AnnotationResult, *, clusters=None, min_prop: float = 0.0) -> AnnotationResult:
    """Add ``majority_voting`` and ``over_clustering`` to ``result`` (in place; returned for chaining)."""
    p = result.predictions
    if clusters is None:
        if len(p) <= 50:
            log.warning("majority voting skipped: %d cells are too few to over-cluster", len(p))
            p["over_clustering"] = "0"
            p["majority_voting"] = p["label"]
            return result
        clusters = over_cluster(result.embeddings)
    clusters = np.asarray(clusters).astype(str)
    if len(clusters) != len(p):
        msg = f"over_clustering has {len(clusters)} entries for {len(p)} cells"
        raise CellerError(msg)
    p["over_clustering"] = clusters
    p["majority_voting"] = majority_vote(p["label"].to_numpy(), clusters, min_prop=min_prop)
    result.info.update({"majority_voting": True, "min_prop": float(min_prop),
                        "n_clusters": int(len(np.unique(clusters)))})
    return result


# ------------------------------------------------------------------------------------ file-to-file stage


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
    adata = ad.read_h5ad(query)
    result.to_adata(adata)
    with atomic_path(out, **guard) as tmp:
        adata.write_h5ad(tmp, compression="gzip")
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
    (:func:`celler.markers.marker_panel`, :func:`celler.plots.marker_dotplot`; ribosomal and mitochondrial genes
    left out): rows types, columns genes. Types with fewer than 3 cells are left out (``Unassigned`` /
    ``Heterogeneous`` last); at most ``max_cells`` cells are used."""
    import anndata as ad
    import scanpy as sc

    from celler import markers as mk
    from celler import plots
    from celler.data.io import to_csr
    from celler.data.qc import detect_kind

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


__all__ = ["HETEROGENEOUS", "UNASSIGNED", "AnnotationResult", "TrainedModel", "annotate", "annotate_file",
           "load_model", "majority_vote", "marker_dotplot", "over_cluster", "vote"]
