"""Running the classifier over a query: device and batch size, logits to calls with the stored
confidence rule, and :func:`annotate`, which chains the steps."""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from celler import __version__
from celler.annotate.model_dir import UNASSIGNED, TrainedModel, load_model
from celler.annotate.query import query_file, tokenize_query
from celler.annotate.result import AnnotationResult
from celler.annotate.voting import vote
from celler.errors import CellerError
from celler.model.calibration import low_confidence

log = logging.getLogger(__name__)


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
    ``threshold``: confidence below which a call is flagged ``low_confidence`` (default: the calibrated
    per-class thresholds); a cell is ``Unassigned`` when its ``novelty`` passes the model's cut (unlike every
    training type), whatever its confidence;
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
    clock = time.perf_counter()
    model = load_model(model_dir, device=str(dev))
    clock = _stage("load the model", clock)
    log.info("%r", model)
    with tempfile.TemporaryDirectory(prefix="celler-annotate-") as tmp:
        path, obs = query_file(adata_or_path, Path(tmp), matrix=matrix, batch_key=batch_key,
                                gene_symbols=gene_symbols)
        if not isinstance(adata_or_path, str | Path):
            matrix = "X"  # the temporary copy holds the chosen matrix as X
        store, coverage = tokenize_query(path, model, Path(tmp) / "tokens", batch_key=batch_key,
                                         matrix=matrix, gene_symbols=gene_symbols, min_overlap=min_overlap,
                                         chunk_size=chunk_size)
        clock = _stage("read, map genes and tokenise the query", clock)
        logits, emb = predict(model, store, batch_size=batch_size, device=dev, progress=progress)
        clock = _stage("predict", clock)
        index = model.classifier.novelty
        novelty = None if index is None else index.score(emb)
        clock = _stage("novelty", clock)
        n_genes = store.lengths.copy()
        batches = store.cells["batch"].astype(str).to_numpy()
        cells = store.cells.index.astype(str)
    result = _assemble(model, cells, logits, emb, n_genes, novelty, threshold=threshold, top_k=top_k)
    _stage("assemble the result", clock)
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


def _stage(what: str, since: float) -> float:
    """Log how long a stage of annotation took (benchmarks/annotate_vs_celltypist.py reads these lines)."""
    now = time.perf_counter()
    log.info("stage %s: %.1f s", what, now - since)
    return now


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


def _assemble(model: TrainedModel, cells, logits, emb, n_genes, novelty, *, threshold, top_k) -> AnnotationResult:
    """Calibrated probabilities -> labels, confidence, low-confidence flag, novelty and Unassigned, top-k,
    parent level. A cell is ``Unassigned`` at every level when it is novel (or has none of the model's genes);
    a model without a novelty index falls back to its confidence thresholds (the rule before novelty)."""
    levels = model.classifier.levels
    table = pd.DataFrame(index=pd.Index(cells, name="cell"))
    info = {"model": str(model.path), "celler_version": __version__,
            "binning": model.token_meta.get("binning"), "n_bins": int(model.token_meta.get("n_bins", 0))}
    no_genes = np.asarray(n_genes) == 0
    index = model.classifier.novelty
    if index is None:
        log.warning("%s has no %s (trained before novelty scores): Unassigned falls back to low confidence",
                    model.path, "novelty.npz")
    novel = (index.novel(novelty) if index is not None else None)
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
        low = low_confidence(rule, label, conf)
        label[(low if novel is None else novel) | no_genes] = UNASSIGNED
        prefix = "" if level == "subclass" else f"{level}_"
        table[f"{prefix}label"] = label
        table[f"{prefix}confidence"] = conf.astype(np.float32)
        table[f"{prefix}low_confidence"] = low
        if level == "subclass":
            if novelty is not None:
                table["novelty"] = novelty.astype(np.float32)
            k = min(top_k, prob.shape[1])
            rank = np.argsort(-prob, axis=1, kind="stable")[:, :k]
            for j in range(k):
                table[f"top{j + 1}_label"] = classes[rank[:, j]]
                table[f"top{j + 1}_prob"] = prob[np.arange(len(prob)), rank[:, j]].astype(np.float32)
            info.update({"threshold": t, "temperature": cal["temperature"], "calibrated": cal["calibrated"],
                         "class_thresholds": rule.get("class_thresholds", {}),
                         "threshold_source": "given" if threshold is not None else (
                             "calibration.json" if cal["calibrated"] else "default"),
                         "unassigned_rule": "novelty" if index is not None else "low confidence",
                         "novelty_cut": None if index is None else index.cut})
        else:
            info[f"{level}_threshold"] = t
            info[f"{level}_temperature"] = cal["temperature"]
    sub_to_parent = model.labels.get("subclass_to_parent") or {}
    if "parent" not in levels and sub_to_parent:  # a parent map without a parent head: derive it
        table["parent_label"] = [sub_to_parent.get(x, UNASSIGNED) for x in table["label"]]
    table["n_genes"] = np.asarray(n_genes, dtype=np.int32)
    return AnnotationResult(table, probs["subclass"].astype(np.float32), list(levels["subclass"]), emb, info)


# ------------------------------------------------------------------------------------- majority voting
