"""The novelty cut with few labels: how many known cells each cut rule leaves Unassigned (tuning cells, not test).

    python benchmarks/few_label_cut.py                  # five benchmarks, seeds 0-2, 1% and 10% of the labels

With few labels there are few validation cells (under ``MIN_VALIDATION``), and a cut read on a handful of cells
is one cell's, so other cells the model was not fitted on join them. Rules, each applied to the same fine-tuned
model (the accuracy benchmark's cells, seeds and pretrained start):

* ``out_of_fold`` (the default): the training cells' out-of-fold novelty, each scored by a model trained
  without its fold (:mod:`celler.train.crossfit`): the cut the fine-tuned model carries;
* ``leave_one_out`` (the rule before it): the training cells' own leave-one-out novelty under the final model,
  which was fitted on them;
* ``validation``: the validation cells alone, however few.

Read on the training cells whose labels the run did not read (known types, never the test cells: the tuning
cells a rule is chosen on): the share left ``Unassigned`` (the target is ``KNOWN_SHARE``, 2%), the same among
the rare types' cells (under ``evaluate.rare_fraction`` of the training cells), and the rare types' recall after
``Unassigned`` (right label and kept); test cells' share for the record. ``--leave-out`` also leaves one type
out of the labels (seed s: the s-th, by name, of the types with at least ``MIN_NOVEL`` training cells): its
unlabelled training cells are then a type the model never saw, and ``novel_unassigned`` is the share of them
each rule calls ``Unassigned`` (what a higher cut could cost); the other columns read the known types only.
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

MIN_NOVEL = 20  # training cells a type needs to be left out (--leave-out)


def cuts(index, val_nov: np.ndarray) -> dict[str, float]:
    """The cut of each rule; ``index`` carries the default's (set by fine-tuning)."""
    from dataclasses import replace

    from celler.model.novelty import KNOWN_SHARE

    loo = replace(index)
    loo.set_cut(val_nov)  # no out-of-fold novelty: the training cells' leave-one-out
    return {"out_of_fold": index.cut, "leave_one_out": loo.cut,
            "validation": float(np.quantile(val_nov, 1 - KNOWN_SHARE)) if len(val_nov) else loo.cut}


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
        model, levels, info = finetune(job["store"], Path(tmp) / "model", cfg, pretrained=job["pretrained"],
                                       train_cells=pd.Index(job["train"]), unlabelled_cells=job["unlabelled"])
    store = TokenStore(job["store"])
    names = store.cells.index
    classes = np.asarray(levels["subclass"])

    def read(cells):
        idx = np.flatnonzero(names.isin(pd.Index(cells)))
        if not len(idx):
            return np.zeros(0), np.zeros(0, object), np.zeros(0, object)
        logits, emb = predict_logits(model, store, idx, cfg)
        return (model.novelty.score(emb), classes[logits["subclass"].argmax(1).numpy()],
                store.cells["label"].iloc[idx].astype(str).to_numpy())

    val, _, _ = read(info["val_cells"])
    tuning, pred, truth = read(job["unlabelled"])
    test, _, test_truth = read(job["test"])
    novel = truth == job["novel"]  # the left-out type's cells (none without --leave-out)
    novel_nov = tuning[novel]
    tuning, pred, truth, test = tuning[~novel], pred[~novel], truth[~novel], test[test_truth != job["novel"]]
    rare = np.isin(truth, job["rare"])
    rows = []
    for rule, cut in cuts(model.novelty, val).items():
        kept = tuning <= cut
        rows.append({"tissue": job["tissue"], "fraction": job["fraction"], "seed": job["seed"], "rule": rule,
                     "left_out": job["novel"] or "",
                     "novel_unassigned": float((novel_nov > cut).mean()) if len(novel_nov) else np.nan,
                     "validation_cells": len(val), "out_of_fold_cells": info.get("out_of_fold_cells", 0),
                     "cut": cut, "tuning_unassigned": float(1 - kept.mean()) if len(kept) else np.nan,
                     "rare_unassigned": float(1 - kept[rare].mean()) if rare.any() else np.nan,
                     "rare_recall_kept": float((kept & (pred == truth))[rare].mean()) if rare.any() else np.nan,
                     "test_unassigned": float((test > cut).mean())})
    return rows


def main() -> None:
    from celler.data.longtail import label_fraction
    from celler.data.tokens import TokenStore

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tissues", nargs="*", default=["pancreas", "pbmc68k", "cbmc", "pbmc_facs", "kang"])
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--fractions", nargs="*", type=float, default=[0.01, 0.1])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--leave-out", action="store_true", help="also leave one type out of the labels (a novel type)")
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
            counts = cells.loc[all_train, "label"].astype(str).value_counts()
            rare = counts.index[counts < config["evaluate"].get("rare_fraction", 0.03) * counts.sum()].tolist()
            big = sorted(counts.index[counts >= MIN_NOVEL])
            novel = big[seed % len(big)] if args.leave_out else None
            labelled = all_train[cells.loc[all_train, "label"].astype(str).to_numpy() != novel]
            for fraction in args.fractions:
                train = label_fraction(cells.loc[labelled, "label"].astype(str), fraction, seed)
                jobs.append({"tissue": tissue, "seed": seed, "fraction": fraction, "store": str(store),
                             "settings": dict(config["finetune"]), "pretrained": str(pre), "train": list(train),
                             "unlabelled": list(all_train.difference(train)), "test": list(test),
                             "rare": rare, "novel": novel})
    jobs.sort(key=lambda j: (args.fractions.index(j["fraction"]), j["seed"]))  # a stopped run has whole rows
    rows, name = [], "few_label_cut" + ("_leave_out" if args.leave_out else "")
    with ProcessPoolExecutor(args.workers) as pool:
        for part in pool.map(one, jobs):
            rows += part
            runs = pd.DataFrame(rows)
            (OUT / f"{name}.tsv").write_text(runs.to_csv(sep="\t", index=False))
    table = runs.groupby(["tissue", "fraction", "rule"]).agg(
        validation_cells=("validation_cells", "mean"), out_of_fold_cells=("out_of_fold_cells", "mean"),
        novel_unassigned=("novel_unassigned", "mean"),
        tuning_unassigned=("tuning_unassigned", "mean"), rare_unassigned=("rare_unassigned", "mean"),
        rare_recall_kept=("rare_recall_kept", "mean"), test_unassigned=("test_unassigned", "mean")).reset_index()
    append_results("Novelty cut with few labels: Unassigned share of known cells per cut rule"
                   + (", one type left out of the labels" if args.leave_out else ""),
                   table.to_markdown(index=False, floatfmt=".3f"),
                   "Seeds " + json.dumps(args.seeds) + "; tuning cells = the training cells whose labels the run "
                   "did not read (known types); test cells for the record only. Celler default, pretrained start.")


if __name__ == "__main__":
    main()
