# Celler: cell-type annotation with a genomic language model trained for long-tailed labels.
# This file only assembles the workflow: rules live in workflow/rules/, logic in the celler package.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"


rule all:
    input:
        get_final_output(),
    default_target: True
