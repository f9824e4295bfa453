"""What keeps a pretraining run safe to stop: distributed setup, SIGTERM handling, resumable checkpoints, the
step log, and the model directory it writes (read back by :mod:`celler.model.pretrained`)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from celler import __version__
from celler.errors import CellerError
from celler.model.pretrained import MODEL_FORMAT_VERSION
from celler.train.pretrain_config import PretrainConfig

LOG_COLUMNS = ["step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s", "cells_per_s", "padding", "profile_loss"]


@contextmanager
def distributed(cfg: PretrainConfig):
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


class StopRequest:
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


class CsvLog:
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


def save_checkpoint(path, model, optimizer, scheduler, cfg, mcfg, run, *, step, epoch, batch_in_epoch):
    _atomic_save({
        "format_version": MODEL_FORMAT_VERSION, "celler_version": __version__,
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
        "config": asdict(cfg), "model_config": asdict(mcfg), **run,
    }, path)


def load_checkpoint(path, model, optimizer, scheduler, cfg, mcfg, run, rank):
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


def write_outputs(out_dir, model, mcfg, cfg, vocab, run, step, loss):
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


__all__ = [
    "LOG_COLUMNS", "CsvLog", "StopRequest", "distributed", "load_checkpoint", "plot_training_curve", "save_checkpoint",
    "write_outputs",
]
