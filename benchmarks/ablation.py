"""Run the loss ablation (`snakemake ablation`) and record its Table 4 and wall time in RESULTS.md.

    python benchmarks/ablation.py                 # the configured ablation (config.yaml: ablation:)
    python benchmarks/ablation.py --cpu-subset    # the subset measured on a 2-core CPU machine (see below)

The full ablation (9 losses x 3 seeds x 5 tissues at natural imbalance + CBMC and pbmc68k at ratios 10 and
100, plus the baselines at 10/50/100) is 243 fine-tuning runs: hours on 2 CPU cores, minutes on a GPU node.
``--cpu-subset`` keeps what the issue's targets are about: CE, balanced softmax, GInf (paper form) and
GInf+HDM (n=3, since these benchmarks have <= 11 classes) on CBMC and pbmc68k at natural imbalance and CBMC
at ratio 100, three seeds, 300 optimiser steps per run.
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

import pandas as pd
import yaml

from _common import append_results

REPO = Path(__file__).resolve().parents[1]
CPU_SUBSET = {
    "seeds": [0, 1, 2],
    "induced": {"cbmc": [100]},
    "baseline_induced": {},
    "losses": {
        "ce": {"loss": "ce"},
        "balanced_softmax": {"loss": "balanced_softmax"},
        "ginf_paper": {"loss": "ginf", "loss_params": {"form": "paper", "sigma": 0.33}},
        "ginf_hdm_n3": {"loss": "ginf+hdm", "loss_params": {"form": "paper", "sigma": 0.33, "hdm_n": 3}},
    },
    "finetune": {"max_steps": 300},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-subset", action="store_true", help="the reduced plan measured on 2 CPU cores")
    ap.add_argument("--tissues", nargs="*", default=["cbmc", "pbmc68k"], help="with --cpu-subset: tissues to run")
    ap.add_argument("--cores", type=int, default=2)
    args = ap.parse_args()
    cmd = ["snakemake", "ablation", f"-c{args.cores}", "--keep-going"]
    if args.cpu_subset:
        # a complete config (a --configfile replaces config.yaml) with the subset as its ablation section;
        # targets: the chosen tissues' ablation metrics (the `ablation` rule itself wants every tissue)
        config = yaml.safe_load((REPO / "config.yaml").read_text()) | {"ablation": CPU_SUBSET}
        cfg_path = REPO / "results/benchmarks/ablation_cpu_subset.yaml"
        cfg_path.parent.mkdir(parents=True, exist_ok=True)
        cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
        cmd = ["snakemake", *[f"results/ablation/{t}/metrics.tsv" for t in args.tissues], f"-c{args.cores}",
               "--keep-going", "--configfile", str(cfg_path)]
    t0 = time.time()
    subprocess.run(cmd, cwd=REPO, check=True)
    wall = time.time() - t0
    from celler.experiments import ablation_table

    files = {p.parent.name: str(p) for p in sorted((REPO / "results/ablation").glob("*/metrics.tsv"))
             if not args.cpu_subset or p.parent.name in args.tissues}
    out = REPO / "results/tables/table4_ablation.tsv"
    ablation_table(files, out)
    table = out.with_suffix(".md").read_text()
    runs = sum(len(pd.read_csv(f, sep="\t").drop_duplicates(["method", "imbalance", "seed"])) for f in files.values())
    append_results("Loss ablation (benchmarks/ablation.py)", table,
                   f"{runs} runs in {wall / 60:.1f} min wall ({args.cores} cores, snakemake `{' '.join(cmd[:3])} ...`).")


if __name__ == "__main__":
    main()
