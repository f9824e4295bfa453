"""Run the loss ablation (the paper's Table 4) per tissue; record its tables and wall times in RESULTS.md.

    python benchmarks/ablation.py                 # the configured ablation (config.yaml: ablation:)
    python benchmarks/ablation.py --cpu-subset    # the reduced plan (below)
    python benchmarks/ablation.py --tissues kang  # some tissues only

The configured ablation (9 losses x 3 seeds on 5 tissues at natural imbalance, CBMC and pbmc68k also at ratios
10 and 100, plus the baselines at 10/50/100; ``auto`` trains a 6-point grid) is 243 fine-tuning runs and 108
baseline runs: 93 min measured on 2 CPU cores (benchmarks/RESULTS.md). ``--cpu-subset`` (90 runs, 22 min)
keeps what the issue's targets are about: CE, balanced softmax, GInf (paper form), the workflow's default
GInf+HDM (n=20: with <= 21 classes a plain second N-weighted softmax term) and GInf+HDM n=3 (which does select
hard negatives here) on CBMC, pbmc68k, pancreas and FACS-sorted PBMC, and CBMC and pbmc68k at ratio 100.

Each tissue is its own snakemake call (a finished tissue has its table even if a later one is stopped), with
fine-tuning and baseline jobs single-threaded, two at a time (a tiny model gains little from a second thread),
and outputs already present reused by modification time (e.g. a demo run's pretrained model).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from _common import append_results

REPO = Path(__file__).resolve().parents[1]
SUBSET_LOSSES = ["ce", "balanced_softmax", "ginf_paper", "ginf_hdm", "ginf_hdm_n3"]
SUBSET_TISSUES = ["cbmc", "pbmc68k", "pancreas", "pbmc_facs"]


def subset_config(config: dict) -> dict:
    """The configured workflow with the ablation cut to the CPU subset (same loss definitions, settings)."""
    ab = dict(config["ablation"])
    ab["losses"] = {name: ab["losses"][name] for name in SUBSET_LOSSES}
    ab["induced"] = {"cbmc": [100], "pbmc68k": [100]}
    ab["baseline_induced"] = {}
    return config | {"ablation": ab}


VAL_LINE = re.compile(r"chosen loss .*\(validation macro-F1 ([0-9.]+)\)")


def validation_scores(files: dict[str, str]) -> pd.Series:
    """Each Celler run's validation macro-F1 (subclass; before any post-hoc adjustment), from its log:
    indexed (loss, tissue, imbalance, seed). Validation cells are training cells, so a default can be chosen on
    these without the test cells; they also picked the run's epoch, so each value is optimistic."""
    scores = {}
    for f in (REPO / "logs/celler_run").glob("*.log"):
        tissue, imbalance, rest = f.stem.split("-", 2)
        variant, seed = rest.rsplit("-", 1)
        found = VAL_LINE.findall(f.read_text()) if tissue in files else []
        if found:
            scores[(variant, tissue, imbalance, int(seed))] = float(found[-1])
    return pd.Series(scores, dtype=float)


