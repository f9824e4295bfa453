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

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from celler.data.tokens import ConcatStore, TokenStore
from celler.errors import CellerError
from celler.model import MaskedValueModel, configure_optimizers, describe, preset
from celler.model.batching import CellDataset, LengthBucketSampler, RandomBatchSampler, collate
from celler.model.pretrained import start_from
from celler.train.checkpoint import (
    CsvLog,
    StopRequest,
    distributed,
    load_checkpoint,
    save_checkpoint,
    write_outputs,
)
from celler.train.pretrain_config import PretrainConfig

PROFILE_KEYS = ("profile_genes", "profile_values", "profile_offsets", "profile_hidden")  # profile_loss's inputs


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
    with distributed(cfg) as (rank, world, device), StopRequest() as stop:
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
            step, epoch, batch_in_epoch = load_checkpoint(ckpt_path, model, optimizer, scheduler, cfg, mcfg,
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
        log = CsvLog(out_dir / "train_log.csv", keep_until=step) if is_main else None
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
                    save_checkpoint(ckpt_path, raw_model, optimizer, scheduler, cfg, mcfg, run,
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
                save_checkpoint(ckpt_path, raw_model, optimizer, scheduler, cfg, mcfg, run,
                                 step=step, epoch=epoch, batch_in_epoch=batch_in_epoch)
            write_outputs(out_dir, raw_model, mcfg, cfg, vocab, run, step, loss_value)
        if ddp:
            dist.barrier()
        return PretrainResult(out_dir=out_dir, step=step, loss=loss_value, interrupted=stopping)


__all__ = ["PretrainConfig", "PretrainResult", "lr_factor", "open_stores", "pretrain", "select_cells"]
