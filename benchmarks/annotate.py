"""Annotation throughput (cells/s) of ``celler.annotate``: CPU (tiny and small presets), GPU (scgpt-base).

    python benchmarks/annotate.py                                     # tiny + small on this machine's CPU
    python benchmarks/annotate.py --presets scgpt-base --repeat 20    # on a GPU machine (about 54k cells)

The query is the real pbmc3k count matrix (2,700 cells x 32,738 genes), concatenated ``--repeat`` times
with renamed cells. The models are randomly initialised classifiers (10 cell types) saved as complete
model directories, so the figures are exactly the annotation path: gene mapping, normalisation and
per-batch binning into a temporary token store, then the forward passes (``batch_size="auto"``, bf16
autocast on CUDA). Three figures per preset: the prediction alone on an already tokenised query
(model-bound), tokenisation alone, and ``annotate()`` end to end (which also loads the model and
assembles the result). Prints a table and appends a section to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import append_results  # noqa: E402

TARGET = 5_000  # cells/s on one H100 at scgpt-base


def build_query(out: Path, repeat: int) -> Path:
    import anndata as ad

    a = ad.read_h5ad(ROOT / "resources/data/pbmc3k_raw_unlabelled_desc.h5ad")
    if repeat > 1:
        parts = []
        for r in range(repeat):
            b = a.copy()
            b.obs_names = [f"{c}-{r}" for c in a.obs_names]
            parts.append(b)
        a = ad.concat(parts, merge="same")
    a.var_names_make_unique()
    a.write_h5ad(out)
    return out


def build_model(out: Path, store_path: Path, preset_name: str, max_len: int) -> Path:
    """A randomly initialised classifier saved as a model directory (genes.json = the store's genes)."""
    from celler.data.tokens import TokenStore
    from celler.model import Encoder, preset
    from celler.model.classifier import CellClassifier, save_classifier
    from celler.train.finetune import FinetuneConfig

    store = TokenStore(store_path)
    vocab = store.vocab()
    torch.manual_seed(0)
    enc = Encoder(preset(preset_name, vocab_size=len(vocab), n_bins=store.n_bins, pad_id=vocab.pad_id,
                         cls_id=vocab.cls_id))
    classes = [f"type{i}" for i in range(10)]
    model = CellClassifier(enc, {"subclass": classes}, readout="cls")  # the transformer's cost per preset
    cfg = FinetuneConfig(init="scratch", preset=preset_name, max_len=max_len, readout="cls")
    info = {"class_counts": {"subclass": [1] * len(classes)}, "loss": "ce", "loss_params": {},
            "val_macro_f1": 0.0, "n_train": 0, "n_val": 0}
    save_classifier(model, out, cfg=cfg, info=info, store=store, pretrained=None, log_rows=[])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=None, help="default: tiny small (CPU), scgpt-base (GPU)")
    ap.add_argument("--repeat", type=int, default=1, help="copies of pbmc3k in the query (2,700 cells each)")
    ap.add_argument("--max-len", type=int, default=None,
                    help="tokens per cell (the model's fine-tuning max_len); default 192 (the workflow's) on "
                    "CPU, 512 on GPU")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", default="auto")
    ap.add_argument("--no-append", action="store_true", help="print only; do not append to RESULTS.md")
    args = ap.parse_args()
    from celler.annotate import annotate, load_model, predict, tokenize_query
    from celler.model.classifier import pick_device

    device = pick_device(args.device)
    presets = args.presets or (["scgpt-base"] if device.type == "cuda" else ["tiny", "small"])
    args.max_len = args.max_len or (512 if device.type == "cuda" else 192)
    bs = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    rows = []
    with tempfile.TemporaryDirectory(prefix="celler-bench-annotate-") as tmp:
        tmp = Path(tmp)
        query = build_query(tmp / "query.h5ad", args.repeat)
        # a token store of the query itself supplies the vocabulary / bin layout of the random models
        import anndata as ad
        import pandas as pd

        from celler.config import DatasetSpec, InputFile
        from celler.data.tokens import tokenize
        from celler.data.vocab import Vocab, map_genes
        from celler.resources import default_vocab_path

        a = ad.read_h5ad(query, backed="r")
        n_cells = a.n_obs
        mapping = map_genes(a.var, Vocab.load(default_vocab_path()))
        genes = pd.DataFrame({"kept": True}, index=a.var_names.astype(str))
        cells = pd.DataFrame({"kind": "counts", "batch": "b", "split": "train", "label": None, "parent": None,
                              "kept": True}, index=a.obs_names.astype(str))
        a.file.close()
        spec = DatasetSpec(name="ref", inputs=(InputFile(query),))
        ref = tokenize(spec, cells, genes, mapping, tmp / "ref")
        for name in presets:
            model_dir = build_model(tmp / f"model_{name}", ref, name, args.max_len)
            m = load_model(model_dir, device=str(device))
            t0 = time.perf_counter()
            store, _ = tokenize_query(query, m, tmp / f"q_{name}")
            t_tok = time.perf_counter() - t0
            if device.type == "cuda":  # warm-up (kernels, allocator)
                predict(m, store, batch_size=bs, device=device, progress=False)
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            predict(m, store, batch_size=bs, device=device, progress=False)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t_pred = time.perf_counter() - t0
            t0 = time.perf_counter()
            annotate(query, model_dir, device=str(device), batch_size=bs, progress=False)
            t_all = time.perf_counter() - t0
            c = m.classifier.encoder.config
            mean_len = float(np.minimum(store.lengths + 1, args.max_len).mean())
            rows.append({"preset": name, "device": str(device),
                         "layers x d_model": f"{c.n_layers} x {c.d_model}", "tokens/cell": f"{mean_len:.0f}",
                         "predict cells/s": f"{n_cells / t_pred:,.0f}",
                         "tokenize cells/s": f"{n_cells / t_tok:,.0f}",
                         "end-to-end cells/s": f"{n_cells / t_all:,.0f}"})
            print(rows[-1], flush=True)
    header = list(rows[0])
    table = "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                      + ["| " + " | ".join(r[h] for h in header) + " |" for r in rows])
    notes = (f"Query: pbmc3k x {args.repeat} = {n_cells:,} cells (counts, 32,738 genes); randomly "
             f"initialised 10-type classifiers, max_len {args.max_len}, batch_size {args.batch_size}; "
             f"threads: {torch.get_num_threads()}. Target: >= {TARGET:,} cells/s on one H100 at scgpt-base.")
    if device.type != "cuda":
        notes += (" No GPU on this machine: the GPU figure at scgpt-base is pending (run "
                  "`python benchmarks/annotate.py --presets scgpt-base --repeat 20` on a GPU machine).")
    if args.no_append:
        print(table + "\n\n" + notes)
    else:
        append_results("Annotation throughput (benchmarks/annotate.py)", table, notes)


if __name__ == "__main__":
    main()
