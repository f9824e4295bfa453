"""What pretraining put into the gene vectors: do a marker gene's nearest genes mark the same cell type?

    python benchmarks/gene_neighbours.py results/accuracy/pretrain/corpus results/accuracy/pretrain/pbmc_facs/seed0

For each model directory given (Celler ``model.pt``), the gene vectors the profile view starts from (the
encoder's gene embedding) are compared with two references of the same width: fresh random vectors (what
``init: scratch`` starts from: chance) and each gene's loadings on the top principal axes of the corpus cells
(what PCA of the same unlabelled cells gives a gene, the linear use of them the program view makes). Marker
genes: CellMarker 2.0's blood entries (``resources/markers``) for six PBMC types, the genes listed at least
twice for one type and for no other of the six, and expressed in at least 1% of the corpus cells. Score: for
each marker gene, the share of its k nearest marker genes (cosine) that mark the same type, averaged; and the
share of markers whose single nearest marker is of its type.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import yaml
from _common import append_results

REPO = Path(__file__).resolve().parents[1]
TYPES = ["B cell", "CD14+ monocyte", "Natural killer cell", "T cell", "Platelet", "Dendritic cell"]


def markers(known: pd.Index) -> dict[str, str]:
    """gene -> type: CellMarker blood genes listed at least twice for exactly one of TYPES (among ``known``)."""
    table = pd.read_csv(REPO / "resources/markers/CellMarker2_Human_Aug.csv")
    table = table[(table["Tissue"] == "Blood") & table["CT"].isin(TYPES)]
    counts = {t: collections.Counter(g.strip() for row in rows for g in str(row).split(","))
              for t, rows in table.groupby("CT")["Gene"]}
    owners = collections.defaultdict(set)
    for t, c in counts.items():
        for g in c:
            owners[g].add(t)
    return {g: t for t, c in counts.items() for g, n in c.items()
            if n >= 2 and owners[g] == {t} and g in known}


def neighbour_scores(vectors: np.ndarray, types: np.ndarray, k: int) -> tuple[float, float]:
    """(mean share of the k nearest that share the type, share whose nearest shares it), cosine."""
    v = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    sim = v @ v.T
    np.fill_diagonal(sim, -np.inf)
    order = np.argsort(-sim, axis=1)[:, :k]
    same = types[order] == types[:, None]
    return float(same.mean()), float(same[:, 0].mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("-k", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=5, help="random references drawn")
    args = ap.parse_args()
    from celler.data.tokens import TokenStore
    from celler.data.vocab import Vocab
    from celler.model.pretrained import load_pretrained
    from celler.model.programs import principal_axes, profile_matrix

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    vocab = Vocab.load(args.models[0] / "vocab.json")
    index = pd.Index(vocab.tokens)
    stores = [TokenStore(REPO / f"results/{name}/tokens") for name in config["corpus"]]
    x = sp.vstack([profile_matrix(s, np.arange(len(s.cells)))[:, : len(vocab)] for s in stores]).tocsr()
    expressed = np.asarray((x != 0).mean(0)).ravel() >= 0.01
    gene_type = {g: t for g, t in markers(index).items() if expressed[index.get_loc(g)]}
    genes = np.array(sorted(gene_type))
    ids = index.get_indexer(genes)
    types = np.array([gene_type[g] for g in genes])
    chance = float(np.mean([(np.sum(types == t) - 1) / (len(types) - 1) for t in types]))

    rows = []
    for model in args.models:
        encoder, mcfg, _ = load_pretrained(model)
        emb = encoder.gene_embedding.weight.detach()[: len(vocab)].numpy()
        rows.append({"gene vectors": f"pretrained: {model.relative_to(REPO) if model.is_absolute() else model}",
                     **dict(zip(("k-NN same type", "nearest same type"), neighbour_scores(emb[ids], types, args.k),
                                strict=True))})
    d = mcfg.d_model
    loadings, _ = principal_axes(x, d, 0)
    rows.append({"gene vectors": f"PCA loadings of the corpus cells ({d} axes)",
                 **dict(zip(("k-NN same type", "nearest same type"), neighbour_scores(loadings[ids], types, args.k),
                            strict=True))})
    rand = [neighbour_scores(np.random.default_rng(s).normal(size=(len(ids), d)), types, args.k)
            for s in range(args.seeds)]
    rows.append({"gene vectors": f"fresh random ({args.seeds} draws; init: scratch)",
                 "k-NN same type": float(np.mean([r[0] for r in rand])),
                 "nearest same type": float(np.mean([r[1] for r in rand]))})
    table = pd.DataFrame(rows)
    per_type = ", ".join(f"{t} {n}" for t, n in zip(*np.unique(types, return_counts=True), strict=True))
    notes = (f"{len(genes)} marker genes ({per_type}); k = {args.k}; chance (a random other marker shares the "
             f"type) {chance:.3f}. Corpus: {', '.join(config['corpus'])} ({x.shape[0]} cells).")
    append_results("Gene vectors: do a marker's nearest genes mark the same type? (benchmarks/gene_neighbours.py)",
                   table.to_markdown(index=False, floatfmt=".3f"), notes)


if __name__ == "__main__":
    sys.exit(main())
