"""Pretraining's settings, apart from its loop so that the checkpoint code reads them without importing the
loop (:mod:`celler.train.pretrain` and :mod:`celler.train.checkpoint` both import this)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from celler.errors import CellerError
from celler.model import ModelConfig


@dataclass
class PretrainConfig:
    """Pretraining settings. Every default is config.yaml's ``pretrain:`` value (tested)."""

    # model
    preset: str = "tiny"  # size, a key of celler.model.PRESETS ('tiny', 'small', 'scgpt-base')
    model: dict = field(default_factory=dict)  # ModelConfig overrides, e.g. {"dropout": 0.1}
    # data
    max_len: int = 192  # tokens per cell with <cls>; longer cells: random gene subset per epoch (scGPT: 1200)
    mask_ratio: float = 0.15  # share of a cell's gene values hidden and predicted (at least one per cell)
    profile_weight: float = 1.0  # weight of the cell-level objective (the profile view predicts every gene's
    #                              value; 0: masked values only); it trains the gene vectors the classifier reads
    init: str | None = None  # start from this pretrained model directory (per-tissue continued pretraining)
    transductive: bool = False  # also pretrain on split == 'test' cells (never on their labels)
    max_cells: int | None = None  # pretrain on a random subset of at most this many cells (None: all)
    bucket: bool = True  # length-bucketed batches (little padding) instead of random ones
    bucket_pool: int = 100  # bucketing sorts by length within random pools of this many batches
    num_workers: int = 0  # DataLoader worker processes; 0 reads in the training process (fine on CPU)
    # optimisation
    batch_size: int = 32  # cells per step and process (global batch = batch_size x processes)
    lr: float = 2e-3  # peak learning rate after warm-up (tiny on CPU; scgpt-base from scratch: ~1e-4)
    min_lr_ratio: float = 0.1  # cosine decay ends at lr x min_lr_ratio on the last step
    warmup_steps: int = 40  # linear warm-up from 0 to lr
    max_steps: int = 1000  # optimiser steps in total (tiny, 14.5k cells: ~2 min on 2 idle CPU cores)
    weight_decay: float = 0.01  # AdamW decay, on matrices and embeddings only
    beta1: float = 0.9  # AdamW betas
    beta2: float = 0.95
    grad_clip: float = 1.0  # clip the global gradient norm to this (0: no clipping)
    # system and output
    seed: int = 0  # model init, data order, masking, dropout (rank r uses seed + r for dropout)
    device: str = "auto"  # 'auto' (cuda if available, else cpu), 'cpu', 'cuda'; torchrun: cuda:LOCAL_RANK
    bf16: bool = True  # bf16 autocast on CUDA; CPU always runs float32
    checkpoint_every: int = 100  # steps between checkpoints (0: only at the end and on SIGTERM)
    log_every: int = 1  # steps between train_log.csv rows

    def with_overrides(self, pairs: list[str]) -> PretrainConfig:
        """A copy with ``key=value`` strings applied (values parsed as JSON, else taken as text).

        Keys are PretrainConfig fields or ModelConfig fields (the latter go into ``model``; a ``model.``
        prefix is allowed), e.g. ``["max_steps=200", "lr=1e-3", "dropout=0.1"]``.
        """
        cfg = PretrainConfig(**{**asdict(self), "model": dict(self.model)})
        ours = {f.name: f for f in fields(PretrainConfig)}
        theirs = {f.name: f for f in fields(ModelConfig)}
        for pair in pairs:
            key, sep, text = pair.partition("=")
            key = key.strip().removeprefix("model.")
            if not sep:
                msg = f"--set expects key=value, got {pair!r}"
                raise CellerError(msg)
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                value = text
            if key in ours and key != "model":
                setattr(cfg, key, _coerce(key, value, ours[key].type))
            elif key in theirs:
                cfg.model[key] = _coerce(key, value, theirs[key].type)
            else:
                msg = f"unknown setting {key!r}; pretraining has {sorted(ours)}, the model {sorted(theirs)}"
                raise CellerError(msg)
        return cfg


def _coerce(key: str, value, type_name: str):
    """``value`` (parsed JSON) as the field's type ('int', 'float | None', ...), or a clear error."""
    base = type_name.split("|")[0].strip()
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if value is None and "None" in type_name:
        return None
    if base == "bool" and isinstance(value, bool):
        return value
    if base == "int" and number and float(value).is_integer():
        return int(value)
    if base == "float" and number:
        return float(value)
    if (base == "str" and isinstance(value, str)) or (base == "dict" and isinstance(value, dict)):
        return value
    msg = f"setting {key!r} must be {type_name}, got {value!r}"
    raise CellerError(msg)


__all__ = ["PretrainConfig"]
