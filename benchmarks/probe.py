"""Linear probe of pretrained gene vectors: how much a frozen profile view helps a classifier with few labels.

    python benchmarks/probe.py --weights 0 1 3          # cell-objective weights to compare (0: masked values only)

For each weight, one model is pretrained on the unlabelled corpus alone (config.yaml's ``corpus:`` and
``pretrain:`` settings; cached under ``results/probe/``), and its profile view (the pretrained gene vectors and
LayerNorm, frozen) embeds each tissue's cells; ``random`` is the same view with fresh gene vectors. A balanced
logistic regression learns from 10% of a seed's training labels (``celler.data.longtail.label_fraction``) and is
scored on the rest of that seed's training cells: test cells are never read, so this tunes pretraining without
the cells the accuracy benchmark reports. Macro-F1, mean over seeds 0 and 1.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from _common import append_results
from accuracy import REPO, pretrain_config, split_cells

OUT = REPO / "results/probe"


def corpus_model(config: dict, weight: float) -> Path:
    from celler.train.pretrain import pretrain

    out = OUT / f"weight{weight:g}"
    cfg = pretrain_config(config, profile_weight=weight)
    key = json.dumps({"cfg": repr(cfg), "corpus": sorted(config.get("corpus", {}))}, sort_keys=True)
    if not ((out / "key.txt").exists() and (out / "key.txt").read_text() == key):
        pretrain([str(REPO / f"results/{name}/tokens") for name in config["corpus"]], out, cfg)
        (out / "key.txt").write_text(key)
    return out


def profile_view(model_dir, store, seed: int):
    """The frozen profile view of ``model_dir`` (grown to the store's vocabulary), or a fresh one."""
    from celler.model import ProfileEncoder, preset
    from celler.model.pretrained import load_pretrained, load_profile_norm

    vocab = store.vocab()
    if model_dir is None:
        torch.manual_seed(seed)
        return ProfileEncoder(preset("tiny", vocab_size=len(vocab), n_bins=store.n_bins, pad_id=vocab.pad_id,
                                     cls_id=vocab.cls_id))
    encoder, _, _ = load_pretrained(model_dir)
    if len(vocab) > encoder.config.vocab_size:
        encoder.resize_token_embeddings(len(vocab))
    view = ProfileEncoder(encoder.config)
    view.init_from(encoder.gene_embedding.weight, load_profile_norm(model_dir))
    return view


@torch.no_grad()
def embed(view, store, idx: np.ndarray) -> np.ndarray:
    from celler.model.batching import CellDataset, collate

    ds = CellDataset(store, idx, mask_ratio=0.0, profile=True, tokens=False)
    out = []
    for s in range(0, len(idx), 256):
        b = collate([ds[i] for i in range(s, min(s + 256, len(idx)))], pad_id=int(store.meta["pad_id"]))
        out.append(view(b["profile_genes"], b["profile_values"], b["profile_offsets"]).numpy())
    return np.concatenate(out)


def probe(model_dir, config: dict, tissue: str, seed: int) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    from celler.data.longtail import label_fraction
    from celler.data.tokens import TokenStore

    store = TokenStore(REPO / f"results/{tissue}/tokens")
    cells = store.cells
    train, _ = split_cells(cells, config["tissues"][tissue].get("split", {}), seed)
    labelled = label_fraction(cells.loc[train, "label"].astype(str), 0.1, seed)
    idx = np.flatnonzero(cells.index.isin(train))
    emb = pd.DataFrame(embed(profile_view(model_dir, store, seed), store, idx), index=cells.index[idx])
    y = cells["label"].astype(str)
    rest = train.difference(labelled)
    clf = LogisticRegression(max_iter=2000, class_weight="balanced").fit(emb.loc[labelled], y[labelled])
    return f1_score(y[rest], clf.predict(emb.loc[rest]), average="macro")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", nargs="+", type=float, default=[0.0, 1.0, 3.0])
    ap.add_argument("--tissues", nargs="*", help="default: every configured tissue")
    args = ap.parse_args()
    torch.set_num_threads(1)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    tissues = args.tissues or list(config["tissues"])
    models = {"random gene vectors": None} | {f"weight {w:g}": corpus_model(config, w) for w in args.weights}
    rows = []
    for name, model_dir in models.items():
        for tissue in tissues:
            f1 = [probe(model_dir, config, tissue, seed) for seed in (0, 1)]
            rows.append({"gene vectors": name, "tissue": tissue, "macro_f1": np.mean(f1)})
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows).pivot(index="gene vectors", columns="tissue", values="macro_f1")
    append_results("Linear probe of the pretrained profile view (10% of the training labels, training cells only)",
                   table.round(3).to_markdown(),
                   "Models pretrained on the corpus alone (1,000 steps, config.yaml); 'weight' is "
                   "pretrain.profile_weight, the cell-level objective's weight (0: masked values only).")


if __name__ == "__main__":
    main()
