"""The fine-tuned classifier: readouts, reading cells as it was trained, prediction, and its model directory.

:class:`CellClassifier` is one head per label level over a cell embedding chosen by ``readout`` (the
transformer encoder runs only for ``cls`` / ``mean``; the default program and profile views read the cell's
profile directly); it carries the genes a cell is restricted to (``gene_selection: hvg``), so that every
caller (evaluation, ``celler annotate``) reads a cell exactly as training did. Training lives in
:mod:`celler.train.finetune`.

Model directory (self-describing, written by :func:`save_classifier`, read by :func:`load_classifier`)::

    model.pt       encoder + heads weights (and program axes), ModelConfig, label levels, readout, selected genes,
                   format, version
    config.json    the FinetuneConfig, where the encoder came from, the chosen loss settings
    labels.json    per level: classes (id order) and training counts; subclass -> parent map
    calibration.json  per level: temperature and low-confidence thresholds fitted on the validation cells
    novelty.npz    the novelty score's index: training cells' readout vectors and types, per-type scales, cut
    vocab.json     the vocabulary (extended datasets carry their extra genes)
    genes.json     the genes the model was trained on (annotation maps a query onto these)
    bin_edges.json the per-batch bin edges of the training data
    token_meta.json  the token store's settings (bins, binning scheme, normalisation)
    train_log.csv  per epoch: train loss, validation macro-F1 per level
"""

from __future__ import annotations

import json
import shutil
from contextlib import nullcontext
from dataclasses import asdict
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from celler import __version__
from celler.errors import CellerError
from celler.model import ClassifierHead, Encoder, ModelConfig, ProfileEncoder
from celler.model.batching import CellDataset, LengthBucketSampler, collate
from celler.model.novelty import NoveltyIndex
from celler.model.programs import ProgramView, profile_matrix

CLASSIFIER_FORMAT_VERSION = 1
NOVELTY_FILE = "novelty.npz"
LEVELS = ("subclass", "parent")  # store.cells columns: 'label' and 'parent'
LEVEL_COLUMN = {"subclass": "label", "parent": "parent"}


READOUTS = ("cls", "mean", "profile", "programs")  # parts of ``readout``, joined with '+': e.g. 'programs+profile'
FLAT_VIEWS = ("profile", "programs")  # the views that read a cell's whole profile, not its tokens
DEFAULT_READOUT = "programs+profile"  # chosen on validation / tuning cells (README); FinetuneConfig's default


