# Shared helpers: config validation, the dataset table, and the final targets.
import json
import sys

from snakemake.utils import validate

from celler.evaluate.baselines import BASELINES
from celler.config import all_datasets, check_config, check_input_files, config_source
from celler.errors import CellerError
from celler.preflight import check_inputs_against_config

# one line naming the config file and the key, before Snakemake's own (more verbose) validation fills defaults
CONFIG_SOURCE = config_source(workflow.overwrite_configfiles, overrides=bool(workflow.config_settings.config))
try:
    check_config(config, workflow.source_path("../schemas/config.schema.yaml"), source=CONFIG_SOURCE)
    check_input_files(config, source=CONFIG_SOURCE)
    check_inputs_against_config(config, source=CONFIG_SOURCE)  # the config's keys against the files' obs
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


def pretrain_datasets():
    """The corpus and every tissue that uses the shared vocabulary: what pretraining reads."""
    return [n for n, d in DATASETS.items() if d.vocab_mode == "match"]


def pretrain_stores():
    """Token stores pretraining reads (shard stores for sharded datasets)."""
    return all_token_stores(pretrain_datasets())


def torch_launcher(gpus):
    """python for one process; torchrun with one process per GPU for several (multi-node: see README)."""
    return f"torchrun --standalone --nproc_per_node={gpus}" if int(gpus) > 1 else "python"


def pretrain_settings():
    p = config["pretrain"]
    keys = ("max_steps", "batch_size", "lr", "warmup_steps", "max_len", "mask_ratio", "transductive",
            "checkpoint_every", "profile_weight")
    pairs = {k: p[k] for k in keys if k in p} | p.get("settings", {})
    sets = " ".join(f"--set {k}={json.dumps(v)}" for k, v in pairs.items())
    return f"--preset {p.get('preset', 'tiny')} {sets}"


def pretrain_workdir():
    """Where pretraining checkpoints survive pre-emption: one folder per settings and store list (the datasets
    and how they are sharded), so a resumed job never meets a checkpoint written for other data or settings."""
    import hashlib

    data = [sorted(pretrain_datasets()), config.get("shards") or {}]
    key = hashlib.sha1(json.dumps([pretrain_settings(), *data], sort_keys=True).encode()).hexdigest()[:10]
    return f"results/pretrain/work-{key}"


def pretrained_model():
    """The shared pretrained model (none for scratch or an external scGPT directory)."""
    return "results/pretrain/model" if config["finetune"].get("init", "pretrained") == "pretrained" else []


def pretrains_per_tissue(tissue):
    """Whether a tissue gets its own continued pretraining (pretrain.per_tissue): 'auto' for the tissues the
    shared pretraining never read (vocab_mode extend: their new genes are untrained there), 'all', 'none'."""
    when = config["pretrain"].get("per_tissue", "auto")
    if not pretrained_model() or when == "none":
        return False
    return when == "all" or DATASETS[tissue].vocab_mode != "match"


def tissue_pretrained(wildcards):
    """The pretrained model a tissue's fine-tuning starts from: its own continued pretraining, or the shared."""
    return f"results/{wildcards.tissue}/pretrained" if pretrains_per_tissue(wildcards.tissue) else pretrained_model()


def tissue_pretrain_settings():
    p = config["pretrain"]
    keys = ("batch_size", "lr", "max_len", "mask_ratio", "transductive", "profile_weight")
    pairs = {k: p[k] for k in keys if k in p} | p.get("settings", {})
    pairs |= {"max_steps": p.get("tissue_steps", 300), "warmup_steps": min(p.get("warmup_steps", 40), 20),
              "checkpoint_every": 0}
    return " ".join(f"--set {k}={json.dumps(v)}" for k, v in pairs.items())


# Each rule file adds the targets of a default run to this list (see get_final_output).
FINAL_OUTPUTS = []


def get_final_output():
    """Everything `snakemake` builds by default: what the included rule files registered."""
    return FINAL_OUTPUTS


