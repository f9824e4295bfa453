# Sharded preprocessing (config `shards:`; off without it). A large dataset is tokenised as many bounded-memory
# jobs, one per input file or per `cells_per_shard` kept cells, binned with per-batch edges shared by all its
# shards, so that the shards' stores equal one unsharded store cell for cell. Pretraining reads the shards'
# stores together (ConcatStore), without concatenating them. Logic: src/celler/data/shards.py.
#
#   qc ──► shard_plan (checkpoint) ──► shard_sample × N ──► shard_edges ──► shard_tokenize × N ──► shard_stores
#
# results/{dataset}/shards/plan/plan.tsv          one row per shard: input file, row range, kept cells
# results/{dataset}/shards/plan/cells/{shard}.tsv.gz   the shard's rows of the QC cell table
# results/{dataset}/shards/bin_edges.json         per-batch edges shared by every shard (per_batch binning)
# results/{dataset}/shards/{shard}/tokens/        the shard's token store
# results/{dataset}/shards/stores.txt             the shards' stores, one a line (the dataset's default target)

SHARDED = sharded_datasets()
_unknown = sorted(set(SHARDED) - set(DATASETS))
if _unknown:
    sys.exit(f"celler: error: config: shards.datasets: unknown dataset(s) {', '.join(_unknown)}")

# a sharded dataset's default target is its shards' stores, not one unsharded store
for _name in SHARDED:
    if f"results/{_name}/tokens" in FINAL_OUTPUTS:
        FINAL_OUTPUTS.remove(f"results/{_name}/tokens")
    FINAL_OUTPUTS.append(f"results/{_name}/shards/stores.txt")


wildcard_constraints:
    shard=r"\d+",


checkpoint shard_plan:
    input:
        cells="results/{dataset}/qc/cells.tsv.gz",
    output:
        directory("results/{dataset}/shards/plan"),
    params:
        config=shard_config,
        per_shard=lambda wc: (
            f"--cells-per-shard {config['shards']['cells_per_shard']}"
            if (config.get("shards") or {}).get("cells_per_shard")
            else ""
        ),
    log:
        "logs/shard_plan/{dataset}.log",
    resources:
        mem_mb=mem_mb_per_input(2000, 500),
    conda:
        "../../envs/data.yaml"
    shell:
        "python -m celler.data.shards plan --config {params.config:q} --dataset {wildcards.dataset}"
        " --cells {input.cells} {params.per_shard} --out {output} > {log} 2>&1"


rule shard_sample:
    input:
        plan="results/{dataset}/shards/plan",
        genes="results/{dataset}/qc/genes.tsv.gz",
        mapping="results/{dataset}/vocab/mapping.tsv.gz",
        vocab="results/{dataset}/vocab/vocab.json",
    output:
        temp("results/{dataset}/shards/{shard}/values.npz"),
    params:
        config=shard_config,
        flags=shard_read_flags(),
    log:
        "logs/shard_sample/{dataset}-{shard}.log",
    resources:
        mem_mb=lambda wc, attempt: 3000 * attempt,
    conda:
        "../../envs/data.yaml"
    shell:
        "python -m celler.data.shards sample --config {params.config:q} --dataset {wildcards.dataset}"
        " --plan {input.plan} --shard {wildcards.shard} --genes {input.genes} --mapping {input.mapping}"
        " --vocab {input.vocab} {params.flags} --out {output} > {log} 2>&1"


rule shard_edges:
    input:
        samples=shard_samples,
    output:
        "results/{dataset}/shards/bin_edges.json",
    params:
        n_bins=config["tokenize"]["n_bins"],
    log:
        "logs/shard_edges/{dataset}.log",
    resources:
        mem_mb=lambda wc, attempt: 4000 * attempt,
    conda:
        "../../envs/data.yaml"
    shell:
        "python -m celler.data.shards edges --samples {input.samples} --n-bins {params.n_bins} --out {output} > {log} 2>&1"


rule shard_tokenize:
    input:
        plan="results/{dataset}/shards/plan",
        genes="results/{dataset}/qc/genes.tsv.gz",
        mapping="results/{dataset}/vocab/mapping.tsv.gz",
        vocab="results/{dataset}/vocab/vocab.json",
        edges=shard_edges,
    output:
        directory("results/{dataset}/shards/{shard}/tokens"),
    params:
        config=shard_config,
        flags=shard_tokenize_flags(),
        edges=lambda wc, input: f"--edges {input.edges}" if input.edges else "",
    log:
        "logs/shard_tokenize/{dataset}-{shard}.log",
    resources:
        mem_mb=lambda wc, attempt: 3000 * attempt,
    conda:
        "../../envs/data.yaml"
    shell:
        "python -m celler.data.shards tokenize --config {params.config:q} --dataset {wildcards.dataset}"
        " --plan {input.plan} --shard {wildcards.shard} --genes {input.genes} --mapping {input.mapping}"
        " --vocab {input.vocab} {params.flags} {params.edges} --out {output} > {log} 2>&1"


rule shard_stores:
    input:
        stores=lambda wc: token_stores(wc.dataset),
    output:
        "results/{dataset}/shards/stores.txt",
    log:
        "logs/shard_stores/{dataset}.log",
    conda:
        "../../envs/data.yaml"
    shell:
        "printf '%s\\n' {input.stores} > {output} 2> {log}"
