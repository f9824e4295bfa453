"""Per-tissue fine-tuning: one classifier head per label level over the readout, one loop.

A tissue has a subclass level and, where configured, a parent level; both heads read the same readout vector
(by default the program and profile views, which never run the transformer; ``readout`` adds ``cls``) and
are trained jointly (total loss = sum over levels of the configured long-tail loss). The validation cells are
a seeded stratified share of the training cells; the epoch with the best validation subclass macro-F1 is
kept, and training stops after ``patience`` epochs without improvement. Prediction is the argmax of the raw
logits (no noise, no prior term), with softmax probabilities as confidence; the validation cells then set the
confidence calibration and the novelty cut (the ``Unassigned`` rule; with few validation cells, out-of-fold
novelty of the training cells joins them: :mod:`celler.train.crossfit`).

``loss: auto`` trains one model per (tau, sigma) of a small grid and keeps the one with the best
validation macro-F1 (the head/tail trade-off is data-dependent). ``two_stage`` adds a short second stage on
the training cells that the first stage got wrong with high confidence (the paper's hard-example stage).

The model, what it reads and its directory are :mod:`celler.model.classifier`'s.
"""

from __future__ import annotations

import copy
import logging
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from celler.data.tokens import TokenStore
from celler.errors import CellerError
from celler.model import Encoder, configure_optimizers, preset
from celler.model.classifier import (
    DEFAULT_READOUT,
    FLAT_VIEWS,
    LEVEL_COLUMN,
    LEVELS,
    CellClassifier,
    batch_inputs,
    highly_variable_tokens,
    loader,
    pick_device,
    predict_logits,
    save_classifier,
)
from celler.model.novelty import MIN_VALIDATION, NoveltyIndex
from celler.model.pretrained import load_profile_norm
from celler.model.programs import fit_axes
from celler.train.crossfit import out_of_fold_novelty
from celler.train.losses import build_loss
from celler.train.rebalance import gcl_second_stage, macro_f1, posthoc_adjustment

log = logging.getLogger(__name__)


@dataclass
class FinetuneConfig:
    """Fine-tuning settings. Every default is config.yaml's ``finetune:`` value (each chosen on validation or
    tuning cells, benchmarks/RESULTS.md), so a library caller trains the workflow's model (tested)."""

    init: str = "pretrained"  # 'pretrained' (a Celler or scGPT model directory is given) or 'scratch'
    preset: str = "tiny"  # model size when init == 'scratch'
    loss: str = "ginf+hdm"  # ce | focal | balanced_softmax | ginf | ginf+hdm | auto
    loss_params: dict = field(default_factory=dict)  # e.g. {form: paper, sigma: 0.33, tau: 1, hdm_n: 20}
    auto_grid: dict = field(default_factory=lambda: {"tau": [0.5, 1.0], "sigma": [0.0, 0.33, 1.0]})
    max_len: int = 192  # tokens per cell incl. <cls>; a longer cell keeps the genes chosen by gene_selection
    gene_selection: str = "top"  # top (highest-expressed), hvg (the tissue's highly variable genes, then top),
    #                              random (a new random subset each epoch), all (no cap)
    n_hvg: int = 2000  # gene_selection 'hvg': how many highly variable genes of the training cells
    readout: str = DEFAULT_READOUT  # what the heads read: cls, mean, profile (every expressed gene), programs (the
    #                           tissue's principal axes, fitted without labels and frozen), joined by '+'
    n_programs: int = 16  # readout 'programs': at least this many principal axes, and one per finest class
    view_dropout: float = 0.25  # several views: share of training cells seen through the last flat view alone
    batch_size: int = 32
    lr: float = 2e-3  # peak AdamW learning rate (heads and the profile view)
    encoder_lr_scale: float = 1.0  # the encoder learns at this multiple of lr (< 1: adapt a pretrained one gently)
    weight_decay: float = 0.01
    head_dropout: float | None = None  # dropout inside the classifier heads (None: the encoder config's)
    epochs: int = 20  # at most this many passes over the training cells
    max_steps: int | None = 500  # caps the epochs of large tissues: at most ceil(max_steps / steps per epoch)
    min_steps: int = 250  # small label sets: at least this many steps (more epochs), no early stop before them
    patience: int = 4  # stop after this many epochs without a better validation macro-F1
    val_fraction: float = 0.1  # stratified share of the training cells used for model selection
    novelty_folds: int = 5  # under MIN_VALIDATION validation cells: folds for out-of-fold novelty (0: off)
    freeze_encoder: bool = False  # train the heads only (the encoder's embeddings are computed once)
    two_stage: bool = False  # a second stage on confidently misclassified training cells
    two_stage_epochs: int = 2
    two_stage_confidence: float = 0.8  # "high confidence": predicted-class probability above this
    posthoc_adjustment: bool = False  # predict argmax z + tau'·log N_j, tau' chosen on the validation cells
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    bf16: bool = True  # autocast on CUDA only


