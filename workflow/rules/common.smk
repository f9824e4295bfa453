# Shared helpers: config validation, the dataset table, and the final targets.
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


def get_final_output():
    out = expand("results/{dataset}/tokens", dataset=DATASETS)
    out += expand("results/{tissue}/expr.h5ad", tissue=TISSUES)
    return out
