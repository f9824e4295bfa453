"""Accuracy benchmark: Celler and every baseline on the bundled benchmarks over seeds; a table in RESULTS.md.

    python benchmarks/accuracy.py                          # config.yaml's Celler + the baselines, seeds 0-2
    python benchmarks/accuracy.py --variant cls='{"readout": "cls"}' --variant random='{"gene_selection": "random"}'
    python benchmarks/accuracy.py --tissues cbmc pbmc68k --seeds 0 --baselines logreg --no-default
    python benchmarks/accuracy.py --label-fractions 0.01 0.1 1   # label efficiency

``--label-fractions``: each method learns from a stratified share of the training labels (at least 3 cells
per class, or all of a smaller class; the same cells for every method of a seed); the rest of the training
cells stay in training without labels ('unlabelled': what ``logreg_pca`` fits its components on, what
Celler's program view fits its axes on, and what
per-tissue pretraining may read); the test cells are the same at every fraction.

Every method trains on the same training cells and is scored on the same test cells. A tissue split by
fraction (pbmc68k, CBMC, FACS-sorted PBMC) is re-drawn per seed (stratified, the configured test fraction);
file and column splits (pancreas Wang -> Xin, Kang's held-out donor) are fixed, so there only the training
randomness varies. Pretraining never sees a test cell: one model is pretrained on the unlabelled corpus alone
(``config.yaml``'s ``corpus:``, with its ``pretrain:`` settings), then continued per tissue and seed on that
seed's training cells, labels unused (``pretrain.tissue_steps`` steps, as the workflow's ``pretrain_tissue``
rule); a pretrained Celler run starts from that, an ``init: scratch`` one from nothing.

A Celler variant is the configured ``finetune:`` section with a JSON object of overrides. Each run writes its
predictions and wall time under ``results/accuracy/`` and is reused when its settings are unchanged, so a
table can grow run by run. Runs go two at a time, one thread each (a tiny model gains little from a second
thread). The table: macro-F1 and rare-class recall (classes under ``evaluate.rare_fraction`` of the training
cells), mean ± std over seeds, each method's macro-F1 gap to the best baseline, and the wall time per run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from _common import append_results

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "results/accuracy"


def split_cells(cells: pd.DataFrame, split: dict, seed: int) -> tuple[pd.Index, pd.Index]:
    """(train, test) cell names of one tissue for one seed: a fraction split re-drawn, others as stored."""
    from sklearn.model_selection import train_test_split

    labelled = cells[cells["label"].notna()]
    if split.get("by") != "fraction":
        s = labelled["split"].astype(str)
        return labelled.index[s.eq("train")], labelled.index[s.eq("test")]
    counts = labelled["label"].value_counts()
    solo = labelled.index[labelled["label"].map(counts).lt(2).to_numpy()]  # cannot be stratified: train
    rest = labelled.drop(solo)
    train, test = train_test_split(rest.index, test_size=float(split.get("test_fraction", 0.3)),
                                   stratify=rest["label"], random_state=seed)
    return pd.Index(train).append(solo), pd.Index(test)


def run_key(method: str, settings: dict, train: pd.Index, unlabelled: pd.Index = pd.Index([])) -> str:
    def digest(cells):
        return hashlib.sha1("\n".join(sorted(cells)).encode()).hexdigest()

    blob = json.dumps({"method": method, "settings": settings, "train": digest(train)}
                      | ({"unlabelled": digest(unlabelled)} if len(unlabelled) else {}), sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def finished(job: dict) -> bool:
    """Whether the run's predictions exist for exactly these settings and cells."""
    out = Path(job["out"])
    done = out.with_suffix(".json")
    return out.exists() and done.exists() and json.loads(done.read_text()).get("key") == job["key"]


def run_one(job: dict) -> dict:
    """One (tissue, method, seed) run in a worker process: predictions on the test cells, and the wall time."""
    import torch

    torch.set_num_threads(1)
    out = Path(job["out"])
    done = out.with_suffix(".json")
    if finished(job):
        return json.loads(done.read_text())
    train, test = pd.Index(job["train"]), pd.Index(job["test"])
    start = time.perf_counter()
    if job["method"].startswith("celler"):
        pred = _celler(job, train, test)
    else:
        pred = _baseline(job, train, test)
    wall = time.perf_counter() - start
    out.parent.mkdir(parents=True, exist_ok=True)
    pred.to_csv(out, sep="\t", index=False)
    info = {"key": job["key"], "wall_s": wall}
    done.write_text(json.dumps(info))
    return info


