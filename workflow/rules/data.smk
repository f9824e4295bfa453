# Data stages: QC -> gene-vocabulary mapping -> per-batch binning into a token store.

FINAL_OUTPUTS.extend(expand("results/{dataset}/tokens", dataset=DATASETS))
FINAL_OUTPUTS.extend(expand("results/{tissue}/expr.h5ad", tissue=TISSUES))


rule qc:
    input:
        dataset_inputs,
    output:
        cells="results/{dataset}/qc/cells.tsv.gz",
        genes="results/{dataset}/qc/genes.tsv.gz",
        summary=report(
            "results/{dataset}/qc/summary.tsv",
            caption="../report/qc_summary.rst",
            category="1. Data",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "item": "QC summary"},
        ),
        plot=report(
            "results/{dataset}/qc/qc.png",
            caption="../report/qc_plot.rst",
            category="1. Data",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "item": "QC distributions"},
        ),
    params:
        chunk_size=config["tokenize"].get("chunk_size", 20000),
    log:
        "logs/qc/{dataset}.log",
    benchmark:
        "results/benchmarks/qc/{dataset}.tsv"
    resources:
        mem_mb=mem_mb_per_input(1000, 500),  # per-cell tables: ~0.3 GB at 100k cells (see common.smk)
    conda:
        "../../envs/data.yaml"
    script:
        "../../scripts/qc.py"


rule map_genes:
    input:
        genes="results/{dataset}/qc/genes.tsv.gz",
        vocab=config["vocab"],
        ensembl=config.get("ensembl_to_symbol", []),
    output:
        mapping="results/{dataset}/vocab/mapping.tsv.gz",
        report=report(
            "results/{dataset}/vocab/report.tsv",
            caption="../report/vocab_report.rst",
            category="1. Data",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "item": "vocabulary coverage"},
        ),
        vocab="results/{dataset}/vocab/vocab.json",
    log:
        "logs/map_genes/{dataset}.log",
    conda:
        "../../envs/data.yaml"
    script:
        "../../scripts/map_genes.py"


rule tokenize:
    input:
        cells="results/{dataset}/qc/cells.tsv.gz",
        genes="results/{dataset}/qc/genes.tsv.gz",
        mapping="results/{dataset}/vocab/mapping.tsv.gz",
        vocab="results/{dataset}/vocab/vocab.json",
    output:
        directory("results/{dataset}/tokens"),
    params:
        n_bins=config["tokenize"]["n_bins"],
        binning=config["tokenize"]["binning"],
        normalize=config["tokenize"].get("normalize", True),
        chunk_size=config["tokenize"].get("chunk_size", 20000),
    log:
        "logs/tokenize/{dataset}.log",
    benchmark:
        "results/benchmarks/tokenize/{dataset}.tsv"
    resources:
        mem_mb=mem_mb_per_input(1000, 4000, max_mb=64000),  # ~0.9 GB at 100k cells; shard larger data
    conda:
        "../../envs/data.yaml"
    script:
        "../../scripts/tokenize_cells.py"


rule expression:
    input:
        cells="results/{tissue}/qc/cells.tsv.gz",
        genes="results/{tissue}/qc/genes.tsv.gz",
        mapping="results/{tissue}/vocab/mapping.tsv.gz",
        vocab="results/{tissue}/vocab/vocab.json",
    output:
        "results/{tissue}/expr.h5ad",
    resources:
        mem_mb=mem_mb_per_input(1000, 3000),  # holds the tissue's whole log-normalised matrix
    log:
        "logs/expression/{tissue}.log",
    conda:
        "../../envs/data.yaml"
    script:
        "../../scripts/expression.py"
