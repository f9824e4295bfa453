# Annotation of new data: each tissue's fine-tuned model applied to the query files listed under its
# `queries:` key (celler.annotate; the same code as `celler annotate`). Outputs per (tissue, query stem):
# the annotated copy, a per-cell CSV, the predicted label distribution and a marker dot plot.
import sys
from pathlib import Path


# {tissue: {query stem: path}} from the tissues' `queries:` lists; stems name the outputs, so they must be unique
QUERIES = {t: {Path(q).stem: q for q in b.get("queries", [])} for t, b in config["tissues"].items()}
for _tissue, _stems in QUERIES.items():
    if len(_stems) < len(config["tissues"][_tissue].get("queries", [])):
        sys.exit(f"celler: error: tissues.{_tissue}.queries: two files share a name (outputs are named by the "
                 "file stem); rename one")

FINAL_OUTPUTS.extend(
    f"results/annotate/{tissue}/{stem}.{ext}"
    for tissue, stems in QUERIES.items()
    for stem in stems
    for ext in ("h5ad", "csv", "labels.tsv", "markers.png")
)


rule annotate:
    input:
        query=lambda wc: QUERIES[wc.tissue][wc.query],
        model="results/{tissue}/model",
    output:
        h5ad="results/annotate/{tissue}/{query}.h5ad",
        csv="results/annotate/{tissue}/{query}.csv",
        labels=report(
            "results/annotate/{tissue}/{query}.labels.tsv",
            caption="../report/annotate_labels.rst",
            category="5. Annotation",
            subcategory="{tissue}",
            labels={"query": "{query}", "item": "predicted labels"},
        ),
        markers=report(
            "results/annotate/{tissue}/{query}.markers.png",
            caption="../report/annotate_markers.rst",
            category="5. Annotation",
            subcategory="{tissue}",
            labels={"query": "{query}", "item": "marker genes"},
        ),
    params:
        settings={"device": "auto"},  # a GPU when the job has one, else the CPU
    threads: 2
    resources:
        gpu=min(config["finetune"].get("gpus", 0), 1),
        mem_mb=8000,
        runtime=2 * 60,
    log:
        "logs/annotate/{tissue}/{query}.log",
    benchmark:
        "results/benchmarks/annotate/{tissue}/{query}.tsv"
    conda:
        "../../envs/model.yaml"
    script:
        "../../scripts/annotate.py"