class CellClassifier(nn.Module):
    """Encoder + one ClassifierHead per label level; ``forward`` returns ``({level: logits (B, C)}, emb)``.

    The cell embedding the heads read is ``readout``: ``cls`` (the encoder's output at ``<cls>``), ``mean``
    (mean over the gene positions), ``profile`` (:class:`ProfileEncoder` over every expressed gene),
    ``programs`` (:class:`ProgramView`: the cell on the tissue's ``n_programs`` principal axes, fitted before
    fine-tuning and frozen), or several joined by '+' (concatenated). ``genes``: the token ids a cell is
    restricted to (highly variable genes), or None; kept with the model so that annotation reads cells as
    training did. ``cosine_scale``: cosine heads (``loss: gcl``). ``logit_bias``: per level, a vector added to the logits in eval mode only
    (the post-hoc logit adjustment τ′·log N_j chosen on the validation cells); training sees raw logits.
    """

    def __init__(self, encoder: Encoder, levels: dict[str, list[str]], *, readout: str = DEFAULT_READOUT, genes=None,
                 cosine_scale: float | None = None, n_programs: int = 16):
        super().__init__()
        parts = readout.split("+")
        if not parts or any(p not in READOUTS for p in parts) or len(set(parts)) != len(parts):
            msg = f"readout must be parts of {READOUTS} joined by '+' (e.g. cls+profile), got {readout!r}"
            raise CellerError(msg)
        self.encoder = encoder
        self.readout, self.parts = readout, parts
        self.selected_genes = None if genes is None else np.asarray(genes, np.int64)
        self.levels = {k: list(v) for k, v in levels.items()}
        config = encoder.config
        self.profile = ProfileEncoder(config) if "profile" in parts else None
        self.programs = ProgramView(config.vocab_size, n_programs, config.n_bins) if "programs" in parts else None
        d_in = sum(n_programs if p == "programs" else config.d_model for p in parts)
        self.embedding_dim = d_in
        self.cosine_scale = cosine_scale
        self.heads = nn.ModuleDict({k: ClassifierHead(encoder.config, len(v), d_in, cosine_scale=cosine_scale)
                                    for k, v in levels.items()})
        self.logit_bias: dict[str, torch.Tensor] = {}  # level -> (C,), applied in eval mode
        self.calibration: dict = {}  # level -> calibration.json entry (temperature, thresholds), once fitted
        self.novelty: NoveltyIndex | None = None  # the novelty score's index (celler.model.novelty), once fitted
        self.view_dropout = 0.0  # training only: share of cells seen through the last flat view alone (finetune)

    def embed(self, genes, values, padding_mask=None, profile=None):
        """The readout vector (B, embedding_dim); ``profile`` = (genes, values, offsets) flat (collate)."""
        views = []
        if "cls" in self.parts or "mean" in self.parts:
            hidden = self.encoder(genes, values, padding_mask)  # (B, L, d)
            if "cls" in self.parts:
                views.append(hidden[:, 0])
            if "mean" in self.parts:
                real = torch.ones_like(genes, dtype=hidden.dtype) if padding_mask is None else (~padding_mask).to(hidden.dtype)
                real[:, 0] = 0  # not <cls>
                views.append((hidden * real[..., None]).sum(1) / real.sum(1, keepdim=True).clamp(min=1))
        flat = [view(*profile) for view in (self.profile, self.programs) if view is not None]  # READOUTS order
        views += [v.to(views[0].dtype if views else torch.float32) for v in flat]
        if len(views) > 1 and flat and self.training and self.view_dropout > 0:
            # whole-view dropout: some cells are seen through the last flat view alone (the programs, else the
            # profile), so that the head cannot lean on the views that fit a few hundred cells fastest (the
            # encoder's, a learnt profile) and leave the steadier one unread
            keep = (torch.rand(len(views[0]), 1, device=views[0].device) >= self.view_dropout).to(views[0].dtype)
            views = [v * keep for v in views[:-1]] + views[-1:]
        return views[0] if len(views) == 1 else torch.cat(views, 1)

    def forward(self, genes, values, padding_mask=None, profile=None, *, embedding=None):
        emb = self.embed(genes, values, padding_mask, profile) if embedding is None else embedding
        logits = {k: head(emb)[0] for k, head in self.heads.items()}
        if not self.training:
            for k, bias in self.logit_bias.items():
                logits[k] = logits[k] + bias.to(logits[k])
        return logits, emb  # logits per level, (B, d)


def pick_device(name: str) -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def loader(store, indices, cfg, model: CellClassifier, *, shuffle: bool, epoch: int = 0):
    select = "top" if cfg.gene_selection == "hvg" else cfg.gene_selection
    ds = CellDataset(store, indices, max_len=cfg.max_len, mask_ratio=0.0, seed=cfg.seed, select=select,
                     genes=model.selected_genes, profile=any(p in FLAT_VIEWS for p in model.parts),
                     tokens=not set(model.parts) <= set(FLAT_VIEWS))  # flat views alone never run the encoder
    ds.set_epoch(epoch)
    sampler = LengthBucketSampler(ds.lengths, cfg.batch_size, seed=cfg.seed, shuffle=shuffle)
    sampler.set_epoch(epoch)
    return DataLoader(ds, batch_sampler=sampler, collate_fn=partial(collate, pad_id=int(store.meta["pad_id"])))


def batch_inputs(batch, device):
    pad = batch["padding_mask"]
    profile = (tuple(batch[k].to(device) for k in ("profile_genes", "profile_values", "profile_offsets"))
               if "profile_genes" in batch else None)
    return (batch["genes"].to(device), batch["values"].to(device), pad.to(device) if pad.any() else None, profile)


