# Comparison on shared splits: training-cell lists, baseline and Celler runs, per-tissue evaluation, tables.
# Layout: results/runs/{tissue}/{imbalance}/seed{seed}/train_cells.txt and
#         results/runs/{tissue}/{imbalance}/{method}/seed{seed}/predictions.tsv


wildcard_constraints:
    imbalance=r"natural|ratio\d+",
    method=r"[A-Za-z0-9_]+",
    seed=r"\d+",


FINAL_OUTPUTS.extend(expand("results/{tissue}/evaluation/metrics.tsv", tissue=TISSUES))
FINAL_OUTPUTS.append("results/tables/table3_datasets.md")


rule training_cells:
    input:
        "results/{tissue}/qc/cells.tsv.gz",
    output:
        cells="results/runs/{tissue}/{imbalance}/seed{seed}/train_cells.txt",
        table="results/runs/{tissue}/{imbalance}/seed{seed}/class_sizes.tsv",
    log:
        "logs/training_cells/{tissue}-{imbalance}-{seed}.log",
    conda:
        "../../envs/data.yaml"
    script:
        "../../scripts/training_cells.py"


rule baseline:
    input:
        expr="results/{tissue}/expr.h5ad",
        train_cells="results/runs/{tissue}/{imbalance}/seed{seed}/train_cells.txt",
    output:
        "results/runs/{tissue}/{imbalance}/{method}/seed{seed}/predictions.tsv",
    wildcard_constraints:
        method="|".join(BASELINE_METHODS),
    params:
        settings=lambda wc: config.get("evaluate", {}).get("baseline_params", {}).get(wc.method, {}),
    threads: 2
    resources:
        mem_mb=8000,
    log:
        "logs/baseline/{tissue}-{imbalance}-{method}-{seed}.log",
    benchmark:
        "results/benchmarks/baseline/{tissue}-{imbalance}-{method}-{seed}.tsv"
    conda:
        "../../envs/baselines.yaml"
    script:
        "../../scripts/baseline.py"


rule celler_run:
    input:
        tokens="results/{tissue}/tokens",
        pretrained=tissue_pretrained,
        train_cells="results/runs/{tissue}/{imbalance}/seed{seed}/train_cells.txt",
    output:
        "results/runs/{tissue}/{imbalance}/celler_{variant}/seed{seed}/predictions.tsv",
    wildcard_constraints:
        variant="|".join(["default", *config.get("ablation", {}).get("losses", {})]),
    threads: 2
    resources:
        gpu=config["finetune"].get("gpus", 0),
        mem_mb=8000,
        runtime=6 * 60,
    log:
        "logs/celler_run/{tissue}-{imbalance}-{variant}-{seed}.log",
    benchmark:
        "results/benchmarks/celler_run/{tissue}-{imbalance}-{variant}-{seed}.tsv"
    conda:
        "../../envs/model.yaml"
    script:
        "../../scripts/celler_run.py"


rule evaluate:
    input:
        unpack(evaluation_runs),
        cells="results/{tissue}/qc/cells.tsv.gz",
    output:
        metrics=report(
            "results/{tissue}/evaluation/metrics.tsv",
            caption="../report/evaluation_metrics.rst",
            category="3. Evaluation",
            subcategory="{tissue}",
            labels={"tissue": "{tissue}", "table": "every method, seed and level"},
        ),
        per_class="results/{tissue}/evaluation/per_class.tsv",
    params:
        runs=lambda wc: run_table(wc.tissue, evaluation_plan(wc.tissue)),
        rare_fraction=config.get("evaluate", {}).get("rare_fraction", 0.03),
    log:
        "logs/evaluate/{tissue}.log",
    conda:
        "../../envs/data.yaml"
    script:
        "../../scripts/evaluate.py"


rule tables:
    input:
        expand("results/{tissue}/evaluation/metrics.tsv", tissue=TISSUES),
    output:
        report(
            "results/tables/table2_levels.tsv",
            caption="../report/tables.rst",
            category="3. Evaluation",
            subcategory="all tissues",
            labels={"tissue": "all", "table": "Table 2: tissue x level x method"},
        ),
        "results/tables/table2_levels.md",
        report(
            "results/tables/table3_datasets.tsv",
            caption="../report/tables.rst",
            category="3. Evaluation",
            subcategory="all tissues",
            labels={"tissue": "all", "table": "Table 3: dataset x method"},
        ),
        "results/tables/table3_datasets.md",
    params:
        files=dict(zip(TISSUES, expand("results/{tissue}/evaluation/metrics.tsv", tissue=TISSUES))),
    log:
        "logs/tables/tables.log",
    conda:
        "../../envs/data.yaml"
    script:
        "../../scripts/tables.py"


rule ablation_evaluate:
    input:
        unpack(ablation_runs),
        cells="results/{tissue}/qc/cells.tsv.gz",
    output:
        metrics="results/ablation/{tissue}/metrics.tsv",
        per_class="results/ablation/{tissue}/per_class.tsv",
    params:
        runs=lambda wc: run_table(wc.tissue, ablation_plan(wc.tissue)),
        rare_fraction=config.get("evaluate", {}).get("rare_fraction", 0.03),
    log:
        "logs/ablation/{tissue}.log",
    conda:
        "../../envs/data.yaml"
    script:
        "../../scripts/evaluate.py"


rule ablation:
    input:
        expand("results/ablation/{tissue}/metrics.tsv", tissue=TISSUES),
    output:
        report(
            "results/tables/table4_ablation.tsv",
            caption="../report/ablation.rst",
            category="3. Evaluation",
            subcategory="all tissues",
            labels={"tissue": "all", "table": "Table 4: loss ablation"},
        ),
        "results/tables/table4_ablation.md",
        report(
            "results/tables/table4_ablation_paired.tsv",
            caption="../report/ablation.rst",
            category="3. Evaluation",
            subcategory="all tissues",
            labels={"tissue": "all", "table": "Table 4, paired: each loss minus CE"},
        ),
        "results/tables/table4_ablation_paired.md",
    params:
        files=dict(zip(TISSUES, expand("results/ablation/{tissue}/metrics.tsv", tissue=TISSUES))),
    log:
        "logs/tables/ablation.log",
    conda:
        "../../envs/data.yaml"
    script:
        "../../scripts/ablation_table.py"