def pretrain_config(config: dict, **overrides):
    from celler.train.pretrain import PretrainConfig

    p = config["pretrain"]
    keys = ("max_steps", "batch_size", "lr", "warmup_steps", "max_len", "mask_ratio", "profile_weight")
    return PretrainConfig(preset=p.get("preset", "tiny"), checkpoint_every=0,
                          **({k: p[k] for k in keys if k in p} | overrides))


def pretrain_corpus(config: dict) -> Path:
    """The shared model, pretrained on the corpus alone (no tissue cell), built once."""
    from celler.train.pretrain import pretrain

    out = OUT / "pretrain" / "corpus"
    cfg = pretrain_config(config)
    key = json.dumps({"cfg": repr(cfg), "corpus": sorted(config.get("corpus", {}))}, sort_keys=True)
    if not ((out / "model.pt").exists() and (out / "key.txt").exists() and (out / "key.txt").read_text() == key):
        stores = [str(REPO / f"results/{name}/tokens") for name in config.get("corpus", {})]
        pretrain(stores, out, cfg)
        (out / "key.txt").write_text(key)
    return out


def pretrain_tissue(job: dict) -> str:
    """Continued pretraining of the corpus model on one tissue's training cells of one seed (labels unused)."""
    import torch

    from celler.train.pretrain import pretrain

    torch.set_num_threads(1)
    out = Path(job["out"])
    if (out / "model.pt").exists() and (out / "key.txt").exists() and (out / "key.txt").read_text() == job["key"]:
        return str(out)
    pretrain([job["store"]], out, job["cfg"], cells=job["cells"])
    (out / "key.txt").write_text(job["key"])
    return str(out)


def pretrain_plan(config: dict, jobs: list[dict], corpus: Path) -> list[dict]:
    """One continued pretraining per (tissue, seed) that a pretrained Celler run needs; sets job['pretrained']."""
    p = config["pretrain"]
    cfg = pretrain_config(config, init=str(corpus), max_steps=p.get("tissue_steps", 300),
                          warmup_steps=min(p.get("warmup_steps", 40), 20))
    plans = {}
    for job in jobs:
        if not job["method"].startswith("celler") or job["settings"].get("init", "pretrained") == "scratch":
            continue
        cells = sorted(set(job["train"]) | set(job["unlabelled"]))
        key = run_key("pretrain", {"cfg": repr(cfg)}, pd.Index(cells))
        out = OUT / "pretrain" / job["tissue"] / f"seed{job['seed']}"
        plans[str(out)] = {"store": job["store"], "cells": cells, "cfg": cfg, "key": key, "out": str(out)}
        job["pretrained"] = str(out)
        job["key"] = run_key(job["method"], {**job["settings"], "pretrained": key}, pd.Index(job["train"]),
                             pd.Index(job["unlabelled"]))
    return list(plans.values())


def _celler(job, train, test) -> pd.DataFrame:
    import tempfile
    from dataclasses import replace

    from celler.data.tokens import TokenStore
    from celler.model.classifier import predictions_table
    from celler.stages import finetune_config
    from celler.train.finetune import finetune

    cfg, scgpt_dir = finetune_config(job["settings"])
    cfg = replace(cfg, seed=job["seed"])
    pretrained = scgpt_dir or (None if cfg.init == "scratch" else job["pretrained"])
    with tempfile.TemporaryDirectory() as tmp:
        model, _, _ = finetune(job["store"], Path(tmp) / "model", cfg, pretrained=pretrained, train_cells=train,
                               unlabelled_cells=job.get("unlabelled"))
    store = TokenStore(job["store"])
    idx = np.flatnonzero(store.cells.index.isin(test))
    pred, _ = predictions_table(model, store, idx, cfg)
    return pred.assign(split="test")


def _baseline(job, train, test) -> pd.DataFrame:
    import anndata as ad

    from celler.evaluate.baselines import run_baseline

    unlabelled = pd.Index(job.get("unlabelled", []))
    adata = ad.read_h5ad(job["expr"])
    adata = adata[adata.obs_names.isin(train.append(test).append(unlabelled))].copy()
    adata.obs["celler_split"] = np.select([adata.obs_names.isin(test), adata.obs_names.isin(train)],
                                          ["test", "train"], "unlabelled")
    return run_baseline(job["method"], adata, seed=job["seed"], **job["settings"])


