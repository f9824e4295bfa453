"""Leave-one-type-out: does ``Unassigned`` catch a type the model never saw, and spare the rare types it did?

    python benchmarks/leave_one_type_out.py                 # every bundled benchmark, seeds 0-2
    python benchmarks/leave_one_type_out.py --tissues pancreas --seeds 0 --score-only

For each bundled benchmark and seed (the splits of ``benchmarks/accuracy.py``), one fold per type with at
least ``MIN_TEST`` test cells: Celler (config.yaml's ``finetune:``, started from the corpus-pretrained model of
``accuracy.py``, no per-tissue pretraining) and CellTypist (``prob match``, ``p_thres`` 0.5) are trained
without that type's training cells; a ``none`` fold trains on every type (a test set without an unseen type),
and for FACS-sorted PBMC one fold per parent leaves all its types out together (leave-one-lineage-out;
pancreas and Kang types are lineages of their own). Each fold scores, per cell, every candidate novelty score:

* ``confidence`` (1 - calibrated top probability; the control) and ``today`` (the per-class confidence rule
  of ``celler.model.calibration``, the ``Unassigned`` rule before this benchmark);
* ``energy`` (-T logsumexp(z / T), Liu et al. 2020);
* ``knn_embedding`` (``celler.model.novelty``, the default: k-NN distance in the classifier's readout vector,
  each type on its own scale);
* ``knn_programs`` / ``knn_pca50`` (the same in the program view's principal axes / in 50 principal axes),
  and ``_unscaled`` (the same distances, one scale for all);
* ``mahalanobis_programs`` / ``mahalanobis_pca50`` (per-type means, tied covariance; Lee et al. 2018);
* ``reconstruction`` (share of the centred profile outside the principal subspace);
* ``celltypist`` (1 - its top probability; ``Unassigned`` when no class reaches 0.5).

A score's cut is the 98% quantile of its validation cells (known types held out of training); the default's
is the one fine-tuning set (``celler.model.novelty``; out-of-fold training cells join below 50 validation cells,
``celler.train.crossfit``; folds run before that change used the training cells' leave-one-out novelty).
Reported on the test cells: novelty AUROC (left-out type vs known types),
share of the left-out type and of the known cells ``Unassigned`` at that cut, and the share of the left-out
type above the cut that leaves 3% of the known test cells; on the ``none`` folds, the known cells left
``Unassigned`` and the rare-class recall before and after. The tuning AUROC uses the left-out type's
*training* cells (never trained on in that fold) against the validation cells, weighted to the training
cells' type shares: defaults are chosen on it (and on the left-out training cells' share above the cut and
the rare-type validation cells' share), never on the test rows. Per-fold tables go to ``results/loto/``; the summary is appended to RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from _common import append_results
from accuracy import OUT as ACCURACY_OUT
from accuracy import REPO, pretrain_corpus, run_key, split_cells

from celler.model.novelty import NoveltyIndex

OUT = REPO / "results/loto"
MIN_TEST = 20  # test cells a type needs to be left out
SEEDS = (0, 1, 2)
CUT_QUANTILE = 0.98  # every score's cut: this quantile of the validation cells
KNOWN_BUDGET = 0.03  # the "at 3% of known cells" column
CANDIDATES = ["confidence", "today", "energy", "knn_programs", "knn_programs_unscaled", "knn_pca50",
              "knn_pca50_unscaled", "knn_embedding", "mahalanobis_programs", "mahalanobis_pca50", "reconstruction",
              "celltypist"]
DEFAULT = "knn_embedding"  # what celler.model.novelty computes
N_WIDE = 50  # principal axes of the wider space the k-NN candidates are also measured in
#: benchmarks whose every type is a lineage of its own (their type folds count as lineage folds too)
OWN_LINEAGE = ("pancreas", "kang")
#: sibling types (a left-out subtype whose close relatives stay in training): the hard folds, reported apart
SIBLINGS = {
    "pbmc68k": [{"CD4+/CD25 T Reg", "CD4+/CD45RO+ Memory", "CD4+/CD45RA+/CD25- Naive T", "CD8+ Cytotoxic T",
                 "CD8+/CD45RA+ Naive Cytotoxic"}],
    "cbmc": [{"CD4 T", "CD8 T"}, {"CD14+ Mono", "CD16+ Mono"}, {"DC", "pDC"}],
}


def folds(config: dict, tissue: str, cells: pd.DataFrame, seed: int) -> list[dict]:
    """The folds of one tissue and seed: name, kind (none / type / lineage), the left-out types, sibling."""
    train, test = split_cells(cells, config["tissues"][tissue].get("split", {}), seed)
    n_test = cells.loc[test, "label"].astype(str).value_counts()
    parent = cells.loc[train].dropna(subset=["parent"]).groupby("label")["parent"].first().astype(str) \
        if "parent" in cells and cells["parent"].notna().any() else pd.Series(dtype=str)
    out = [{"fold": "none", "kind": "none", "left": []}]
    for t in sorted(n_test[n_test >= MIN_TEST].index):
        same_parent = len(parent) and (parent == parent.get(t)).sum() > 1
        sib = bool(same_parent) or any(t in group for group in SIBLINGS.get(tissue, []))
        out.append({"fold": t, "kind": "type", "left": [t], "sibling": sib})
    for p in sorted(set(parent)):
        out.append({"fold": f"lineage {p}", "kind": "lineage", "left": sorted(parent.index[parent == p])})
    for f in out:
        f["train"], f["test"] = train, test
    return out


def plan(config: dict, tissues, seeds) -> list[dict]:
    from celler.data.tokens import TokenStore

    settings = dict(config["finetune"])
    jobs = []
    for tissue in tissues:
        store = REPO / f"results/{tissue}/tokens"
        cells = TokenStore(store).cells
        for seed in seeds:
            for f in folds(config, tissue, cells, seed):
                left = cells.index[cells["label"].astype(str).isin(f["left"])]
                train = f["train"].difference(left)
                slug = f["fold"].replace("/", "_").replace(" ", "_").replace("+", "p")
                jobs.append({"tissue": tissue, "seed": seed, "fold": f["fold"], "kind": f["kind"],
                             "sibling": f.get("sibling", False), "left": f["left"], "store": str(store),
                             "expr": str(REPO / f"results/{tissue}/expr.h5ad"), "train": list(train),
                             "left_train": list(f["train"].intersection(left)), "test": list(f["test"]),
                             "settings": settings, "key": run_key("loto", settings, train),
                             "out": str(OUT / tissue / f"seed{seed}" / f"{slug}.tsv")})
    # a lineage with a single type is that type's fold: train it once
    seen, unique = set(), []
    for j in jobs:
        k = (j["tissue"], j["seed"], tuple(sorted(j["left"])))
        if k not in seen:
            seen.add(k)
            unique.append(j)
        else:
            j["same_as"] = next(u["out"] for u in unique if (u["tissue"], u["seed"], tuple(sorted(u["left"]))) == k)
    return jobs, unique


def candidate_scores(z, sets: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """Every distance-based candidate from a fold's stored coordinates (``run_fold``'s .npz): k-NN in the
    classifier's readout vector (``embedding``; the package's default), in the program view's principal axes
    (``programs``) and in 50 principal axes (``pca50``), each type on its own scale or one for all; per-type
    Mahalanobis in the last two."""
    labels, n_cls = z["labels"], int(z["labels"].max()) + 1
    out = {}
    for space, name in (("emb", "embedding"), ("programs", "programs"), ("wide", "pca50")):
        train = z[f"{space}_train"]
        for scaled in (True, False) if space != "emb" else (True,):
            index = NoveltyIndex.fit(train, labels, n_cls, scaled=scaled)
            out[f"knn_{name}" + ("" if scaled else "_unscaled")] = {s: index.score(z[f"{space}_{s}"]) for s in sets}
        if space != "emb":
            means, precision = class_gaussians(train, labels, n_cls)
            out[f"mahalanobis_{name}"] = {s: mahalanobis(z[f"{space}_{s}"], means, precision) for s in sets}
    return out


def class_gaussians(coords: np.ndarray, labels: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Each type's mean (NaN without cells) and the inverse of the within-type covariance, pooled."""
    means = np.full((n_classes, coords.shape[1]), np.nan)
    for c in np.unique(labels):
        means[c] = coords[labels == c].mean(0)
    centred = coords - means[labels]
    cov = centred.T @ centred / max(len(coords) - len(np.unique(labels)), 1)
    return means, np.linalg.pinv(cov, hermitian=True)


