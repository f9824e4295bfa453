"""Masked-value pretraining of the Celler encoder on token stores: one training loop, CPU to multi-GPU.

Launch (see ``scripts/pretrain.py``)::

    python scripts/pretrain.py --stores results/tokens/a results/tokens/b --out results/models/x --preset tiny
    torchrun --standalone --nproc_per_node=4 scripts/pretrain.py --stores ... --out ...     # 4 GPUs, 1 node
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_endpoint=HOST:29500 scripts/pretrain.py ...  # 2 nodes

The corpus is every cell of the stores whose split is not 'test' (``transductive=True`` adds the test cells;
their labels are never read here). AdamW with linear warm-up then cosine decay, gradient clipping, bf16
autocast on CUDA only. ``out_dir/checkpoint.pt`` holds everything needed to continue as if never stopped
(model, optimiser, scheduler, RNG states, epoch and batch position); ``resume=True`` restores it, and
SIGTERM (SLURM pre-emption) writes it before the process exits. At the end ``out_dir`` has::

    model.pt            encoder + masked-value head weights, ModelConfig, format and package version
    config.json         the resolved PretrainConfig and ModelConfig, stores, cell count, transductive flag
    vocab.json          the vocabulary the gene ids refer to
    bin_edges.json      the value-bin edges (only when pretrained on one store)
    train_log.csv       per step: step, epoch, loss, lr, grad_norm, tokens_per_s, cells_per_s, padding
    training_curve.png  loss and learning rate by step
    checkpoint.pt       the last resumable state
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from celler import __version__
from celler.data.tokens import ConcatStore, TokenStore
from celler.data.vocab import Vocab
from celler.errors import CellerError
from celler.model import Encoder, MaskedValueModel, ModelConfig, configure_optimizers, describe, preset
from celler.model.batching import CellDataset, LengthBucketSampler, RandomBatchSampler, collate

MODEL_FORMAT_VERSION = 1  # bump when model.pt changes incompatibly; load_pretrained refuses other versions
PROFILE_KEYS = ("profile_genes", "profile_values", "profile_offsets", "profile_hidden")  # profile_loss's inputs
LOG_COLUMNS = ["step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s", "cells_per_s", "padding", "profile_loss"]


@dataclass
class PretrainConfig:
    # model
    preset: str = "tiny"  # size, a key of celler.model.PRESETS ('tiny', 'small', 'scgpt-base')
    model: dict = field(default_factory=dict)  # ModelConfig overrides, e.g. {"dropout": 0.1}
    # data
    max_len: int = 256  # tokens per cell with <cls>; longer cells: random gene subset per epoch (scGPT: 1200)
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
    warmup_steps: int = 100  # linear warm-up from 0 to lr
    max_steps: int = 1500  # optimiser steps in total (tiny, 14.5k cells: ~2 min on 2 idle CPU cores)
    weight_decay: float = 0.01  # AdamW decay, on matrices and embeddings only
    beta1: float = 0.9  # AdamW betas
    beta2: float = 0.95
    grad_clip: float = 1.0  # clip the global gradient norm to this (0: no clipping)
    # system and output
    seed: int = 0  # model init, data order, masking, dropout (rank r uses seed + r for dropout)
    device: str = "auto"  # 'auto' (cuda if available, else cpu), 'cpu', 'cuda'; torchrun: cuda:LOCAL_RANK
    bf16: bool = True  # bf16 autocast on CUDA; CPU always runs float32
    checkpoint_every: int = 500  # steps between checkpoints (0: only at the end and on SIGTERM)
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


@dataclass
class PretrainResult:
    out_dir: Path
    step: int  # optimiser steps done
    loss: float  # loss of the last step
    interrupted: bool  # stopped by SIGTERM / the on_step hook; resume to continue


def open_stores(paths) -> TokenStore | ConcatStore:
    """One store, or several read as one (they must share vocabulary and bins)."""
    stores = [TokenStore(p) for p in paths]
    return stores[0] if len(stores) == 1 else ConcatStore(stores)


def select_cells(store, *, transductive: bool = False, max_cells: int | None = None,
                 seed: int = 0, cells=None) -> np.ndarray:
    """Store indices of the pretraining corpus: cells not held out for testing (all when transductive), or
    the named ``cells`` (labels are never read either way)."""
    split = store.cells["split"].astype(str).to_numpy()
    if cells is not None:
        idx = np.flatnonzero(store.cells.index.isin(pd.Index(cells)))
    else:
        idx = np.arange(len(store)) if transductive else np.flatnonzero(split != "test")
    if max_cells is not None and len(idx) > max_cells:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_cells, replace=False))
    if len(idx) == 0:
        msg = "no cells to pretrain on: every cell has split == 'test' (set transductive=true to use them)"
        raise CellerError(msg)
    return idx


def lr_factor(step: int, cfg: PretrainConfig) -> float:
    """Multiplier of cfg.lr at ``step``: linear warm-up, then cosine decay to min_lr_ratio."""
    if step < cfg.warmup_steps:
        return (step + 1) / (cfg.warmup_steps + 1)
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


@contextmanager
def _distributed(cfg: PretrainConfig):
    """DDP if launched by torchrun (RANK set): nccl on CUDA, gloo on CPU. Yields (rank, world, device)."""
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if cfg.device == "auto" else cfg.device)
    if int(os.environ.get("RANK", -1)) == -1:
        yield 0, 1, device
        return
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        yield rank, world, device
    finally:
        dist.destroy_process_group()


class _StopRequest:
    """Set by SIGTERM (SLURM pre-emption); the loop checks it after each step and checkpoints."""

    def __init__(self):
        self.requested, self._previous = False, None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no signal handling
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def pretrain(stores, out_dir, cfg: PretrainConfig | None = None, *, resume: bool = False,
             on_step=None, cells=None) -> PretrainResult:
    """Pretrain on the token stores ``stores`` (paths) and write the model directory ``out_dir``.

    ``cells``: cell names to pretrain on instead of the stores' non-test cells (a split re-drawn per seed).

    ``resume`` continues from ``out_dir/checkpoint.pt`` when it exists (same stores and model settings).
    ``on_step(step, loss) -> bool`` is called after every step; returning True stops like SIGTERM does
    (checkpoint, then return with ``interrupted=True``). See the module docstring for the outputs.
    """
    cfg = cfg or PretrainConfig()
    out_dir, stores = Path(out_dir), [str(p) for p in stores]
    with _distributed(cfg) as (rank, world, device), _StopRequest() as stop:
        ddp, is_main = world > 1 or dist.is_initialized(), rank == 0
        store = open_stores(stores)
        indices = select_cells(store, transductive=cfg.transductive, max_cells=cfg.max_cells, seed=cfg.seed,
                               cells=cells)
        vocab = store.vocab()
        torch.manual_seed(cfg.seed)
        if cfg.init:
            model = start_from(cfg.init, store, profile=cfg.profile_weight > 0)
            mcfg = model.config
        else:
            data_settings = {"vocab_size": len(vocab), "n_bins": store.n_bins, "pad_id": vocab.pad_id,
                             "cls_id": vocab.cls_id}
            mcfg = preset(cfg.preset, **{**cfg.model, **data_settings})
            model = MaskedValueModel(mcfg, profile=cfg.profile_weight > 0)
        model = model.to(device)
        optimizer = configure_optimizers(model, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                         betas=(cfg.beta1, cfg.beta2), device_type=device.type)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, cfg=cfg))
        dataset = CellDataset(store, indices, max_len=cfg.max_len, mask_ratio=cfg.mask_ratio, seed=cfg.seed,
                              profile=cfg.profile_weight > 0)
        shard = {"seed": cfg.seed, "rank": rank, "world_size": world}
        sampler = (LengthBucketSampler(dataset.lengths, cfg.batch_size, pool_batches=cfg.bucket_pool, **shard)
                   if cfg.bucket else RandomBatchSampler(dataset.lengths, cfg.batch_size, **shard))
        if len(sampler) == 0:
            msg = f"{len(indices)} cells make no batch of {cfg.batch_size} for each of {world} processes"
            raise CellerError(msg)
        torch.manual_seed(cfg.seed + rank)  # dropout differs between ranks
        run = {"stores": stores, "n_cells": len(indices), "init": cfg.init}  # what a resumed checkpoint must match
        ckpt_path = out_dir / "checkpoint.pt"
        step, epoch, batch_in_epoch = 0, 0, 0
        if resume and ckpt_path.exists():
            step, epoch, batch_in_epoch = _load_checkpoint(ckpt_path, model, optimizer, scheduler, cfg, mcfg,
                                                           run, rank)
        if is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            print(f"pretraining {describe(mcfg)} on {len(indices)} cells of {len(stores)} store(s) "
                  f"(transductive: {cfg.transductive}), {world} process(es) on {device}, from step {step}",
                  flush=True)
        raw_model = model
        if ddp:
            ids = [device.index] if device.type == "cuda" else None
            model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=partial(collate, pad_id=mcfg.pad_id),
                            num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
                            generator=torch.Generator())  # own generator: the global RNG stays for dropout
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if cfg.bf16 and device.type == "cuda"
                    else nullcontext())
        log = _CsvLog(out_dir / "train_log.csv", keep_until=step) if is_main else None
        bar = tqdm(total=cfg.max_steps, initial=step, desc="pretrain", unit="step", disable=not is_main,
                   mininterval=2)
        loss_value, stopping = float("nan"), False
        model.train()
        while step < cfg.max_steps and not stopping:
            sampler.set_epoch(epoch, start=batch_in_epoch)
            dataset.set_epoch(epoch)
            t0 = time.perf_counter()
            for batch in loader:
                pad = batch["padding_mask"]
                n_tokens, n_cells, padding = float((~pad).sum()), float(len(pad)), float(pad.float().mean())
                genes, values, targets = (batch[k].to(device, non_blocking=True)
                                          for k in ("genes", "values", "targets"))
                pad = pad.to(device, non_blocking=True) if pad.any() else None  # None: flash attention
                with autocast:
                    if cfg.profile_weight > 0:
                        _, value_loss, profile_loss = model(genes, values, pad, targets,
                                                            profile=[batch[k].to(device) for k in PROFILE_KEYS])
                    else:
                        (_, value_loss), profile_loss = model(genes, values, pad, targets), torch.zeros(())
                loss = value_loss + cfg.profile_weight * profile_loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = (torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                             if cfg.grad_clip > 0 else torch.tensor(float("nan")))
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                scheduler.step()
                step, batch_in_epoch = step + 1, batch_in_epoch + 1
                local_loss = value_loss.item()
                hook_stop = bool(on_step and on_step(step, local_loss))
                stats = torch.tensor([local_loss, n_tokens, n_cells, padding, hook_stop or stop.requested,
                                      profile_loss.item()], dtype=torch.float32, device=device)
                if ddp:  # sums over ranks: totals for throughput, means below, stop if any rank stops
                    dist.all_reduce(stats)
                loss_value, n_tokens, n_cells, padding, n_stop, profile_value = stats.tolist()
                loss_value, padding, stopping = loss_value / world, padding / world, n_stop > 0
                profile_value /= world
                dt = time.perf_counter() - t0  # this step, its data loading included
                if log is not None and (step % cfg.log_every == 0 or step == cfg.max_steps):
                    log.write([step, epoch, loss_value, lr, float(grad_norm), n_tokens / dt, n_cells / dt,
                               padding, profile_value])
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
                done = stopping or step >= cfg.max_steps
                if is_main and (done or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0)):
                    _save_checkpoint(ckpt_path, raw_model, optimizer, scheduler, cfg, mcfg, run,
                                     step=step, epoch=epoch, batch_in_epoch=batch_in_epoch)
                if done:
                    break
                t0 = time.perf_counter()
            else:  # the epoch ran out: next one
                epoch, batch_in_epoch = epoch + 1, 0
        bar.close()
        if log is not None:
            log.close()
        if is_main and not stopping:
            if not ckpt_path.exists():  # no step was run (max_steps reached already)
                _save_checkpoint(ckpt_path, raw_model, optimizer, scheduler, cfg, mcfg, run,
                                 step=step, epoch=epoch, batch_in_epoch=batch_in_epoch)
            _write_outputs(out_dir, raw_model, mcfg, cfg, vocab, run, step, loss_value)
        if ddp:
            dist.barrier()
        return PretrainResult(out_dir=out_dir, step=step, loss=loss_value, interrupted=stopping)


class _CsvLog:
    """Appends rows to train_log.csv; on resume keeps the rows up to the checkpoint's step."""

    def __init__(self, path: Path, keep_until: int):
        kept = []
        if keep_until > 0 and path.exists():
            rows = path.read_text().splitlines()[1:]
            kept = [r for r in rows if r and int(r.split(",")[0]) <= keep_until]
        path.write_text("\n".join([",".join(LOG_COLUMNS), *kept]) + "\n")
        self._f = path.open("a")

    def write(self, row) -> None:
        self._f.write(",".join(f"{x:.6g}" if isinstance(x, float) else str(x) for x in row) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def _save_checkpoint(path, model, optimizer, scheduler, cfg, mcfg, run, *, step, epoch, batch_in_epoch):
    _atomic_save({
        "format_version": MODEL_FORMAT_VERSION, "celler_version": __version__,
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
        "config": asdict(cfg), "model_config": asdict(mcfg), **run,
    }, path)


def _load_checkpoint(path, model, optimizer, scheduler, cfg, mcfg, run, rank):
    ck = torch.load(path, map_location="cpu", weights_only=False)  # our own file: holds numpy RNG state
    if ck.get("format_version") != MODEL_FORMAT_VERSION:
        msg = (f"{path}: checkpoint format {ck.get('format_version')} (celler {ck.get('celler_version')}) "
               f"is not {MODEL_FORMAT_VERSION}; delete it to start over")
        raise CellerError(msg)
    if ck["model_config"] != asdict(mcfg):
        changed = sorted(k for k, v in asdict(mcfg).items() if ck["model_config"].get(k) != v)
        msg = f"{path}: written for a different model (changed: {changed}); use its settings or delete it"
        raise CellerError(msg)
    if any(ck[k] != v for k, v in run.items()):
        msg = f"{path}: written for other data ({ck['stores']}, {ck['n_cells']} cells); delete it to restart"
        raise CellerError(msg)
    changed = {k: v for k, v in asdict(cfg).items() if ck["config"].get(k) != v}
    if changed and rank == 0:
        print(f"resuming {path} (step {ck['step']}) with changed settings: {changed}", flush=True)
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    scheduler.load_state_dict(ck["scheduler"])
    if rank == 0:  # other ranks keep their own dropout stream
        torch.set_rng_state(ck["rng"]["torch"])
        np.random.set_state(ck["rng"]["numpy"])
        random.setstate(ck["rng"]["python"])
        if ck["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ck["rng"]["cuda"])
    else:
        torch.manual_seed(cfg.seed + rank + 1000 * ck["step"])
    return ck["step"], ck["epoch"], ck["batch_in_epoch"]


def _write_outputs(out_dir, model, mcfg, cfg, vocab, run, step, loss):
    profile = {} if model.profile is None else {  # the profile view's gene vectors are the encoder's
        "profile_norm": model.profile.norm.state_dict(), "profile_decoder": model.decoder.state_dict()}
    _atomic_save({
        "format_version": MODEL_FORMAT_VERSION, "celler_version": __version__,
        "model_config": asdict(mcfg), "vocab_size": len(vocab),
        "encoder": model.encoder.state_dict(), "masked_value_head": model.head.state_dict(), **profile,
    }, out_dir / "model.pt")
    (out_dir / "config.json").write_text(json.dumps({
        "format_version": MODEL_FORMAT_VERSION, "celler_version": __version__,
        "pretrain": asdict(cfg), "model": asdict(mcfg), **run,
        "transductive": cfg.transductive, "steps": step, "final_loss": loss,
        "world_size": dist.get_world_size() if dist.is_initialized() else 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }, indent=1))
    vocab.save(out_dir / "vocab.json")
    if len(run["stores"]) == 1:
        shutil.copyfile(Path(run["stores"][0]) / "bin_edges.json", out_dir / "bin_edges.json")
    plot_training_curve(out_dir / "train_log.csv", out_dir / "training_curve.png")


def plot_training_curve(log_csv, out_png) -> None:
    """Masked-value loss (raw and smoothed) and learning rate against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    log = pd.read_csv(log_csv)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(log["step"], log["loss"], color="0.75", lw=0.8, label="loss")
    ax.plot(log["step"], log["loss"].ewm(alpha=0.05).mean(), color="C0", lw=1.5, label="smoothed")
    ax.set_xlabel("step")
    ax.set_ylabel("masked-value cross-entropy")
    ax2 = ax.twinx()
    ax2.plot(log["step"], log["lr"], color="C1", lw=1, ls="--")
    ax2.set_ylabel("learning rate", color="C1")
    ax.legend(loc="upper right", frameon=False)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)


def _read_model(d: Path) -> tuple[dict, ModelConfig, Vocab]:
    """A Celler pretrained model.pt as saved (checked), its ModelConfig and vocabulary."""
    blob = torch.load(d / "model.pt", map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format_version") != MODEL_FORMAT_VERSION:
        found = blob.get("format_version") if isinstance(blob, dict) else None
        by = blob.get("celler_version") if isinstance(blob, dict) else "unknown"
        msg = (f"{d / 'model.pt'}: model format {found} (written by celler {by}) cannot be read by celler "
               f"{__version__} (format {MODEL_FORMAT_VERSION}); re-run pretraining or install celler {by}")
        raise CellerError(msg)
    try:
        mcfg = ModelConfig(**blob["model_config"])
    except TypeError as e:
        msg = f"{d / 'model.pt'}: model settings not understood by celler {__version__} ({e})"
        raise CellerError(msg) from e
    vocab = Vocab.load(d / "vocab.json")
    if len(vocab) != mcfg.vocab_size:
        msg = f"{d}: vocab.json has {len(vocab)} tokens but the gene embedding has {mcfg.vocab_size} rows"
        raise CellerError(msg)
    return blob, mcfg, vocab


def load_pretrained(model_dir, *, device: str = "cpu") -> tuple[Encoder, ModelConfig, Vocab]:
    """The pretrained encoder, its config and vocabulary from a Celler model directory (``model.pt``) or a
    scGPT one (``args.json``, ``vocab.json``, ``best_model.pt``; see :mod:`celler.model.scgpt`)."""
    d = Path(model_dir)
    if not (d / "model.pt").exists():
        if (d / "best_model.pt").exists() and (d / "args.json").exists():
            from celler.model.scgpt import load_scgpt

            encoder, mcfg, vocab = load_scgpt(d)
            return encoder.to(device), mcfg, vocab
        msg = f"{d}: not a model directory (no model.pt, and no scGPT args.json + best_model.pt)"
        raise CellerError(msg)
    blob, mcfg, vocab = _read_model(d)
    encoder = Encoder(mcfg)
    encoder.load_state_dict(blob["encoder"])
    return encoder.to(device), mcfg, vocab


def load_profile_norm(model_dir) -> dict | None:
    """The profile view's LayerNorm trained by the cell-level objective, or None (not pretrained with it)."""
    d = Path(model_dir)
    if not (d / "model.pt").exists():
        return None
    return _read_model(d)[0].get("profile_norm")


def start_from(model_dir, store, *, profile: bool) -> MaskedValueModel:
    """A pretraining model holding the weights of ``model_dir`` (continued pretraining on a tissue's cells),
    its gene embedding grown to the store's extended vocabulary (new genes start fresh)."""
    d = Path(model_dir)
    if not (d / "model.pt").exists():
        msg = f"{d}: not a Celler pretrained model directory (no model.pt); pretrain first"
        raise CellerError(msg)
    blob, mcfg, model_vocab = _read_model(d)
    if mcfg.n_bins != store.n_bins:
        msg = f"{d}: model has {mcfg.n_bins} value bins but the token store {store.n_bins}; re-tokenize"
        raise CellerError(msg)
    model = MaskedValueModel(mcfg, profile=profile)
    model.encoder.load_state_dict(blob["encoder"])
    model.head.load_state_dict(blob["masked_value_head"])
    if profile and "profile_norm" in blob:
        model.profile.norm.load_state_dict(blob["profile_norm"])
        model.decoder.load_state_dict(blob["profile_decoder"])
    vocab = store.vocab()
    if len(vocab) > len(model_vocab) and vocab.tokens[: len(model_vocab)] == model_vocab.tokens:
        model.encoder.resize_token_embeddings(len(vocab))
        model.config = model.encoder.config
        if model.decoder is not None:
            model.decoder.resize(len(vocab))
        model.tie_profile()
    else:
        check_vocab(vocab, model_vocab, what=f"model {d}")
    return model


@torch.no_grad()
def embed(model_dir, store, *, batch_size: int = 64, max_len: int | None = None, device: str = "auto",
          indices=None) -> np.ndarray:
    """Cell embeddings (the <cls> output, float32, n_cells x d_model, in store order) of ``store``.

    ``store`` is a path or a TokenStore / ConcatStore; ``indices`` picks cells (default all).
    ``max_len`` defaults to the model's pretraining max_len (1200 for scGPT models); longer cells get a
    fixed random subset of genes. The workflow writes the result to ``adata.obsm["X_celler"]``.
    """
    store = TokenStore(store) if isinstance(store, (str, Path)) else store
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    encoder, mcfg, vocab = load_pretrained(model_dir, device=dev)
    check_vocab(store.vocab(), vocab, what=f"model {model_dir}")
    if store.n_bins != mcfg.n_bins:
        msg = f"the token store has {store.n_bins} value bins, model {model_dir} was trained on {mcfg.n_bins}"
        raise CellerError(msg)
    if max_len is None:
        config = Path(model_dir) / "config.json"
        max_len = json.loads(config.read_text())["pretrain"]["max_len"] if config.exists() else 1200
    dataset = CellDataset(store, indices, max_len=max_len, mask_ratio=0.0)
    batches = LengthBucketSampler(dataset.lengths, batch_size, shuffle=False)
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=partial(collate, pad_id=mcfg.pad_id))
    encoder.eval()
    out = np.zeros((len(dataset), mcfg.d_model), np.float32)
    position = {int(c): i for i, c in enumerate(dataset.indices)}
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else nullcontext()
    for batch in tqdm(loader, desc="embed", unit="batch", mininterval=5):
        pad = batch["padding_mask"]
        with autocast:
            emb = encoder.cell_embedding(batch["genes"].to(dev), batch["values"].to(dev),
                                         pad.to(dev) if pad.any() else None)
        out[[position[int(c)] for c in batch["index"]]] = emb.float().cpu().numpy()
    return out


def check_vocab(data: Vocab, model: Vocab, *, what: str) -> None:
    """Raise unless token ids of ``data`` mean the same genes as in ``model``."""
    if data.tokens == model.tokens:
        return
    n = min(len(data), len(model))
    if data.tokens[:n] == model.tokens[:n] and len(data) > len(model):
        msg = (f"the token store uses an extended vocabulary ({len(data) - len(model)} genes beyond the "
               f"{len(model)} of {what}); fine-tune with resize_token_embeddings, or tokenize with vocab "
               "mode 'match'")
    else:
        first = next((i for i in range(n) if data.tokens[i] != model.tokens[i]), n)
        msg = (f"the token store's vocabulary differs from that of {what} (id {first}: "
               f"{data.tokens[first] if first < len(data) else None!r} vs "
               f"{model.tokens[first] if first < len(model) else None!r}); tokenize with the model's "
               "vocab.json")
    raise CellerError(msg)


__all__ = [
    "PretrainConfig", "PretrainResult", "check_vocab", "embed", "load_pretrained", "load_profile_norm", "lr_factor",
    "open_stores", "plot_training_curve", "pretrain", "select_cells", "start_from",
]
