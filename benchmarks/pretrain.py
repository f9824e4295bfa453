"""Pretraining throughput: tokens/s, cells/s, model FLOP/s and MFU, length-bucketed vs naive batches.

    python benchmarks/pretrain.py                                   # tiny + small on pbmc3k, this device
    python benchmarks/pretrain.py --presets scgpt-base --max-len 1200 --batch-size 32 --steps 50   # a GPU

Each preset runs the same number of training steps (forward, backward, AdamW; bf16 autocast on CUDA) twice
in one process: with length-bucketed batches and with naive random batches. Batches are collated before
the clock starts, so the figures are the model's; the data column gives collate time per batch
separately. tokens/s counts real (non-padding) tokens; the model FLOPs count only real tokens too
(``Encoder.estimate_flops_per_token`` per cell length), so MFU is useful work against the card's dense
bf16 peak. Prints a table and appends a section to benchmarks/RESULTS.md (benchmarks/_common.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402
from _common import append_results  # noqa: E402  (benchmarks/, sys.path[0] when run as a script)

from celler.model import MaskedValueModel, configure_optimizers, describe, preset  # noqa: E402
from celler.model.batching import (  # noqa: E402
    CellDataset,
    LengthBucketSampler,
    RandomBatchSampler,
    collate,
    padding_fraction,
)
from celler.train.pretrain import open_stores  # noqa: E402

PEAK_BF16 = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}  # dense


def pbmc3k_store(cache: Path) -> Path:
    """The pbmc3k token store used by the tests (QC'd, 51 bins), built once into ``cache``."""
    out = cache / "pbmc3k_tokens"
    if (out / "meta.json").exists():
        return out
    from celler.config import dataset_spec
    from celler.data.io import MatrixReader
    from celler.data.qc import run_qc
    from celler.data.tokens import tokenize
    from celler.data.vocab import Vocab, map_genes

    spec = dataset_spec("pbmc3k", {"inputs": [str(ROOT / "resources/data/pbmc3k_raw_unlabelled_desc.h5ad")],
                                   "qc": {"min_genes": 200, "min_cells": 3}})
    cells, genes, _ = run_qc(spec)
    mapping = map_genes(MatrixReader(spec.inputs[0].path).var, Vocab.load(ROOT / "resources/vocab.json"))
    return tokenize(spec, cells, genes, mapping, out, n_bins=51)


def peak_flops(device: torch.device, override_tflops: float | None) -> tuple[float | None, str]:
    if override_tflops:
        return override_tflops * 1e12, "given"
    if device.type != "cuda":
        return None, "n/a on CPU"
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16.items():
        if all(word in name for word in key.split()):
            return flops, f"{key} {flops / 1e12:.0f} TFLOP/s"
    return None, f"unknown peak for {name}"


def run(store, preset_name, *, bucket, max_len, batch_size, steps, warmup, device, seed=0):
    dataset = CellDataset(store, max_len=max_len, mask_ratio=0.15, seed=seed)
    Sampler = LengthBucketSampler if bucket else RandomBatchSampler
    batch_ids = list(Sampler(dataset.lengths, batch_size, seed=seed))[: warmup + steps]
    t0 = time.perf_counter()
    batches = [collate([dataset[i] for i in b], pad_id=dataset.pad_id) for b in batch_ids]
    data_ms = 1000 * (time.perf_counter() - t0) / len(batches)
    vocab = store.vocab()
    cfg = preset(preset_name, vocab_size=len(vocab), n_bins=store.n_bins, pad_id=vocab.pad_id,
                 cls_id=vocab.cls_id)
    torch.manual_seed(seed)
    model = MaskedValueModel(cfg).to(device).train()
    opt = configure_optimizers(model, lr=1e-4, weight_decay=0.01, device_type=device.type)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    tokens = cells = flops = 0.0
    for k, b in enumerate(batches):
        if k == warmup:
            sync()
            t0 = time.perf_counter()
        pad = b["padding_mask"]
        genes, values, targets = (b[x].to(device, non_blocking=True) for x in ("genes", "values", "targets"))
        with autocast:
            _, loss = model(genes, values, pad.to(device) if pad.any() else None, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if k >= warmup:
            n = (~pad).sum(1).numpy()
            tokens, cells = tokens + n.sum(), cells + len(n)
            flops += sum(int(x) * model.encoder.estimate_flops_per_token(int(x)) for x in n)
    sync()
    dt = time.perf_counter() - t0
    return {"preset": preset_name, "batches": "bucketed" if bucket else "naive", "max_len": max_len,
            "batch": batch_size, "steps": steps,
            "padding": padding_fraction(batch_ids[warmup:], dataset.lengths),
            "tokens_s": tokens / dt, "cells_s": cells / dt, "tflops": flops / dt / 1e12, "data_ms": data_ms,
            "loss": loss.item(), "model": describe(cfg)}


def load_text() -> str:
    """The 1/5/15-minute load averages: other jobs on the machine slow CPU figures down."""
    try:
        return " / ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stores", nargs="+", help="token store directories (default: pbmc3k, built and cached)")
    p.add_argument("--presets", nargs="+", default=["tiny", "small"])
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=20, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--repeats", type=int, default=1, help="runs per mode, alternating; the fastest is kept")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, if not detected")
    p.add_argument("--no-results", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    cache = Path(tempfile.gettempdir()) / "celler_benchmark"
    store = open_stores(args.stores or [pbmc3k_store(cache)])
    peak, peak_text = peak_flops(device, args.peak_tflops)

    rows = []
    for name in args.presets:
        best = {}
        for _ in range(args.repeats):  # alternate the two modes so both see the same machine load
            for bucket in (True, False):
                r = run(store, name, bucket=bucket, max_len=args.max_len, batch_size=args.batch_size,
                        steps=args.steps, warmup=args.warmup, device=device)
                r["mfu"] = f"{100 * r['tflops'] * 1e12 / peak:.1f}%" if peak else "n/a"
                print(f"{name:>10} {r['batches']:>8}: padding {r['padding']:.1%}, {r['tokens_s']:,.0f} "
                      f"tokens/s, {r['cells_s']:,.1f} cells/s, {r['tflops']:.3f} TFLOP/s, MFU {r['mfu']}",
                      flush=True)
                if r["cells_s"] > best.get(bucket, {}).get("cells_s", 0):
                    best[bucket] = r
        rows += [best[True], best[False]]

    header = ("| preset | batches | max_len | batch | padding | tokens/s | cells/s | model TFLOP/s | MFU "
              "| data ms/batch |")
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for r in rows:
        lines.append(f"| {r['preset']} | {r['batches']} | {r['max_len']} | {r['batch']} | {r['padding']:.1%} "
                     f"| {r['tokens_s']:,.0f} | {r['cells_s']:,.1f} | {r['tflops']:.3f} | {r['mfu']} "
                     f"| {r['data_ms']:.1f} |")
    ratios = []
    for name in args.presets:
        by = {r["batches"]: r for r in rows if r["preset"] == name}
        b, n = by["bucketed"], by["naive"]
        ratios.append(f"{name}: bucketed/naive cells/s x{b['cells_s'] / n['cells_s']:.2f}, "
                      f"padding {b['padding']:.1%} vs {n['padding']:.1%}")
    table = "\n".join(lines)
    if args.no_results:
        print("\n" + table + "\n" + "\n".join(ratios))
    else:  # append_results prints the section too
        n_vocab = len(store.vocab())
        data_text = ", ".join(Path(p).name for p in args.stores) if args.stores else "pbmc3k"
        device_text = (f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}"
                       if device.type == "cuda" else f"CPU, {torch.get_num_threads()} torch threads")
        notes = [
            f"- device: {device_text}, torch {torch.__version__}; MFU peak: {peak_text}"
            + ("" if device.type == "cuda" else " (GPU run pending: no GPU on this machine)"),
            f"- data: {len(store)} cells of {data_text}; {args.steps} timed "
            f"steps after {args.warmup} warm-up (fastest of {args.repeats} alternating runs per mode); mask "
            f"ratio 0.15; bf16 autocast on CUDA, float32 on CPU; load average at the end {load_text()}",
            "- models: " + "; ".join(f"{n}: {describe(preset(n, vocab_size=n_vocab))}" for n in args.presets),
            *[f"- {r}" for r in ratios],
        ]
        append_results("Pretraining throughput (benchmarks/pretrain.py)", table, "\n".join(notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
