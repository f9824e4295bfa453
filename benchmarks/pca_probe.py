"""Where few-label accuracy comes from: principal axes fitted with or without the unlabelled training cells,
against the pretrained profile view, each read by a balanced logistic regression.

    python benchmarks/pca_probe.py --tissues pbmc_facs cbmc pbmc68k

For each tissue and seed (the accuracy benchmark's split), 10% of the training labels
(``celler.data.longtail.label_fraction``) train the probe and the other training cells score it: test cells
are never read. Features: PCA (16 / 32 / 64 axes) of the binned values (bin / (n_bins - 1), as Celler's views
read them) fitted on all training cells (``all``, what the program view does) or on the labelled ones alone
(``labelled``); and the frozen profile view of the benchmark's per-tissue pretrained model
(``results/accuracy/pretrain/TISSUE/seedSEED``, as fine-tuning starts it). Macro-F1.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import torch
import yaml
from _common import append_results
from accuracy import REPO, split_cells
from probe import embed, profile_view


def main() -> None:
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    from celler.data.longtail import label_fraction
    from celler.data.tokens import TokenStore
    from celler.model.programs import MIN_CELLS, profile_matrix

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tissues", nargs="+", default=["pbmc_facs", "cbmc", "pbmc68k"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    args = ap.parse_args()
    torch.set_num_threads(1)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    rows = []
    for tissue in args.tissues:
        store = TokenStore(REPO / f"results/{tissue}/tokens")
        cells = store.cells
        for seed in args.seeds:
            train, _ = split_cells(cells, config["tissues"][tissue].get("split", {}), seed)
            labelled = label_fraction(cells.loc[train, "label"].astype(str), 0.1, seed)
            idx = np.flatnonzero(cells.index.isin(train))
            names = cells.index[idx]
            lab = names.isin(labelled)
            y = cells["label"].astype(str).to_numpy()[idx]
            x = profile_matrix(store, idx)
            x = x[:, np.asarray((x != 0).sum(0)).ravel() >= MIN_CELLS].toarray()  # the program view's genes

            def score(z):
                clf = LogisticRegression(max_iter=3000, class_weight="balanced").fit(z[lab], y[lab])
                return f1_score(y[~lab], clf.predict(z[~lab]), average="macro")

            row = {"tissue": tissue, "seed": seed, "labelled cells": int(lab.sum())}
            for fit, rows_fit in (("all", slice(None)), ("labelled", lab)):
                for k in (16, 32, 64):
                    pca = PCA(min(k, int(lab.sum()) - 1), random_state=seed).fit(x[rows_fit])
                    row[f"PCA {k}, {fit}"] = score(pca.transform(x))
            view = profile_view(REPO / f"results/accuracy/pretrain/{tissue}/seed{seed}", store, seed)
            row["pretrained profile view"] = score(embed(view, store, idx))
            rows.append(row)
            print(row, flush=True)
    table = pd.DataFrame(rows).groupby("tissue").mean(numeric_only=True).drop(columns="seed")
    append_results("Few-label probe: principal axes with and without the unlabelled cells, and the pretrained view",
                   table.round(3).to_markdown(),
                   f"Mean over seeds {args.seeds}; balanced logistic regression on 10% of the training labels, scored "
                   "on the other training cells (no test cell read). `all`: axes fitted on every training cell, "
                   "labels unused (the program view's fit); `labelled`: on the labelled 10% alone.")


if __name__ == "__main__":
    main()
