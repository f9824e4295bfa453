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


def get_final_output():
    out = expand("results/{dataset}/tokens", dataset=DATASETS)
    out += expand("results/{tissue}/expr.h5ad", tissue=TISSUES)
    out += expand("results/{tissue}/celler/metrics.tsv", tissue=TISSUES)
    return out
