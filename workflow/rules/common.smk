# Shared helpers: config validation, the dataset table, and the final targets.
import json
import sys

from snakemake.utils import validate

from celler.config import all_datasets, check_config
from celler.errors import CellerError

try:  # one line naming the key, before Snakemake's own (more verbose) validation fills defaults
    check_config(config, workflow.source_path("../schemas/config.schema.yaml"))
except CellerError as e:
    sys.exit(f"celler: error: {e}")
validate(config, schema="../schemas/config.schema.yaml")

DATASETS = all_datasets(config)
TISSUES = list(config["tissues"])


wildcard_constraints:
    dataset="|".join(DATASETS),
    tissue="|".join(TISSUES),


def dataset_inputs(wildcards):
    return [str(f.path) for f in DATASETS[wildcards.dataset].inputs]


def pretrain_stores():
    """Token stores pretraining reads: the corpus and every tissue that uses the shared vocabulary."""
    names = [n for n, d in DATASETS.items() if d.vocab_mode == "match"]
    return expand("results/{dataset}/tokens", dataset=names)


def torch_launcher(gpus):
    """python for one process; torchrun with one process per GPU for several (multi-node: see README)."""
    return f"torchrun --standalone --nproc_per_node={gpus}" if int(gpus) > 1 else "python"


def pretrain_settings():
    p = config["pretrain"]
    keys = ("max_steps", "batch_size", "lr", "warmup_steps", "max_len", "mask_ratio", "transductive",
            "checkpoint_every")
    pairs = {k: p[k] for k in keys if k in p} | p.get("settings", {})
    sets = " ".join(f"--set {k}={json.dumps(v)}" for k, v in pairs.items())
    return f"--preset {p.get('preset', 'tiny')} {sets}"


def pretrained_model():
    """The pretrained model the fine-tuning starts from (none for scratch or an external scGPT directory)."""
    return "results/pretrain/model" if config["finetune"].get("init", "pretrained") == "pretrained" else []


# Each rule file adds the targets of a default run to this list (see get_final_output).
FINAL_OUTPUTS = []


def get_final_output():
    """Everything `snakemake` builds by default: what the included rule files registered."""
    return FINAL_OUTPUTS


# --- comparison runs (workflow/rules/evaluate.smk) -------------------------------------------------------
BASELINE_METHODS = ["celltypist", "celltypist_majority", "actinn", "singlecellnet", "logreg", "knn"]


def evaluation_plan(tissue):
    """(imbalance, method, seed) of the default comparison: natural imbalance, baselines + Celler."""
    ev = config.get("evaluate", {})
    methods = ev.get("baselines", BASELINE_METHODS) + ["celler_default"]
    return [("natural", m, s) for s in ev.get("seeds", [0]) for m in methods]


def ablation_plan(tissue):
    """(imbalance, method, seed) of the loss ablation: every loss at natural imbalance and at the induced
    ratios configured for this tissue; baselines at their induced ratios (same cell lists)."""
    ab = config.get("ablation", {})
    losses = [f"celler_{name}" for name in ab.get("losses", {})]
    plan = []
    for seed in ab.get("seeds", [0]):
        for ratio in [None, *ab.get("induced", {}).get(tissue, [])]:
            imb = "natural" if ratio is None else f"ratio{int(ratio)}"
            plan += [(imb, m, seed) for m in losses]
        for ratio in ab.get("baseline_induced", {}).get(tissue, []):
            plan += [(f"ratio{int(ratio)}", m, seed) for m in config.get("evaluate", {}).get("baselines", BASELINE_METHODS)]
    return plan


def run_predictions(tissue, imbalance, method, seed):
    """Prediction table of one run; the default Celler run at natural imbalance and the configured seed is
    the main fine-tuning rule's (not trained twice)."""
    if method == "celler_default" and imbalance == "natural" and int(seed) == config["finetune"].get("seed", 0):
        return f"results/{tissue}/celler/predictions.tsv"
    return f"results/runs/{tissue}/{imbalance}/{method}/seed{seed}/predictions.tsv"


def run_table(tissue, plan):
    return [
        {"method": m.replace("celler_default", "celler"), "imbalance": imb, "seed": seed,
         "predictions": run_predictions(tissue, imb, m, seed),
         "train_cells": f"results/runs/{tissue}/{imb}/seed{seed}/train_cells.txt"}
        for imb, m, seed in plan
    ]


def _run_inputs(tissue, plan):
    runs = run_table(tissue, plan)
    return {"predictions": [r["predictions"] for r in runs],
            "train_cells": sorted({r["train_cells"] for r in runs})}


def evaluation_runs(wildcards):
    return _run_inputs(wildcards.tissue, evaluation_plan(wildcards.tissue))


def ablation_runs(wildcards):
    return _run_inputs(wildcards.tissue, ablation_plan(wildcards.tissue))
