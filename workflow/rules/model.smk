# Model stages: pretraining (masked values + the cell-level objective) on the corpus and the tissues that share
# its vocabulary, continued per tissue where pretrain.per_tissue says so, then per-tissue fine-tuning.

FINAL_OUTPUTS.extend(expand("results/{tissue}/celler/metrics.tsv", tissue=TISSUES))


rule pretrain:
    input:
        stores=pretrain_stores(),
    output:
        directory("results/pretrain/model"),
    params:
        launcher=torch_launcher(config["pretrain"].get("gpus", 0)),
        script=f"{workflow.basedir}/scripts/pretrain.py",
        work=pretrain_workdir(),  # checkpoints live here across pre-emptions; new settings -> new folder
        settings=pretrain_settings(),
    threads: 2
    resources:
        gpu=config["pretrain"].get("gpus", 0),  # sbatch --gpus=N, one torchrun process each
        cpus_per_gpu=4 if config["pretrain"].get("gpus", 0) else 0,  # a process + DataLoader workers per GPU
        nodes=1,  # torchrun --standalone: every GPU on one node (several nodes: slurm/README.md)
        mem_mb=16000,
        runtime=24 * 60,
    log:
        "logs/pretrain/pretrain.log",
    benchmark:
        "results/benchmarks/pretrain/pretrain.tsv"
    conda:
        "../../envs/model.yaml"
    shell:
        "(OMP_NUM_THREADS={threads} {params.launcher} {params.script} --stores {input.stores} --out {params.work} --resume"
        " {params.settings} && rm -rf {output} && cp -r {params.work} {output}) > {log} 2>&1"


rule pretrain_tissue:
    input:
        tokens="results/{tissue}/tokens",
        pretrained="results/pretrain/model",
    output:
        directory("results/{tissue}/pretrained"),
    params:
        script=f"{workflow.basedir}/scripts/pretrain.py",
        settings=tissue_pretrain_settings(),
    threads: 2
    resources:
        gpu=config["pretrain"].get("gpus", 0) and 1,
        mem_mb=8000,
        runtime=2 * 60,
    log:
        "logs/pretrain_tissue/{tissue}.log",
    benchmark:
        "results/benchmarks/pretrain_tissue/{tissue}.tsv"
    conda:
        "../../envs/model.yaml"
    shell:
        "(OMP_NUM_THREADS={threads} python {params.script} --stores {input.tokens} --out {output}"
        " --set init={input.pretrained} {params.settings}) > {log} 2>&1"


rule finetune:
    input:
        tokens="results/{tissue}/tokens",
        pretrained=tissue_pretrained,
    output:
        model=directory("results/{tissue}/model"),
        predictions="results/{tissue}/celler/predictions.tsv",
        embeddings="results/{tissue}/celler/embeddings.npz",
        metrics=report(
            "results/{tissue}/celler/metrics.tsv",
            caption="../report/celler_metrics.rst",
            category="2. Celler",
            subcategory="{tissue}",
            labels={"tissue": "{tissue}", "table": "Celler metrics"},
        ),
        per_class="results/{tissue}/celler/per_class.tsv",
    threads: 2
    resources:
        gpu=config["finetune"].get("gpus", 0),
        cpus_per_gpu=4 if config["finetune"].get("gpus", 0) else 0,
        mem_mb=8000,
        runtime=6 * 60,
    log:
        "logs/finetune/{tissue}.log",
    benchmark:
        "results/benchmarks/finetune/{tissue}.tsv"
    conda:
        "../../envs/model.yaml"
    script:
        "../../scripts/finetune.py"