def mahalanobis(coords: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance to the nearest type mean (Lee et al. 2018)."""
    d = [np.einsum("ij,jk,ik->i", coords - m, precision, coords - m) for m in means if np.isfinite(m).all()]
    return np.min(d, axis=0)


def _reconstruction(x, loadings, mean):
    """Share of each centred profile's squared norm outside the principal subspace (sparse x, dense axes)."""
    sq = np.asarray(x.multiply(x).sum(1)).ravel() - 2 * (x @ mean) + float(mean @ mean)
    proj = np.asarray(x @ loadings) - mean @ loadings
    return np.clip(1 - (proj**2).sum(1) / np.maximum(sq, 1e-12), 0, 1)


def run_fold(job: dict) -> str:
    """Train Celler and CellTypist without the left-out types; write every candidate score per cell."""
    import torch

    torch.set_num_threads(1)
    out = Path(job["out"])
    done = out.with_suffix(".json")
    if out.exists() and done.exists() and json.loads(done.read_text()).get("key") == job["key"]:
        return str(out)
    import tempfile
    from dataclasses import replace

    from celler.data.tokens import TokenStore
    from celler.model.calibration import low_confidence
    from celler.model.classifier import predict_logits
    from celler.model.programs import fit_axes, profile_matrix
    from celler.stages import finetune_config
    from celler.train.finetune import finetune

    start = time.perf_counter()
    cfg, _ = finetune_config(job["settings"])
    cfg = replace(cfg, seed=job["seed"])
    train = pd.Index(job["train"])
    with tempfile.TemporaryDirectory() as tmp:
        model, levels, info = finetune(job["store"], Path(tmp) / "model", cfg, pretrained=job["pretrained"],
                                       train_cells=train)
    wall = time.perf_counter() - start
    store = TokenStore(job["store"])
    cells = store.cells
    val = pd.Index(info["val_cells"])
    sets = {"val": val, "left_train": pd.Index(job["left_train"]), "test": pd.Index(job["test"])}
    idx = {s: np.flatnonzero(cells.index.isin(names)) for s, names in sets.items()}
    idx = {s: i for s, i in idx.items() if len(i)}  # a 'none' fold has no left-out training cells
    train_idx = np.flatnonzero(cells.index.isin(train) & ~cells.index.isin(val))
    classes = np.asarray(levels["subclass"], dtype=object)
    nov = model.novelty
    cal = model.calibration.get("subclass", {})
    temp = float(cal.get("temperature", 1.0))
    x = {s: profile_matrix(store, i) for s, i in {**idx, "train": train_idx}.items()}
    # the program view's scores before its LayerNorm: the cells on the tissue's principal axes
    programs = {s: np.asarray(v @ model.programs.loadings.numpy()) - model.programs.offset.numpy()
                for s, v in x.items()}
    logits, emb = {}, {}
    for s, i in idx.items():
        z, e = predict_logits(model, store, i, cfg)
        logits[s], emb[s] = z["subclass"], e
    _, emb_train = predict_logits(model, store, train_idx, cfg)
    ids = pd.Series(np.arange(len(classes)), index=classes)
    labels = ids[cells["label"].iloc[train_idx].astype(str)].to_numpy()  # the training cells' class ids
    out.parent.mkdir(parents=True, exist_ok=True)
    loadings, mean = fit_axes(store, np.union1d(train_idx, np.flatnonzero(cells.index.isin(val))),
                              N_WIDE, cfg.seed)
    wide = {s: np.asarray(v @ loadings) - mean @ loadings for s, v in x.items()}
    np.savez_compressed(out.with_suffix(".npz"), labels=labels, cut=nov.cut,
                        **{f"programs_{s}": c for s, c in programs.items()},
                        **{f"emb_{s}": e for s, e in emb.items()}, emb_train=emb_train,
                        **{f"wide_{s}": w for s, w in wide.items()})
    scores = candidate_scores(np.load(out.with_suffix(".npz")), list(idx))
    scores["reconstruction"] = {s: _reconstruction(x[s], loadings[:, :cfg.n_programs], mean) for s in idx}
    frames = []
    for s, i in idx.items():
        prob = torch.softmax(logits[s] / temp, 1).numpy()
        pred = classes[prob.argmax(1)]
        conf = prob.max(1)
        frame = pd.DataFrame({"set": s, "cell": cells.index[i], "true": cells["label"].iloc[i].astype(str).to_numpy(),
                              "predicted": pred, "confidence": conf,
                              "today": low_confidence(cal, pred, conf) if cal else False,
                              "energy": -temp * torch.logsumexp(logits[s] / temp, 1).numpy()})
        for name, by_set in scores.items():
            frame[name] = by_set[s]
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    table = table.merge(_celltypist(job, train), on="cell", how="left")
    table["default_novel"] = table[DEFAULT] > nov.cut
    table.to_csv(out, sep="\t", index=False)
    done.write_text(json.dumps({"key": job["key"], "wall_s": wall, "cut": nov.cut}))
    return str(out)


def _celltypist(job, train) -> pd.DataFrame:
    import anndata as ad

    from celler.evaluate.baselines.celltypist_lr import fit_predict_prob_match

    adata = ad.read_h5ad(job["expr"])
    test = adata[adata.obs_names.isin(job["test"])].copy()
    tr = adata[adata.obs_names.isin(train)].copy()
    res = fit_predict_prob_match(tr, test, seed=job["seed"])
    return pd.DataFrame({"cell": res.index, "set": "test", "celltypist_predicted": res["predicted"].to_numpy(),
                         "celltypist": 1 - res["confidence"].to_numpy(),
                         "celltypist_unassigned": res["unassigned"].to_numpy()}).drop(columns="set")


def rescore(job: dict) -> None:
    """Recompute the distance-based candidates of a finished fold from its stored coordinates."""
    path = Path(job["out"])
    table = pd.read_csv(path, sep="\t", dtype={"true": str, "predicted": str})
    with np.load(path.with_suffix(".npz")) as z:
        sets = [s for s in ("val", "left_train", "test") if f"programs_{s}" in z]
        scores = candidate_scores(z, sets)
    for name, by_set in scores.items():
        table[name] = np.nan
        for s in sets:
            table.loc[table["set"] == s, name] = by_set[s]
    with np.load(path.with_suffix(".npz")) as z:  # the cut fine-tuning set (out-of-fold cells below 50 validation)
        table["default_novel"] = table[DEFAULT] > float(z["cut"])
    table.to_csv(path, sep="\t", index=False)


def _auroc(novel: np.ndarray, score: np.ndarray, weight: np.ndarray | None = None) -> float:
    from sklearn.metrics import roc_auc_score

    ok = np.isfinite(score)
    w = None if weight is None else weight[ok]
    novel, score = novel[ok], score[ok]
    return float(roc_auc_score(novel, score, sample_weight=w)) if 0 < novel.sum() < len(novel) else np.nan


def score_fold(job: dict, rare_fraction: float) -> list[dict]:
    """Per candidate, one fold's figures: on the test cells (reported) and on the validation and tuning cells
    (what defaults are chosen on; see the module docstring)."""
    from celler.data.tokens import TokenStore
    from celler.evaluate.metrics import evaluate

    table = pd.read_csv(job.get("same_as", job["out"]), sep="\t", dtype={"true": str, "predicted": str})
    val, test, left_train = (table[table["set"] == s] for s in ("val", "test", "left_train"))
    novel = test["true"].isin(job["left"]).to_numpy()
    counts = TokenStore(job["store"]).cells.loc[pd.Index(job["train"]), "label"].astype(str).value_counts()
    rare_val = val["true"].isin(counts.index[counts / counts.sum() < rare_fraction]).to_numpy()
    # validation cells stand for the known cells at the training cells' class shares (rare types are
    # over-represented among them: every type with 5 cells gives one)
    weight = val["true"].map(counts / val["true"].value_counts()).to_numpy(float)
    rows = []
    for name in CANDIDATES:
        sets = {"val": val, "test": test, "left_train": left_train}
        if name == "today":
            flags = {k: v["today"].astype(bool).to_numpy() for k, v in sets.items()}
            scores = None
        elif name == DEFAULT and "default_novel" in table:  # the package's own cut
            flags = {k: v["default_novel"].astype(bool).to_numpy() for k, v in sets.items()}
            scores = {k: v[name].to_numpy(float) for k, v in sets.items()}
        elif name == "celltypist":
            flags = {"test": test["celltypist_unassigned"].astype(bool).to_numpy()}
            scores = {"test": test["celltypist"].to_numpy(float)}
        else:
            sign = -1 if name == "confidence" else 1
            scores = {k: sign * v[name].to_numpy(float) for k, v in sets.items()}
            cut = float(np.quantile(scores["val"], CUT_QUANTILE))
            flags = {k: v > cut for k, v in scores.items()}
        flag = flags["test"]
        row = {"tissue": job["tissue"], "seed": job["seed"], "fold": job["fold"], "kind": job["kind"],
               "sibling": job["sibling"], "score": name,
               "known_unassigned": float(flag[~novel].mean()) if (~novel).any() else np.nan,
               "novel_unassigned": float(flag[novel].mean()) if novel.any() else np.nan}
        if "val" in flags and rare_val.any():
            row["rare_val_flagged"] = float(flags["val"][rare_val].mean())
        if "left_train" in flags and len(left_train):
            row["tune_novel_unassigned"] = float(flags["left_train"].mean())
        if scores is not None and novel.any():
            row["auroc"] = _auroc(novel, scores["test"])
            budget = float(np.quantile(scores["test"][~novel], 1 - KNOWN_BUDGET))
            row["novel_at_3pct"] = float((scores["test"][novel] > budget).mean())
            if "left_train" in scores and len(left_train):
                lt = scores["left_train"]
                row["tune_auroc"] = _auroc(np.r_[np.zeros(len(val)), np.ones(len(lt))], np.r_[scores["val"], lt],
                                           np.r_[weight, np.full(len(lt), weight.sum() / len(lt))])
        if job["kind"] == "none":
            pred = pd.DataFrame({"cell": test["cell"], "split": "test", "level": "subclass", "true": test["true"],
                                 "predicted": test["celltypist_predicted" if name == "celltypist" else "predicted"],
                                 "confidence": 0.0, "unassigned": flag})
            res = evaluate(pred, counts, rare_fraction=rare_fraction, level="subclass")
            row["rare_before"] = res["rare_recall"]
            row["rare_after"] = res["after_unassigned"]["rare_recall"]
        rows.append(row)
    return rows


def _f(v) -> str:
    return "–" if pd.isna(v) else f"{v:.3f}"


def summary(rows: pd.DataFrame) -> str:
    """Markdown: the tuning figures defaults are chosen on, the test figures per fold kind, and per benchmark
    for the default, today's rule and CellTypist."""
    rows = rows.copy()
    rows["group"] = np.select([rows["kind"].eq("none"), rows["kind"].eq("lineage"), rows["sibling"].astype(bool)],
                              ["none", "lineage out", "type out, siblings in training"], "type out, distinct")
    out = rows[rows["kind"] != "none"]
    tune = rows.groupby("score")[["tune_auroc", "tune_novel_unassigned", "rare_val_flagged"]].mean()
    lines = ["Validation and tuning cells (what the default is chosen on; every fold and seed pooled):", "",
             "| score | tuning AUROC | left-out training cells Unassigned | rare-type validation cells "
             "Unassigned |", "|---|---|---|---|"]
    for score, r in tune.iterrows():
        lines.append(f"| {score} | {_f(r['tune_auroc'])} | {_f(r['tune_novel_unassigned'])} | "
                     f"{_f(r['rare_val_flagged'])} |")
    per_fold = out.groupby(["group", "score", "tissue", "fold"])["auroc"].mean()
    test = out.groupby(["group", "score"])[["auroc", "novel_unassigned", "novel_at_3pct", "known_unassigned"]].mean()
    lines += ["", "Test cells, by fold kind (mean over folds and seeds; the worst fold's AUROC in brackets):", "",
              "| folds | score | AUROC (worst fold) | left-out type Unassigned | ... at the cut leaving 3% of "
              "known cells | known cells Unassigned | folds |", "|---|---|---|---|---|---|---|"]
    for (group, score), r in test.iterrows():
        worst = per_fold.loc[(group, score)]
        lines.append(f"| {group} | {score} | {_f(r['auroc'])} ({_f(worst.min())}) | {_f(r['novel_unassigned'])} | "
                     f"{_f(r['novel_at_3pct'])} | {_f(r['known_unassigned'])} | {len(worst)} |")
    lolo = out[out["kind"].eq("lineage") | (out["kind"].eq("type") & out["tissue"].isin(OWN_LINEAGE))]
    lolo = lolo.groupby(["score", "tissue", "fold"])["auroc"].mean().groupby("score")
    every = out[out["kind"] == "type"].groupby("score")[["auroc", "novel_at_3pct", "known_unassigned"]].mean()
    lines += ["", "Every type fold together (distinct and sibling), and leave-one-lineage-out (FACS parents; each "
              f"type of {' and '.join(OWN_LINEAGE)} is a lineage of its own):", "",
              "| score | type folds: AUROC | left-out type Unassigned at 3% of known | lineage folds: AUROC "
              "(worst) |", "|---|---|---|---|"]
    for score, r in every.iterrows():
        lines.append(f"| {score} | {_f(r['auroc'])} | {_f(r['novel_at_3pct'])} | {_f(lolo.mean().get(score))} "
                     f"({_f(lolo.min().get(score))}) |")
    shown = rows[rows["score"].isin([DEFAULT, "today", "celltypist", "confidence"])]
    bench = shown.groupby(["tissue", "score"]).apply(lambda g: pd.Series({
        "auroc": g.loc[g["kind"] == "type", "auroc"].mean(),
        "novel": g.loc[g["kind"] == "type", "novel_unassigned"].mean(),
        "known": g.loc[g["kind"] == "none", "known_unassigned"].mean(),
        "before": g.loc[g["kind"] == "none", "rare_before"].mean(),
        "after": g.loc[g["kind"] == "none", "rare_after"].mean()}), include_groups=False)
    lines += ["", "Per benchmark (type folds for AUROC and the left-out share; the fold without an unseen type for "
              "the known cells Unassigned and rare recall):", "",
              "| benchmark | score | AUROC | left-out type Unassigned | test cells Unassigned, no unseen type | "
              "rare recall before → after Unassigned |", "|---|---|---|---|---|---|"]
    for (tissue, score), r in bench.iterrows():
        lines.append(f"| {tissue} | {score} | {_f(r['auroc'])} | {_f(r['novel'])} | {_f(r['known'])} | "
                     f"{_f(r['before'])} → {_f(r['after'])} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tissues", nargs="*")
    ap.add_argument("--seeds", nargs="*", type=int, default=list(SEEDS))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--score-only", action="store_true", help="table the folds already finished (marked partial)")
    ap.add_argument("--rescore", action="store_true", help="recompute the k-NN / Mahalanobis candidates of "
                    "finished folds from their stored coordinates (no training)")
    ap.add_argument("--title", default="Leave-one-type-out")
    args = ap.parse_args()
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    tissues = args.tissues or list(config["tissues"])
    jobs, unique = plan(config, tissues, args.seeds)
    corpus = ACCURACY_OUT / "pretrain" / "corpus"
    for j in jobs:
        j["pretrained"] = str(corpus)
    start = time.perf_counter()
    if not args.score_only:
        pretrain_corpus(config)
        unique.sort(key=lambda j: (j["seed"], j["kind"] != "none"))  # whole seeds first: a stopped run has rows
        with ProcessPoolExecutor(args.workers) as pool:
            for path in pool.map(run_fold, unique):
                print("done", path, flush=True)
    ready = [j for j in jobs if Path(j.get("same_as", j["out"])).exists()]
    if args.rescore:
        for j in ready:
            if "same_as" not in j:
                rescore(j)
    rows = pd.DataFrame([r for j in ready for r in score_fold(j, float(config["evaluate"]["rare_fraction"]))])
    OUT.mkdir(parents=True, exist_ok=True)
    rows.to_csv(OUT / "rows.tsv", sep="\t", index=False)
    title = args.title + (f" (partial: {len(ready)} of {len(jobs)} folds)" if len(ready) < len(jobs) else "")
    notes = (f"{len(ready)} folds ({len(unique)} trainings; {(time.perf_counter() - start) / 60:.1f} min wall, "
             f"{args.workers} at a time). Cut: the {CUT_QUANTILE:.0%} quantile of each score on the validation "
             "cells; `today` and `celltypist` use their own rules. Celler starts from the corpus-pretrained model.")
    append_results(title, summary(rows), notes)


if __name__ == "__main__":
    main()