def prepare(config: dict, tissues: list[str], cores: int, configfile: Path = REPO / "config.yaml") -> None:
    """Token stores (tissues and corpus) and expression matrices, by the workflow (reused when present)."""
    targets = ([f"results/{t}/{f}" for t in tissues for f in ("tokens", "expr.h5ad")]
               + [f"results/{name}/tokens" for name in config.get("corpus", {})])
    subprocess.run(["snakemake", "-c", str(cores), *targets, "--configfile", str(configfile)], cwd=REPO, check=True)


def plan(config: dict, tissues, seeds, variants: dict[str, dict], baselines, fractions=(1.0,)) -> list[dict]:
    from celler.data.longtail import label_fraction
    from celler.data.tokens import TokenStore

    params = config["evaluate"].get("baseline_params") or {}  # the workflow's baseline parameters
    jobs = []
    for tissue in tissues:
        store = REPO / f"results/{tissue}/tokens"
        cells = TokenStore(store).cells
        for seed in seeds:
            all_train, test = split_cells(cells, config["tissues"][tissue].get("split", {}), seed)
            methods = {f"celler_{name}" if name != "default" else "celler": s for name, s in variants.items()}
            methods |= {b: dict(params.get(b, {})) for b in baselines}
            for fraction in fractions:
                train = label_fraction(cells.loc[all_train, "label"].astype(str), fraction, seed)
                unlabelled = all_train.difference(train)
                tag = "" if fraction >= 1 else f"_f{fraction:g}"
                for method, settings in methods.items():
                    jobs.append({"tissue": tissue, "method": method, "seed": seed, "fraction": fraction,
                                 "settings": settings, "store": str(store),
                                 "expr": str(REPO / f"results/{tissue}/expr.h5ad"), "train": list(train),
                                 "unlabelled": list(unlabelled), "test": list(test),
                                 "key": run_key(method, settings, train, unlabelled),
                                 "out": str(OUT / tissue / method / f"seed{seed}{tag}.tsv")})
    return jobs


def score(jobs: list[dict], infos: list[dict], rare_fraction: float) -> pd.DataFrame:
    from celler.data.tokens import TokenStore
    from celler.evaluate.metrics import evaluate

    rows = []
    for job, info in zip(jobs, infos, strict=True):
        cells = TokenStore(job["store"]).cells
        train = cells.loc[pd.Index(job["train"])]
        pred = pd.read_csv(job["out"], sep="\t", dtype={"true": str, "predicted": str})
        for level in pred["level"].unique():
            col = "label" if level == "subclass" else "parent"
            counts = train[col].dropna().astype(str).value_counts()
            res = evaluate(pred, counts, rare_fraction=rare_fraction, level=level)
            after = res.get("after_unassigned", {})
            rows.append({"tissue": job["tissue"], "level": level, "fraction": job.get("fraction", 1.0),
                         "method": job["method"], "seed": job["seed"],
                         "macro_f1": res["macro_f1"], "rare_recall": res["rare_recall"], "wall_s": info["wall_s"],
                         "unassigned": after.get("unassigned_share", np.nan),
                         "rare_recall_assigned": after.get("rare_recall", np.nan)})
    return pd.DataFrame(rows)


def summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Per benchmark and method: mean ± std, and the macro-F1 gap to the best baseline (by mean)."""
    g = runs.groupby(["tissue", "level", "fraction", "method"])
    table = g.agg(f1=("macro_f1", "mean"), f1_sd=("macro_f1", "std"), rare=("rare_recall", "mean"),
                  rare_sd=("rare_recall", "std"), wall=("wall_s", "mean"), seeds=("seed", "nunique"),
                  unassigned=("unassigned", "mean"), rare_kept=("rare_recall_assigned", "mean")).reset_index()
    base = table[~table["method"].str.startswith("celler")]
    best = base.loc[base.groupby(["tissue", "level", "fraction"])["f1"].idxmax()].set_index(
        ["tissue", "level", "fraction"])
    key = list(zip(table["tissue"], table["level"], table["fraction"], strict=True))
    table["best_baseline"] = [best["method"].get(k, "") for k in key]
    table["gap"] = table["f1"] - [best["f1"].get(k, np.nan) for k in key]
    return table


def markdown(table: pd.DataFrame) -> str:
    def pm(m, s):
        return "–" if pd.isna(m) else f"{m:.3f}" + ("" if pd.isna(s) else f" ± {s:.3f}")

    lines = ["| benchmark | method | macro-F1 | rare recall | gap to best baseline | s per run | seeds | "
             "Unassigned | rare recall after Unassigned |",
             "|---|---|---|---|---|---|---|---|---|"]
    order = ["tissue", "level", "fraction", "f1"]
    for r in table.sort_values(order, ascending=[True, True, True, False]).itertuples():
        bench = (r.tissue + ("" if r.level == "subclass" else f" ({r.level})")
                 + ("" if r.fraction >= 1 else f", {r.fraction:g} of the labels"))
        gap = "–" if pd.isna(r.gap) else f"{r.gap:+.3f}"
        after = "–" if pd.isna(r.unassigned) else f"{r.unassigned:.3f} | {pm(r.rare_kept, np.nan)}"
        lines.append(f"| {bench} | {r.method} | {pm(r.f1, r.f1_sd)} | {pm(r.rare, r.rare_sd)} | {gap} | "
                     f"{r.wall:.0f} | {r.seeds} | {after if after != '–' else '– | –'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tissues", nargs="*", help="default: every configured tissue")
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                    help="a Celler variant: finetune overrides as a JSON object (repeatable)")
    ap.add_argument("--no-default", action="store_true", help="leave out the configured Celler")
    ap.add_argument("--baselines", nargs="*", help="default: evaluate.baselines of config.yaml; none: no baseline")
    ap.add_argument("--label-fractions", nargs="*", type=float, default=[1.0],
                    help="shares of the training labels to learn from (stratified, >= 3 cells a class)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--score-only", action="store_true",
                    help="train nothing: table the runs already finished (marked partial when some are missing)")
    ap.add_argument("--title", default="Accuracy benchmark")
    ap.add_argument("--configfile", type=Path, default=REPO / "config.yaml",
                    help="a whole workflow config (benchmarks/many_classes.py writes one for its tissue)")
    args = ap.parse_args()
    config = yaml.safe_load(args.configfile.read_text())
    tissues = args.tissues or list(config["tissues"])
    base = dict(config["finetune"])
    variants = {} if args.no_default else {"default": base}
    for v in args.variant:
        name, _, overrides = v.partition("=")
        variants[name] = base | json.loads(overrides)
    baselines = (list(config["evaluate"]["baselines"]) if args.baselines is None
                 else [b for b in args.baselines if b != "none"])

    prepare(config, tissues, args.workers, args.configfile)
    jobs = plan_all = plan(config, tissues, args.seeds, variants, baselines, args.label_fractions)
    # the first fraction given, every tissue and seed, comes first: a stopped run still has whole rows
    jobs.sort(key=lambda j: (args.label_fractions.index(j["fraction"]), j["seed"]))
    start = time.perf_counter()
    if args.score_only:
        pretrain_plan(config, jobs, OUT / "pretrain" / "corpus")  # the run keys name the pretrained model
        jobs = [j for j in jobs if finished(j)]
        infos = [json.loads(Path(j["out"]).with_suffix(".json").read_text()) for j in jobs]
        args.title += f" (partial: {len(jobs)} of {len(plan_all)} runs finished)" if len(jobs) < len(plan_all) else ""
    else:
        pretraining = pretrain_plan(config, jobs, pretrain_corpus(config))
        with ProcessPoolExecutor(args.workers) as pool:
            list(pool.map(pretrain_tissue, pretraining))
            infos = list(pool.map(run_one, jobs))
    wall = time.perf_counter() - start
    runs = score(jobs, infos, float(config["evaluate"].get("rare_fraction", 0.03)))
    OUT.mkdir(parents=True, exist_ok=True)
    runs.to_csv(OUT / "runs.tsv", sep="\t", index=False)
    table = summary(runs)
    table.to_csv(OUT / "summary.tsv", sep="\t", index=False)
    notes = (f"{len(jobs)} runs ({wall / 60:.1f} min wall, {args.workers} at a time, one thread each; runs reused "
             "from earlier calls count their original time). Variants: "
             + "; ".join(f"`{k}` = {json.dumps({x: y for x, y in v.items() if base.get(x) != y}) or 'config.yaml'}"
                         for k, v in variants.items()))
    append_results(args.title, markdown(table), notes)


if __name__ == "__main__":
    main()
