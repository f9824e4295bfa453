# Celler: cell-type annotation with a genomic language model trained for long-tailed labels.
# This file only assembles the workflow: rules live in workflow/rules/, logic in the celler package.
import sys

from snakemake.utils import min_version

from celler.config import read_config_file
from celler.errors import CellerError

min_version("9.0")


# `--configfile X` replaces config.yaml instead of being merged over it, so a test or site config is
# complete in itself (use `--config key=value` to override single keys).
if not workflow.overwrite_configfiles:
    try:  # one line naming the file and line, before Snakemake's own reading (which names neither)
        read_config_file("config.yaml")
    except CellerError as e:
        sys.exit(f"celler: error: {e}")

    configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/shards.smk"
include: "workflow/rules/annotate.smk"


rule all:
    input:
        get_final_output(),
    default_target: True