def loss_targets(files: dict[str, str], reference: str = "balanced_softmax") -> pd.DataFrame:
    """Per Celler loss, the issue-14 targets: paired differences (same seed, same cells) from CE and from
    ``reference`` over the benchmark levels, CBMC ratio 100, the worst level, and the run time over CE's."""
    runs = pd.concat([pd.read_csv(f, sep="\t").assign(tissue=t) for t, f in files.items()])
    runs = runs[runs["method"].str.startswith("celler_")].copy()
    runs["loss"] = runs["method"].str.removeprefix("celler_")
    runs["bench"] = runs["tissue"] + "/" + runs["imbalance"] + "/" + runs["level"]
    wide = runs.pivot_table(index=["bench", "seed"], columns="loss", values=["macro_f1", "rare_recall"])
    times = {}
    for f in (REPO / "results/benchmarks/celler_run").glob("*.tsv"):
        tissue, imbalance, rest = f.stem.split("-", 2)
        variant, seed = rest.rsplit("-", 1)
        if tissue in files:
            times[(variant, tissue, imbalance, int(seed))] = float(pd.read_csv(f, sep="\t")["s"].iloc[0])
    time = pd.Series(times, dtype=float)
    val = validation_scores(files).groupby(level=[0, 1, 2]).mean().groupby(level=0).mean()  # per loss
    f1, rare = wide["macro_f1"], wide["rare_recall"]
    rows = []
    for loss in f1.columns:
        vs_ce = (f1[loss] - f1["ce"]).groupby("bench").mean()
        vs_ref = (f1[loss] - f1[reference]).groupby("bench").mean()
        rare_ce = (rare[loss] - rare["ce"]).groupby("bench").mean()
        c100 = "cbmc/ratio100/subclass"
        ratio = time.xs(loss, level=0) / time.xs("ce", level=0) if loss in time.index.get_level_values(0) else None
        rows.append({"loss": loss, "levels": int(vs_ce.notna().sum()), "dF1_vs_ce_mean": vs_ce.mean(),
                     f"dF1_vs_{reference}_mean": vs_ref.mean(), "cbmc100_dF1_vs_ce": vs_ce.get(c100),
                     "cbmc100_dRare_vs_ce": rare_ce.get(c100), f"cbmc100_dF1_vs_{reference}": vs_ref.get(c100),
                     "worst_dF1_vs_ce": vs_ce.min(), "worst_level": vs_ce.idxmin(),
                     "time_vs_ce": np.nan if ratio is None else ratio.mean(),  # paired: same level and seed
                     "val_f1_mean": val.get(loss, np.nan)})
    table = pd.DataFrame(rows).set_index("loss")
    table["targets_met"] = ((table[f"dF1_vs_{reference}_mean"] >= 0).astype(int)
                            + (table[f"cbmc100_dF1_vs_{reference}"] >= 0) + (table["cbmc100_dF1_vs_ce"] >= 0.02)
                            + (table["cbmc100_dRare_vs_ce"] >= 0.10) + (table["worst_dF1_vs_ce"] >= -0.01)
                            + (table["time_vs_ce"] <= 1.5))
    return table.sort_values(f"dF1_vs_{reference}_mean", ascending=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-subset", action="store_true", help="the reduced plan (see the module docstring)")
    ap.add_argument("--tissues", nargs="*", help="tissues to run, in order (default: all, or the subset's)")
    ap.add_argument("--cores", type=int, default=2)
    args = ap.parse_args()
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    if args.cpu_subset:
        config = subset_config(config)
    # a complete config (a --configfile replaces config.yaml), written where the run can be inspected
    cfg_path = REPO / "results/benchmarks/ablation_config.yaml"
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
    tissues = args.tissues or (SUBSET_TISSUES if args.cpu_subset else list(config["tissues"]))

    walls, files = {}, {}
    for tissue in tissues:
        target = REPO / f"results/ablation/{tissue}/metrics.tsv"
        cmd = ["snakemake", str(target.relative_to(REPO)), f"-c{args.cores}", "--keep-going",
               "--set-threads", "celler_run=1", "baseline=1", "--rerun-triggers", "mtime", "input",
               "--configfile", str(cfg_path)]
        t0 = time.time()
        subprocess.run(cmd, cwd=REPO, check=True)
        walls[tissue], files[tissue] = time.time() - t0, str(target)

    from celler.evaluate.experiments import ablation_table

    out = REPO / "results/tables/table4_ablation.tsv"
    paired = ablation_table(files, out)
    runs = {t: len(pd.read_csv(f, sep="\t").drop_duplicates(["method", "imbalance", "seed"]))
            for t, f in files.items()}
    timed = ", ".join(f"{t} {runs[t]} runs {walls[t] / 60:.1f} min" for t in tissues)
    notes = (f"Runs in the table and wall time of each tissue's snakemake call (runs already present are "
             f"reused, so only the missing ones are timed): {timed}; {args.cores} cores.")
    tables = out.with_suffix(".md").read_text() + "\nPaired differences from CE (same seed, same cells):\n\n"
    tables += paired.with_suffix(".md").read_text()
    targets = loss_targets(files)
    tables += ("\nTargets (issue 14): paired mean differences over the levels; `targets_met` counts >= balanced "
               "softmax on average and on CBMC ratio 100, >= CE + 0.02 F1 and + 0.10 rare recall on CBMC ratio "
               "100, no level more than 0.01 below CE, run time <= 1.5x CE's (out of 6); `val_f1_mean`: validation "
               "macro-F1 (training cells held out of each run, test cells unread) averaged over the levels, what a "
               "default may be chosen on:\n\n"
               + targets.to_markdown(floatfmt="+.3f"))
    append_results("Loss ablation (benchmarks/ablation.py)", tables, notes)


if __name__ == "__main__":
    main()
