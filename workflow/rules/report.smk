# HTML reports: one self-contained page per tissue (figures embedded) and the cross-tissue index page.
# For `snakemake --report report.html` the index page and each figure (once, with its caption) are declared
# with report(); the tissue pages are not, as they embed the same figures again.

FINAL_OUTPUTS.extend(expand("results/{tissue}/report.html", tissue=TISSUES))
FINAL_OUTPUTS.append("results/report_index.html")

MARKER_TABLES = [
    "resources/markers/PanglaoDB_markers_27_Mar_2020.tsv.gz",
    "resources/markers/CellMarker2_Human_Aug.csv",
    "resources/markers/ScTypeDB_full.tsv",
]


# The baseline comparison of a tissue when this run evaluates baselines, else nothing (the report then shows
# Celler alone). Lambdas, not defs: `snakemake --lint` wants functions in common.smk.
evaluation_inputs = lambda wildcards: (
    [
        f"results/{wildcards.tissue}/evaluation/metrics.tsv",
        f"results/{wildcards.tissue}/evaluation/per_class.tsv",
    ]
    if config.get("evaluate")
    else []
)

# One report figure of a tissue, with its caption in workflow/report/<name>.rst.
report_figure = lambda name, title: report(
    f"results/{{tissue}}/figures/{name}.png",
    caption=f"../report/{name}.rst",
    category="4. Reports",
    subcategory="{tissue}",
    labels={"tissue": "{tissue}", "figure": title},
)


rule report_tissue:
    input:
        expr="results/{tissue}/expr.h5ad",
        cells="results/{tissue}/qc/cells.tsv.gz",
        genes="results/{tissue}/qc/genes.tsv.gz",
        qc_summary="results/{tissue}/qc/summary.tsv",
        vocab="results/{tissue}/vocab/report.tsv",
        model="results/{tissue}/model",
        predictions="results/{tissue}/celler/predictions.tsv",
        metrics="results/{tissue}/celler/metrics.tsv",
        per_class="results/{tissue}/celler/per_class.tsv",
        embeddings="results/{tissue}/celler/embeddings.npz",
        pretrained=tissue_pretrained,
        evaluation=evaluation_inputs,
        # the baselines' runs: the best one's confusion matrix is drawn beside Celler's (celler.report.baseline)
        runs=lambda wc: [r["predictions"] for r in run_table(wc.tissue, evaluation_plan(wc.tissue))
                         if r["method"] != "celler"] if config.get("evaluate") else [],
        markers=MARKER_TABLES,
        # the tissue's annotated queries, so that the page can link them (QUERIES: annotate.smk)
        queries=lambda wc: [f"results/annotate/{wc.tissue}/{q}.{ext}" for q in QUERIES.get(wc.tissue, {})
                            for ext in ("h5ad", "csv")],
    output:
        html="results/{tissue}/report.html",
        qc="results/{tissue}/figures/qc.png",  # in the Snakemake report once, as 1. Data's QC figure
        class_sizes=report_figure("class_sizes", "1 class sizes"),
        training_curves=report_figure("training_curves", "2 training curves"),
        f1_vs_size=report_figure("f1_vs_size", "3 per-class F1 vs class size"),
        confusion=report_figure("confusion", "4 confusion matrix"),
        confidence=report_figure("confidence", "5 confidence and low-confidence calls"),
        confidence_true=report_figure("confidence_true", "5 confidence by true type"),
        novelty=report_figure("novelty", "5 novelty and Unassigned"),
        umap=report_figure("umap", "6 UMAP of the embeddings"),
        dotplot_true=report_figure("dotplot_true", "7 marker genes, true labels"),
        dotplot_predicted=report_figure("dotplot_predicted", "8 marker genes, predicted labels"),
    params:
        marker_tissue=lambda wc: config["tissues"][wc.tissue].get("marker_tissue"),
        label_note=lambda wc: config["tissues"][wc.tissue].get("label_note"),
        rare_fraction=config.get("evaluate", {}).get("rare_fraction", 0.03),
        index="results/report_index.html",
    resources:
        mem_mb=4000,
    log:
        "logs/report/{tissue}.log",
    benchmark:
        "results/benchmarks/report/{tissue}.tsv"
    conda:
        "../../envs/report.yaml"
    script:
        "../../scripts/report_tissue.py"


rule report_index:
    input:
        reports=expand("results/{tissue}/report.html", tissue=TISSUES),
        pretrained=lambda wc: pretrained_model(),  # the shared model: its loss spikes are explained here once
        evaluation=lambda wildcards: (
            expand("results/{tissue}/evaluation/metrics.tsv", tissue=TISSUES) if config.get("evaluate") else []
        ),
    output:
        report(
            "results/report_index.html",
            caption="../report/report_index.rst",
            category="4. Reports",
            subcategory="all tissues",
            labels={"tissue": "all", "figure": "0 summary across tissues (index page)"},
        ),
    log:
        "logs/report/index.log",
    conda:
        "../../envs/report.yaml"
    script:
        "../../scripts/report_index.py"