@torch.no_grad()
def predict_logits(model: CellClassifier, store, indices, cfg, *, embeddings=None):
    """``({level: logits (n, C)}, embeddings (n, d))`` for store ``indices``, in that order."""
    device = next(model.parameters()).device
    model.eval()
    if embeddings is not None:
        logits, _ = model(None, None, embedding=torch.as_tensor(embeddings, device=device))
        return {k: v.float().cpu() for k, v in logits.items()}, embeddings
    position = {int(c): i for i, c in enumerate(indices)}
    out = {k: torch.zeros(len(indices), len(v)) for k, v in model.levels.items()}
    emb = np.zeros((len(indices), model.embedding_dim), np.float32)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and cfg.bf16 else nullcontext()
    for batch in loader(store, indices, cfg, model, shuffle=False):
        rows = [position[int(c)] for c in batch["index"]]
        with autocast:
            logits, e = model(*batch_inputs(batch, device))
        for k, v in logits.items():
            out[k][rows] = v.float().cpu()
        emb[rows] = e.float().cpu().numpy()
    return out, emb


def highly_variable_tokens(store, cell_idx: np.ndarray, n: int) -> np.ndarray:
    """Token ids of the ``n`` most variable genes over the cells ``cell_idx`` (scanpy's Seurat dispersion,
    on the binned values scaled to a log-expression-like 0..5 range)."""
    import anndata as ad
    import scanpy as sc

    x = profile_matrix(store, cell_idx)  # bin / (n_bins - 1)
    tokens = np.flatnonzero(x.getnnz(axis=0))
    if len(tokens) <= n:
        return tokens
    x = x[:, tokens] * 5.0
    hvg = sc.pp.highly_variable_genes(ad.AnnData(x), n_top_genes=n, flavor="seurat", inplace=False)
    return tokens[hvg["highly_variable"].to_numpy()]


def save_classifier(model: CellClassifier, out_dir, *, cfg, info, store, pretrained, log_rows,
                    calibration: dict | None = None) -> None:
    """Write the self-describing model directory (see the module docstring)."""
    from celler.data.io import atomic_path

    cells = store.cells
    sub_to_parent = {}
    if "parent" in model.levels:
        pairs = cells.loc[cells["split"] == "train", ["label", "parent"]].dropna().astype(str).drop_duplicates()
        sub_to_parent = pairs.groupby("label")["parent"].agg(lambda s: s.value_counts().index[0]).to_dict()
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        torch.save({"format_version": CLASSIFIER_FORMAT_VERSION, "celler_version": __version__,
                    "model_config": asdict(model.encoder.config), "levels": model.levels,
                    "readout": model.readout, "selected_genes": None if model.selected_genes is None
                    else model.selected_genes.tolist(), "cosine_scale": model.cosine_scale,
                    "logit_bias": {k: v.tolist() for k, v in model.logit_bias.items()},
                    "state_dict": {k: v.cpu() for k, v in model.state_dict().items()}}, tmp / "model.pt")
        (tmp / "labels.json").write_text(json.dumps({
            "levels": model.levels, "class_counts": info["class_counts"], "subclass_to_parent": sub_to_parent},
            indent=1))
        (tmp / "config.json").write_text(json.dumps({
            "celler_version": __version__, "finetune": asdict(cfg), "pretrained": str(pretrained) if pretrained else None,
            "token_store": str(store.path), "chosen": {k: info[k] for k in ("loss", "loss_params", "val_macro_f1",
                                                                           "n_train", "n_val", "out_of_fold_cells",
                                                                           "candidates", "posthoc") if k in info}}, indent=1,
            default=str))
        shutil.copy(store.path / "vocab.json", tmp / "vocab.json")
        vocab = store.vocab()
        (tmp / "genes.json").write_text(json.dumps([vocab.tokens[i] for i in store.distinct_tokens()]))
        shutil.copy(store.path / "bin_edges.json", tmp / "bin_edges.json")
        (tmp / "token_meta.json").write_text(json.dumps(store.meta, indent=1))
        pd.DataFrame(log_rows).to_csv(tmp / "train_log.csv", index=False)
        if calibration:
            (tmp / "calibration.json").write_text(json.dumps(calibration, indent=1))
        if model.novelty is not None:
            model.novelty.save(tmp / NOVELTY_FILE)