def label_levels(cells: pd.DataFrame, train_idx: np.ndarray) -> dict[str, list[str]]:
    """Classes per level, from the training cells (sorted, so ids are stable)."""
    levels = {}
    for level in LEVELS:
        col = LEVEL_COLUMN[level]
        if col in cells and cells[col].notna().any():
            levels[level] = sorted(cells[col].iloc[train_idx].dropna().astype(str).unique())
    if "subclass" not in levels:
        msg = "the token store has no labels (cells.tsv 'label' is empty); fine-tuning needs a labelled tissue"
        raise CellerError(msg)
    if len(levels["subclass"]) < 2:
        msg = f"fine-tuning needs at least 2 classes in the training cells, found {levels['subclass']}"
        raise CellerError(msg)
    return levels


def encode_targets(cells: pd.DataFrame, levels: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """Class id per cell and level (-100 for a class unseen in training: an open-set cell)."""
    out = {}
    for level, classes in levels.items():
        ids = pd.Series(np.arange(len(classes)), index=classes)
        out[level] = ids.reindex(cells[LEVEL_COLUMN[level]].astype(str)).fillna(-100).astype(np.int64).to_numpy()
    return out


#: a class with at least this many training cells puts at least one of them into the validation set
MIN_CELLS_FOR_VALIDATION = 5


def validation_split(labels: np.ndarray, idx: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) store indices: a seeded stratified ``fraction`` per class, at least one cell of every class
    with ``MIN_CELLS_FOR_VALIDATION`` or more (so tail classes are seen by model selection); smaller classes
    keep all their cells for training. Validation cells are taken out of training, never shared."""
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(labels[idx]):
        members = idx[labels[idx] == c]
        n = min(int(round(len(members) * fraction)), len(members) - 1)
        if len(members) >= MIN_CELLS_FOR_VALIDATION and fraction > 0:
            n = max(n, 1)
        if n > 0:
            val.append(rng.choice(members, n, replace=False))
    val = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
    return np.setdiff1d(idx, val), val


def build_encoder(cfg: FinetuneConfig, store: TokenStore, pretrained: str | Path | None) -> Encoder:
    """The starting encoder: pretrained weights (Celler or scGPT directory), grown to an extended vocabulary,
    or a fresh one from ``cfg.preset``."""
    vocab = store.vocab()
    if cfg.init == "scratch" or pretrained is None:
        if cfg.init != "scratch":
            msg = "init is 'pretrained' but no pretrained model directory was given"
            raise CellerError(msg)
        return Encoder(preset(cfg.preset, vocab_size=len(vocab), n_bins=store.n_bins, pad_id=vocab.pad_id,
                              cls_id=vocab.cls_id))
    from celler.model.pretrained import check_vocab, load_pretrained

    encoder, mcfg, model_vocab = load_pretrained(pretrained)
    if mcfg.n_bins != store.n_bins:
        msg = f"{pretrained}: model has {mcfg.n_bins} value bins but the token store {store.n_bins}; re-tokenize"
        raise CellerError(msg)
    if len(vocab) > len(model_vocab) and vocab.tokens[: len(model_vocab)] == model_vocab.tokens:
        encoder.resize_token_embeddings(len(vocab))  # extend mode: new genes get fresh rows
    else:
        check_vocab(vocab, model_vocab, what=f"model {pretrained}")
    return encoder


def build_classifier(cfg: FinetuneConfig, store: TokenStore, pretrained, levels, *, genes=None,
                     cosine_scale=None, axes=None) -> CellClassifier:
    """The classifier before fine-tuning. From a pretrained model every view starts pretrained: the encoder,
    and the profile view's gene vectors (the encoder's gene embedding, which the cell-level objective
    trained) with that objective's LayerNorm; the program view takes ``axes`` (:func:`fit_axes`, fitted
    without labels); only the heads start fresh."""
    model = CellClassifier(build_encoder(cfg, store, pretrained), levels, readout=cfg.readout, genes=genes,
                           cosine_scale=cosine_scale, n_programs=cfg.n_programs)
    if model.profile is not None and pretrained is not None and cfg.init != "scratch":
        model.profile.init_from(model.encoder.gene_embedding.weight, load_profile_norm(pretrained))
    if model.programs is not None:
        model.programs.set_axes(*axes)
    return model


def _train(model, store, train_idx, val_idx, targets, losses, cfg, *, epochs, frozen_emb=None, log_rows=None,
           stage="main"):
    """The training loop (both stages): returns the best-on-validation state dict and its macro-F1."""
    device = next(model.parameters()).device
    # a frozen encoder has requires_grad False, so only the heads reach the optimiser
    optimizer = configure_optimizers(model, lr=cfg.lr, weight_decay=cfg.weight_decay, device_type=device.type,
                                     slow=model.encoder, slow_scale=cfg.encoder_lr_scale)
    steps_per_epoch = max(1, int(np.ceil(len(train_idx) / cfg.batch_size)))
    min_epochs = int(np.ceil(cfg.min_steps / steps_per_epoch))
    epochs = max(epochs, min_epochs)
    if cfg.max_steps:
        epochs = max(1, min(epochs, int(np.ceil(max(cfg.max_steps, cfg.min_steps) / steps_per_epoch))))
    total_steps = epochs * steps_per_epoch
    warmup = max(1, total_steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up over 10% of the steps, then cosine to 0
        optimizer, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + np.cos(np.pi * (s - warmup) / max(1, total_steps - warmup))))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and cfg.bf16 else nullcontext()
    val_emb = frozen_emb[val_idx] if frozen_emb is not None else None
    best = (-1.0, copy.deepcopy(model.state_dict()))
    since_best = 0
    rng = np.random.default_rng(cfg.seed)
    for epoch in range(epochs):
        model.train()
        total, n = 0.0, 0
        if frozen_emb is not None:
            batches = [b for b in np.array_split(rng.permutation(len(train_idx)), steps_per_epoch) if len(b)]
            iterator = ((None, train_idx[b]) for b in batches)
        else:
            iterator = ((batch, batch["index"].numpy()) for batch in loader(store, train_idx, cfg, model,
                                                                              shuffle=True, epoch=epoch))
        for batch, idx in iterator:
            with autocast:
                if frozen_emb is None:
                    logits, _ = model(*batch_inputs(batch, device))
                else:
                    logits, _ = model(None, None, embedding=torch.as_tensor(frozen_emb[idx], device=device))
            loss = 0.0
            for k, z in logits.items():  # sum over levels; cells without a label at a level are skipped there
                t = torch.as_tensor(targets[k][idx], device=device)
                keep = t >= 0
                if keep.any():
                    loss = loss + losses[k](z.float()[keep], t[keep])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            total, n = total + float(loss.detach()) * len(idx), n + len(idx)
        if len(val_idx):
            val_logits, _ = predict_logits(model, store, val_idx, cfg, embeddings=val_emb)
            f1 = {k: macro_f1(targets[k][val_idx], v.argmax(1).numpy()) for k, v in val_logits.items()}
        else:  # no validation cells (tiny data): keep the last epoch
            f1 = {k: float(epoch) for k in model.levels}
        if log_rows is not None:
            log_rows.append({"stage": stage, "epoch": epoch, "train_loss": total / max(n, 1),
                             **{f"val_macro_f1_{k}": v for k, v in f1.items()}})
        log.info("%s epoch %d: loss %.4f, val macro-F1 %s", stage, epoch, total / max(n, 1),
                 {k: round(v, 4) for k, v in f1.items()})
        if f1["subclass"] >= best[0]:  # a tie keeps the later, longer-trained epoch
            best, since_best = (f1["subclass"], copy.deepcopy(model.state_dict())), 0
        else:
            since_best += 1
            if since_best >= cfg.patience and epoch + 1 >= min_epochs:
                break
    return best


def hard_examples(model, store, train_idx, targets, cfg, *, frozen_emb=None) -> np.ndarray:
    """Training cells predicted wrongly with probability above ``two_stage_confidence`` (subclass level)."""
    logits, _ = predict_logits(model, store, train_idx, cfg,
                               embeddings=frozen_emb[train_idx] if frozen_emb is not None else None)
    prob = torch.softmax(logits["subclass"], 1)
    conf, pred = prob.max(1)
    wrong = (pred.numpy() != targets["subclass"][train_idx]) & (conf.numpy() > cfg.two_stage_confidence)
    return train_idx[wrong]


def loss_candidates(cfg: FinetuneConfig) -> list[tuple[str, dict]]:
    """(loss name, params) to train: one, or the ``auto`` grid over tau and sigma (GInf+HDM)."""
    if cfg.loss != "auto":
        return [(cfg.loss, dict(cfg.loss_params))]
    base = {k: v for k, v in cfg.loss_params.items() if k not in ("tau", "sigma")}
    return [("ginf+hdm", {**base, "tau": t, "sigma": s}) for t in cfg.auto_grid["tau"] for s in cfg.auto_grid["sigma"]]


def count_classes(targets: dict, levels: dict, idx: np.ndarray) -> dict[str, list[int]]:
    """Per level: the number of cells of each class among ``idx`` (the N_j the long-tail losses read)."""
    return {k: np.bincount(targets[k][idx][targets[k][idx] >= 0], minlength=len(v)).tolist()
            for k, v in levels.items()}


def train_candidate(cfg, store, pretrained, levels, name, params, counts, train_idx, val_idx, targets, *,
                    genes=None, axes=None, log_rows=None) -> tuple[float, CellClassifier]:
    """One model with one loss: built, trained on ``train_idx`` (the best epoch on ``val_idx``, or the last
    without validation cells), with the optional second stages; returns its validation macro-F1 and the model."""
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
    losses = {k: build_loss(name, counts[k], generator=generator, **params).to(device) for k in levels}
    cosine = losses["subclass"].scale if name == "gcl" else None  # GCL reads a cosine head
    model = build_classifier(cfg, store, pretrained, levels, genes=genes, cosine_scale=cosine, axes=axes).to(device)
    model.view_dropout = cfg.view_dropout
    for head in model.heads.values():
        head.drop.p = head.drop.p if cfg.head_dropout is None else cfg.head_dropout
    frozen = None
    if cfg.freeze_encoder:
        model.encoder.requires_grad_(False)
        seen = np.union1d(train_idx, val_idx)
        _, frozen_part = predict_logits(model, store, seen, cfg)
        frozen = np.zeros((len(store), model.embedding_dim), np.float32)
        frozen[seen] = frozen_part
    tag = f"{name} {params}" if cfg.loss == "auto" else "main"
    f1, state = _train(model, store, train_idx, val_idx, targets, losses, cfg, epochs=cfg.epochs,
                       frozen_emb=frozen, log_rows=log_rows, stage=tag)
    model.load_state_dict(state)
    if cfg.two_stage:
        hard = hard_examples(model, store, train_idx, targets, cfg, frozen_emb=frozen)
        log.info("two-stage: %d confidently misclassified training cells", len(hard))
        if len(hard):
            stage_cfg = replace(cfg, lr=cfg.lr / 10)
            f1_2, state_2 = _train(model, store, hard, val_idx, targets, losses, stage_cfg,
                                   epochs=cfg.two_stage_epochs, frozen_emb=frozen, log_rows=log_rows, stage="hard")
            if f1_2 >= f1:
                f1, state = f1_2, state_2
            model.load_state_dict(state)
    if name == "gcl":
        f1 = gcl_second_stage(model, store, train_idx, val_idx, targets, counts, losses, params, cfg,
                              frozen_emb=frozen)
    return f1, model


def finetune(store_path, out_dir, cfg: FinetuneConfig | None = None, *, pretrained=None, train_cells=None,
             unlabelled_cells=None):
    """Fine-tune on the 'train' cells of the token store at ``store_path``; write the model directory.

    ``train_cells``: optional list of cell names to train on instead of the store's 'train' split (an induced
    long tail, or a split re-drawn per seed). ``unlabelled_cells``: names of further cells whose expression
    (never their labels) the program view's axes may be fitted on, besides the training cells.
    Returns ``(model, levels, info)`` where ``info`` holds the chosen loss, class counts and validation F1.
    """
    cfg = cfg or FinetuneConfig()
    store = TokenStore(store_path)
    cells = store.cells
    if train_cells is None:
        train_mask = cells["split"].astype(str).eq("train").to_numpy()
    else:
        train_mask = cells.index.isin(pd.Index(train_cells))
    all_train = np.flatnonzero(train_mask)
    levels = label_levels(cells, all_train)
    targets = encode_targets(cells, levels)
    train_idx, val_idx = validation_split(targets["subclass"], all_train, cfg.val_fraction, cfg.seed)
    counts = count_classes(targets, levels, train_idx)
    log.info("fine-tuning on %d cells (%d for validation), %s classes", len(train_idx), len(val_idx),
             {k: len(v) for k, v in levels.items()})

    genes = highly_variable_tokens(store, all_train, cfg.n_hvg) if cfg.gene_selection == "hvg" else None
    if cfg.freeze_encoder and any(p in FLAT_VIEWS for p in cfg.readout.split("+")):
        msg = (f"freeze_encoder caches each cell's embedding once, so the readout cannot read a flat view "
               f"(readout {cfg.readout!r}); use readout cls, mean or cls+mean, or freeze_encoder: false")
        raise CellerError(msg)
    axes = None
    if "programs" in cfg.readout.split("+"):
        # a tissue with dozens of fine types gets an axis per type (benchmarks/RESULTS.md, 'Many-class benchmark')
        cfg = replace(cfg, n_programs=max(cfg.n_programs, len(levels["subclass"])))
        unlabelled = np.flatnonzero(cells.index.isin([] if unlabelled_cells is None else unlabelled_cells))
        axes = fit_axes(store, np.union1d(all_train, unlabelled), cfg.n_programs, cfg.seed, genes=genes)

    def train_one(name, params, fit_idx, check_idx, log_rows=None):
        fit_counts = count_classes(targets, levels, fit_idx)
        return train_candidate(cfg, store, pretrained, levels, name, params, fit_counts, fit_idx, check_idx,
                               targets, genes=genes, axes=axes, log_rows=log_rows)

    best_overall, rows, candidates = None, [], []
    for name, params in loss_candidates(cfg):
        f1, model = train_one(name, params, train_idx, val_idx, log_rows=rows)
        candidates.append({"loss": name, "loss_params": params, "val_macro_f1": f1})
        if best_overall is None or f1 > best_overall[0]:
            best_overall = (f1, model, name, params)
    f1, model, name, params = best_overall
    info = {"loss": name, "loss_params": params, "val_macro_f1": f1, "class_counts": counts,
            "n_train": len(train_idx), "n_val": len(val_idx), "candidates": candidates}
    if cfg.posthoc_adjustment and len(val_idx):
        info["posthoc"] = posthoc_adjustment(model, store, val_idx, targets, counts, cfg)
    # one pass over the validation cells serves both rules: the confidence calibration reads their logits,
    # the novelty cut their readout vectors
    val_logits, val_emb = predict_logits(model, store, val_idx, cfg) if len(val_idx) else ({}, None)
    calibration = calibrate_levels(model, val_logits, {k: t[val_idx] for k, t in targets.items()}) or None
    model.calibration = calibration or {}
    out_of_fold = None
    if len(val_idx) < MIN_VALIDATION and cfg.novelty_folds:  # too few unfitted cells for the cut: cross-fit
        out_of_fold = out_of_fold_novelty(lambda fit: train_one(name, params, fit, val_idx[:0])[1], store,
                                          train_idx, targets["subclass"], len(levels["subclass"]), cfg,
                                          folds=cfg.novelty_folds)
        info["out_of_fold_cells"] = len(out_of_fold)
    model.novelty = fit_novelty(model, store, train_idx, targets["subclass"], cfg, val_emb, out_of_fold)
    info["val_cells"] = cells.index[val_idx].tolist()
    save_classifier(model, out_dir, cfg=cfg, info=info, store=store, pretrained=pretrained, log_rows=rows,
                    calibration=calibration)
    return model, levels, info


def fit_novelty(model, store, train_idx, labels, cfg, val_emb, out_of_fold=None) -> NoveltyIndex:
    """The novelty score's index over the training cells' readout vectors, its cut set on the validation
    cells' (``val_emb``; None without validation cells) and, when those are few, the training cells'
    ``out_of_fold`` novelty (celler.model.novelty, celler.train.crossfit)."""
    _, emb = predict_logits(model, store, train_idx, cfg)
    index = NoveltyIndex.fit(emb, labels[train_idx], len(model.levels["subclass"]))
    index.set_cut(index.score(val_emb) if val_emb is not None else np.zeros(0), out_of_fold=out_of_fold)
    log.info("novelty cut %.2f (%d training cells indexed, %d validation cells, %d out-of-fold)", index.cut,
             len(train_idx), 0 if val_emb is None else len(val_emb), 0 if out_of_fold is None else len(out_of_fold))
    return index


def calibrate_levels(model, val_logits: dict, val_targets: dict) -> dict:
    """Per level: temperature and low-confidence thresholds fitted on the validation cells' logits
    (celler.model.calibration)."""
    from celler.model.calibration import calibrate

    # calibrate() ignores unlabelled cells (-1) and falls back to defaults when too few are left
    return {level: calibrate(z, val_targets[level], model.levels[level]) for level, z in val_logits.items()
            if (val_targets[level] >= 0).any()}


__all__ = ["FinetuneConfig", "build_classifier", "build_encoder", "finetune", "loss_candidates", "validation_split"]
