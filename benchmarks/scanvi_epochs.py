"""scANVI on CPU: what capping scVI's epochs costs, measured on validation cells (never the test cells).

    python benchmarks/scanvi_epochs.py                      # CBMC, FACS-sorted PBMC, Kang; 10% of the labels, seed 0
    python benchmarks/scanvi_epochs.py --caps 0 100 50 --tissues cbmc
    python benchmarks/scanvi_epochs.py --caps 73 --tissues cbmc --drop-counts   # the count input's share

scVI's own epoch count is scaled to the cell count (at most 400) with early stopping on its validation split;
on 2 CPU cores that takes minutes a run. Each cap (0 = the library's own count) trains scVI + scANVI on the
training cells of the accuracy benchmark's split (seeded), with 10% of their labels; the other 90% of the
training cells are read unlabelled and are the validation cells scored here (their labels are never read by the
model; the test cells are left out entirely). Columns: scVI epochs run, seconds, macro-F1 and accuracy on them.
"""

from __future__ import annotations

import argparse
import time

import anndata as ad
import numpy as np
import pandas as pd
import yaml
from _common import append_results
from accuracy import REPO, split_cells
from sklearn.metrics import f1_score


def one(tissue: str, config: dict, cap: int, fraction: float, seed: int, drop_counts: bool = False) -> dict:
    import torch

    from celler.data.longtail import label_fraction
    from celler.data.tokens import TokenStore
    from celler.evaluate.baselines import scanvi

    torch.set_num_threads(1)
    cells = TokenStore(REPO / f"results/{tissue}/tokens").cells
    train, _ = split_cells(cells, config["tissues"][tissue].get("split", {}), seed)
    labelled = label_fraction(cells.loc[train, "label"].astype(str), fraction, seed)
    held = train.difference(labelled)
    adata = ad.read_h5ad(REPO / f"results/{tissue}/expr.h5ad")
    if drop_counts:  # what scVI reads for a log input: counts per 10,000 recovered from the log values
        del adata.layers["counts"]
    start = time.perf_counter()
    pred = scanvi.fit_predict(adata[labelled], adata[held], unlabelled=adata[held], seed=seed,
                              max_epochs=cap or None)
    wall = time.perf_counter() - start
    model = next(iter(scanvi._SCVI_CACHE.values()))
    true = adata.obs.loc[held, "celler_label"].astype(str).to_numpy()
    return {"tissue": tissue, "counts": "recovered from log" if drop_counts else "the input's",
            "cap": cap or "library's own", "scvi_epochs": len(model.history["elbo_train"]),
            "wall_s": round(wall, 1), "macro_f1": f1_score(true, pred["predicted"], average="macro"),
            "accuracy": float((true == pred["predicted"].to_numpy()).mean()), "validation_cells": len(held)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tissues", nargs="*", default=["cbmc", "pbmc_facs", "kang"])
    ap.add_argument("--caps", nargs="*", type=int, default=[0, 100, 50, 20])
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--drop-counts", action="store_true",
                    help="also run each cap without the counts layer (scVI reads expm1 of the log values)")
    args = ap.parse_args()
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    rows = []
    for tissue in args.tissues:
        for cap in args.caps:
            for drop in (False, True) if args.drop_counts else (False,):
                rows.append(one(tissue, config, cap, args.fraction, args.seed, drop))
                print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    append_results("scANVI on CPU: scVI epoch caps scored on validation cells",
                   table.to_markdown(index=False, floatfmt=".3f"),
                   f"{args.fraction:g} of the training labels, seed {args.seed}, one thread; validation cells = the "
                   "training cells whose labels the run did not read (test cells left out).")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