# --- comparison runs (workflow/rules/evaluate.smk) -------------------------------------------------------
BASELINE_METHODS = list(BASELINES)  # the package's (the schema's enum lists the same; tested)


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


# --- cluster sizing and sharded preprocessing (workflow/rules/shards.smk, slurm/README.md) ----------------------
def dataset_input_gb(name):
    """Size of a dataset's input .h5ad files in GB (0 for files not there yet)."""
    import os

    return sum(os.path.getsize(f.path) for f in DATASETS[name].inputs if os.path.exists(f.path)) / 1e9


def mem_mb_per_input(base_mb, mb_per_input_gb, max_mb=None):
    """A `mem_mb` resource for a per-dataset rule: `base_mb` plus `mb_per_input_gb` per GB of the dataset's input
    files (QC and tokenisation keep per-cell tables and a value sample that grow with the data), capped at
    `max_mb`, times the attempt: a job retried after running out of memory (`retries:` in slurm/config.yaml)
    asks for twice as much. Measured on synthetic counts (2,000 genes, 10% non-zero, 167 MB per 100k cells):
    QC 0.29 GB, tokenisation 0.9 GB at 100k cells."""

    def mem_mb(wildcards, attempt):
        name = getattr(wildcards, "dataset", None) or getattr(wildcards, "tissue", None)
        mb = base_mb + mb_per_input_gb * (dataset_input_gb(name) if name else 0)
        return int(min(mb, max_mb or mb) * attempt)

    return mem_mb


def sharded_datasets():
    """Datasets tokenised in shards (config `shards:`): those listed, or every corpus dataset; none without it."""
    shards = config.get("shards") or {}
    if not shards:
        return []
    return list(shards.get("datasets", list(config.get("corpus") or {})))


def shard_ids(dataset):
    """The shard names of a sharded dataset, from its shard plan (a checkpoint: call inside input functions)."""
    from celler.data.shards import read_plan

    return read_plan(checkpoints.shard_plan.get(dataset=dataset).output[0])["shard"].tolist()


def token_stores(dataset):
    """The token store(s) of a dataset as pretraining reads them: results/{dataset}/tokens, or the stores of
    its shards when it is sharded (call inside an input function)."""
    if dataset not in sharded_datasets():
        return [f"results/{dataset}/tokens"]
    return [f"results/{dataset}/shards/{s}/tokens" for s in shard_ids(dataset)]


def all_token_stores(names):
    """Input function: the token stores of the datasets `names`, shards expanded once their plan exists."""

    def stores(wildcards):
        return [path for name in names for path in token_stores(name)]

    return stores


def shard_config(wildcards):
    """A dataset's config block (and the defaults) as JSON, for `python -m celler.data.shards`."""
    name = wildcards.dataset
    section = "tissues" if name in (config.get("tissues") or {}) else "corpus"
    return json.dumps({"defaults": config.get("defaults", {}), section: {name: config[section][name]}})


def shard_read_flags():
    """The `tokenize:` settings every `python -m celler.data.shards sample|tokenize` call reads a shard with."""
    t = config["tokenize"]
    normalize = "" if t.get("normalize", True) else "--no-normalize"
    return f"--chunk-size {t.get('chunk_size', 20000)} {normalize}"


def shard_tokenize_flags():
    """The `tokenize:` settings as `python -m celler.data.shards tokenize` flags."""
    t = config["tokenize"]
    return f"--n-bins {t['n_bins']} --binning {t['binning']} {shard_read_flags()}"


def shard_samples(wildcards):
    """Input function: every shard's value sample of a dataset."""
    return expand("results/{dataset}/shards/{shard}/values.npz", dataset=wildcards.dataset,
                  shard=shard_ids(wildcards.dataset))


def shard_edges(wildcards):
    """Input function: the dataset's shared bin edges (per_batch binning only)."""
    per_batch = config["tokenize"]["binning"] == "per_batch"
    return f"results/{wildcards.dataset}/shards/bin_edges.json" if per_batch else []