def load_classifier(model_dir, *, device: str = "cpu") -> tuple[CellClassifier, dict]:
    """A fine-tuned classifier and its labels.json from a model directory; clear errors otherwise."""
    from celler.data.io import read_json

    d = Path(model_dir)
    for name in ("model.pt", "labels.json", "vocab.json", "config.json"):
        if not (d / name).exists():
            msg = f"{d}: missing {name}; is this a Celler fine-tuned model directory (results/<tissue>/model)?"
            raise CellerError(msg)
    try:
        blob = torch.load(d / "model.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a truncated or foreign file
        msg = (f"{d / 'model.pt'}: cannot be loaded ({type(e).__name__}); the file is damaged or not a "
               "Celler model: copy it again or re-train")
        raise CellerError(msg) from e
    if not isinstance(blob, dict) or blob.get("format_version") != CLASSIFIER_FORMAT_VERSION:
        blob = blob if isinstance(blob, dict) else {}
        msg = (f"{d / 'model.pt'}: classifier format {blob.get('format_version')} (celler "
               f"{blob.get('celler_version')}) is not readable by celler {__version__} (format "
               f"{CLASSIFIER_FORMAT_VERSION}); re-train the model or install celler {blob.get('celler_version')}")
        raise CellerError(msg)
    try:
        axes = blob["state_dict"].get("programs.loadings")  # the program view's width is its axes'
        model = CellClassifier(Encoder(ModelConfig(**blob["model_config"])), blob["levels"],
                               # a model.pt without the key predates readouts: it read <cls>
                               readout=blob.get("readout", "cls"), genes=blob.get("selected_genes"),
                               cosine_scale=blob.get("cosine_scale"),
                               **({} if axes is None else {"n_programs": axes.shape[1]}))
        model.load_state_dict(blob["state_dict"])
        model.logit_bias = {k: torch.tensor(v, dtype=torch.float32) for k, v in
                            (blob.get("logit_bias") or {}).items()}
        for k, v in model.logit_bias.items():
            if v.shape != (len(model.levels[k]),):
                msg = f"logit_bias of level {k!r} has {tuple(v.shape)} entries for {len(model.levels[k])} classes"
                raise ValueError(msg)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:  # missing entries, mismatched weights
        msg = (f"{d / 'model.pt'}: incomplete or inconsistent model ({type(e).__name__}: "
               f"{str(e).splitlines()[0][:120] if str(e) else ''}); copy it again or re-train")
        raise CellerError(msg) from e
    if (d / "calibration.json").exists():
        model.calibration = read_json(d / "calibration.json")
    if (d / NOVELTY_FILE).exists():
        model.novelty = NoveltyIndex.load(d / NOVELTY_FILE)
    return model.to(device).eval(), read_json(d / "labels.json")


def predictions_table(model: CellClassifier, store, indices, cfg) -> tuple[pd.DataFrame, np.ndarray]:
    """The common predictions layout (cell, split, level, true, predicted, confidence) and the embeddings.

    With a fitted calibration, ``confidence`` is the calibrated one (softmax of logits / T) and
    ``low_confidence`` flags a call below its class's confidence threshold (it keeps its label). With a
    novelty index, ``novelty`` is the cell's score and ``unassigned`` says whether ``celler annotate`` leaves
    it ``Unassigned`` (novelty above the cut: unlike every training type). ``predicted`` is always the class
    itself, so evaluation scores the classifier and, separately, the rule.
    """
    from celler.model.calibration import low_confidence

    logits, emb = predict_logits(model, store, indices, cfg)
    cells = store.cells.iloc[indices]
    novelty = None if model.novelty is None else model.novelty.score(emb)
    frames = []
    for level, z in logits.items():
        cal = model.calibration.get(level)
        prob = torch.softmax(z / float(cal["temperature"]) if cal else z, 1)
        conf, pred = prob.max(1)
        classes = np.asarray(model.levels[level], dtype=object)
        frame = pd.DataFrame({
            "cell": cells.index, "split": cells["split"].to_numpy(), "level": level,
            "true": cells[LEVEL_COLUMN[level]].astype(str).to_numpy(), "predicted": classes[pred.numpy()],
            "confidence": conf.numpy(),
        })
        if cal:
            frame["low_confidence"] = low_confidence(cal, frame["predicted"].to_numpy(), frame["confidence"].to_numpy())
        if novelty is not None:
            frame["novelty"] = novelty
            frame["unassigned"] = model.novelty.novel(novelty)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True), emb


__all__ = [
    "LEVELS", "LEVEL_COLUMN", "READOUTS", "CellClassifier", "batch_inputs", "highly_variable_tokens", "load_classifier",
    "loader", "pick_device", "predict_logits", "predictions_table", "save_classifier",
]
