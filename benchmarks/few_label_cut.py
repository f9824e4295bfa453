"""The novelty cut with few labels: how many known cells each cut rule leaves Unassigned (tuning cells, not test).

    python benchmarks/few_label_cut.py                          # five benchmarks, seeds 0-2, 1% / 10% / 100%

With few labels there are few validation cells (under ``MIN_VALIDATION``), so today's cut joins the training
cells' own leave-one-out novelty to them; but the model was fitted on its training cells, which sit closer to
their own type than any new cell does, so that cut is too low and a large share of known cells goes
``Unassigned``. Each rule below is applied to the same fine-tuned model (the accuracy benchmark's cells, seeds
and pretrained start); the Unassigned share is read on the training cells whose labels the run did not read
(known types, never the test cells: the tuning cells the rule is chosen on), and on the test cells for the
record. Rules:

* ``joined``: today's (validation cells, joined by the training cells' leave-one-out novelty below 50);
* ``validation``: the validation cells alone, however few;
* ``rescaled``: the training cells' leave-one-out novelty rescaled by the ratio of the validation cells' median
  novelty to theirs (the fitted cells' closeness corrected), joined to the validation cells as today.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from _common import append_results
from accuracy import OUT, REPO, pretrain_config, run_key, split_cells

RULES = ("joined", "validation", "rescaled")


def cuts(index, val_nov: np.ndarray) -> dict[str, float]:
    from dataclasses import replace

    from celler.model.novelty import KNOWN_SHARE, MIN_VALIDATION

    loo = index.training_novelty()
    q = 1 - KNOWN_SHARE
    joined = replace(index)  # today's rule, as the package sets it
    joined.set_cut(val_nov)
    out = {"joined": joined.cut}
    out["validation"] = float(np.quantile(val_nov, q)) if len(val_nov) else out["joined"]
    if len(val_nov) and len(val_nov) < MIN_VALIDATION and np.median(loo) > 0:
        out["rescaled"] = float(np.quantile(np.concatenate([val_nov, loo * np.median(val_nov) / np.median(loo)]), q))
    else:
        out["rescaled"] = out["joined"]
    return out


def one(job: dict) -> list[dict]:
    from dataclasses import replace

    import torch

    from celler.data.tokens import TokenStore
    from celler.model.classifier import predict_logits
    from celler.stages import finetune_config
    from celler.train.finetune import finetune

    torch.set_num_threads(1)
    cfg, _ = finetune_config(job["settings"])
    cfg = replace(cfg, seed=job["seed"])
    with tempfile.TemporaryDirectory() as tmp:
        model, _, info = finetune(job["store"], Path(tmp) / "model", cfg, pretrained=job["pretrained"],
                                  train_cells=pd.Index(job["train"]), unlabelled_cells=job["unlabelled"])
    store = TokenStore(job["store"])
    names = store.cells.index

    def novelty(cells):
        idx = np.flatnonzero(names.isin(pd.Index(cells)))
        if not len(idx):
            return np.zeros(0)
        _, emb = predict_logits(model, store, idx, cfg)
        return model.novelty.score(emb)

    val = novelty(info["val_cells"])
    tuning, test = novelty(job["unlabelled"]), novelty(job["test"])
    rows = []
    for rule, cut in cuts(model.novelty, val).items():
        rows.append({"tissue": job["tissue"], "fraction": job["fraction"], "seed": job["seed"], "rule": rule,
                     "validation_cells": len(val), "cut": cut,
                     "tuning_unassigned": float((tuning > cut).mean()) if len(tuning) else np.nan,
                     "test_unassigned": float((test > cut).mean())})
    return rows


def main() -> None:
    from celler.data.longtail import label_fraction
    from celler.data.tokens import TokenStore

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tissues", nargs="*", default=["pancreas", "pbmc68k", "cbmc", "pbmc_facs", "kang"])
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--fractions", nargs="*", type=float, default=[0.01, 0.1, 1.0])
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    p = config["pretrain"]
    pcfg = pretrain_config(config, init=str(OUT / "pretrain/corpus"), max_steps=p.get("tissue_steps", 300),
                           warmup_steps=min(p.get("warmup_steps", 40), 20))
    jobs = []
    for tissue in args.tissues:
        store = REPO / f"results/{tissue}/tokens"
        cells = TokenStore(store).cells
        for seed in args.seeds:
            all_train, test = split_cells(cells, config["tissues"][tissue].get("split", {}), seed)
            pre = OUT / "pretrain" / tissue / f"seed{seed}"
            key = run_key("pretrain", {"cfg": repr(pcfg)}, pd.Index(sorted(all_train)))
            if not (pre / "key.txt").exists() or (pre / "key.txt").read_text() != key:
                raise SystemExit(f"{pre}: run benchmarks/accuracy.py first (its per-tissue pretraining)")
            for fraction in args.fractions:
                train = label_fraction(cells.loc[all_train, "label"].astype(str), fraction, seed)
                jobs.append({"tissue": tissue, "seed": seed, "fraction": fraction, "store": str(store),
                             "settings": dict(config["finetune"]), "pretrained": str(pre), "train": list(train),
                             "unlabelled": list(all_train.difference(train)), "test": list(test)})
    with ProcessPoolExecutor(args.workers) as pool:
        rows = [r for part in pool.map(one, jobs) for r in part]
    runs = pd.DataFrame(rows)
    (OUT / "few_label_cut.tsv").write_text(runs.to_csv(sep="\t", index=False))
    table = runs.groupby(["tissue", "fraction", "rule"]).agg(
        validation_cells=("validation_cells", "mean"), tuning_unassigned=("tuning_unassigned", "mean"),
        test_unassigned=("test_unassigned", "mean")).reset_index()
    append_results("Novelty cut with few labels: Unassigned share of known cells per cut rule",
                   table.to_markdown(index=False, floatfmt=".3f"),
                   "Seeds " + json.dumps(args.seeds) + "; tuning cells = the training cells whose labels the run "
                   "did not read (known types); test cells for the record only. Celler default, pretrained start.")


if __name__ == "__main__":
    main()
