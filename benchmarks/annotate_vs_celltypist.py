"""`celler annotate` against CellTypist's `annotate` on the same 100k-cell query, side by side in one run.

    python benchmarks/annotate_vs_celltypist.py            # Kang's file x 12 (104,208 cells), 2 rounds

Both are timed as whole processes, from process start to the written annotated .h5ad, with their peak
resident memory (``/usr/bin/time``-style, read from the child's rusage): ``celler annotate`` with a model
fine-tuned on Kang's training cells (config.yaml's ``finetune:``, built once under
``results/annotate_bench/``), and a CellTypist script that reads the file, normalises to log1p(counts per
10,000), annotates with a CellTypist model trained on the same training cells (trained beforehand, not
timed) and writes the annotated copy. Celler's own log gives where its time goes (per stage). The ratio
Celler / CellTypist is the figure to read (these machines are noisy); a table goes to RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import yaml
from _common import append_results

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "results/annotate_bench"
KANG = REPO / "resources/data/pbmc_kang2018_8k_counts_muscat.h5ad"

CELLTYPIST_SCRIPT = """
import sys, anndata as ad, scanpy as sc, celltypist
a = ad.read_h5ad(sys.argv[1])
sc.pp.normalize_total(a, target_sum=1e4); sc.pp.log1p(a)
res = celltypist.annotate(a, model=sys.argv[2], mode="best match")
res.to_adata().write_h5ad(sys.argv[3])
"""


def build_query(repeat: int) -> Path:
    import anndata as ad

    out = OUT / f"kang_x{repeat}.h5ad"
    if not out.exists():
        a = ad.read_h5ad(KANG)
        parts = []
        for r in range(repeat):
            b = a.copy()
            b.obs_names = [f"{c}-{r}" for c in a.obs_names]
            parts.append(b)
        OUT.mkdir(parents=True, exist_ok=True)
        ad.concat(parts, merge="same").write_h5ad(out)
    return out


def build_models() -> tuple[Path, Path]:
    """A Celler model fine-tuned on Kang's training cells (the workflow's token store) and a CellTypist model
    trained on the same cells (log1p of counts per 10,000)."""
    import anndata as ad
    import celltypist
    import numpy as np
    import scanpy as sc

    from celler.stages import finetune_config
    from celler.train.finetune import finetune

    celler_dir, ct_model = OUT / "kang_model", OUT / "kang_celltypist.pkl"
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    if not (celler_dir / "novelty.npz").exists():
        snakemake = str(Path(sys.executable).with_name("snakemake"))
        subprocess.run([snakemake, "-c2", "results/kang/tokens", "results/pretrain/model"], cwd=REPO, check=True)
        cfg, _ = finetune_config(config["finetune"])
        finetune(REPO / "results/kang/tokens", celler_dir, cfg, pretrained=REPO / "results/pretrain/model")
    if not ct_model.exists():
        a = ad.read_h5ad(KANG)
        a = a[a.obs["donor"].astype(str) != "1015"].copy()  # the workflow's training donors
        sc.pp.normalize_total(a, target_sum=1e4)
        sc.pp.log1p(a)
        np.random.seed(0)
        celltypist.train(a, labels="celltype", check_expression=False).write(str(ct_model))
    return celler_dir, ct_model


def timed(cmd: list[str], log: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB) of one child process run to completion."""
    start = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = __import__("os").wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        sys.exit(f"{' '.join(cmd)} failed; see {log}")
    return wall, usage.ru_maxrss / 2**20  # ru_maxrss is in kB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    query = build_query(args.repeat)
    celler_dir, ct_model = build_models()
    rows = []
    for r in range(args.rounds):  # alternate, so drift in the machine's load hits both
        for name, cmd in (
            ("celler annotate", [str(Path(sys.executable).with_name("celler")), "annotate", str(query), "--model",
                                 str(celler_dir), "--out", str(OUT / "celler_out.h5ad")]),
            ("celltypist", [sys.executable, "-c", CELLTYPIST_SCRIPT, str(query), str(ct_model),
                            str(OUT / "celltypist_out.h5ad")]),
        ):
            wall, rss = timed(cmd, OUT / f"{name.split()[0]}_{r}.log")
            rows.append({"round": r, "tool": name, "wall_s": wall, "peak_gb": rss})
            print(rows[-1], flush=True)
    import anndata as ad
    import pandas as pd

    n = ad.read_h5ad(query, backed="r").n_obs
    df = pd.DataFrame(rows)
    best = df.groupby("tool")[["wall_s", "peak_gb"]].min()
    ratio = best.loc["celler annotate", "wall_s"] / best.loc["celltypist", "wall_s"]
    table = ["| tool | wall s (best of rounds) | all rounds | peak RSS GB |", "|---|---|---|---|"]
    for tool, r in best.iterrows():
        walls = ", ".join(f"{w:.1f}" for w in df.loc[df["tool"] == tool, "wall_s"])
        table.append(f"| {tool} | {r['wall_s']:.1f} | {walls} | {r['peak_gb']:.2f} |")
    last = OUT / f"celler_{args.rounds - 1}.log"
    stages = [line.split(": ", 1)[-1] for line in last.read_text().splitlines() if "stage " in line][:12]
    notes = (f"Query: Kang's file x {args.repeat} ({n:,} cells), counts. Celler / CellTypist wall time: "
             f"{ratio:.2f}. Both from process start (imports included) to the written .h5ad; CellTypist's "
             "model trained beforehand. Where Celler's time went (its stage log, last round):\n\n"
             + "\n".join(f"    {s}" for s in stages))
    append_results("Annotation: celler annotate vs CellTypist, 100k cells", "\n".join(table), notes)
    (OUT / "summary.json").write_text(json.dumps({"ratio": ratio, "rows": rows}))


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
