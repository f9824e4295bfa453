"""Snakemake script: fine-tune one tissue, predict its test cells, score them (celler.stages.finetune_stage)."""
import torch

from celler.errors import run_guarded
from celler.stages import finetune_config, finetune_stage

sm = snakemake  # noqa: F821 (injected by Snakemake)
torch.set_num_threads(sm.threads)  # no more threads than the job was given: oversubscription is ~20x slower
cfg, scgpt_dir = finetune_config(sm.config["finetune"])
pretrained = scgpt_dir or (sm.input.pretrained or None)
run_guarded(
    lambda: finetune_stage(sm.input.tokens, cfg=cfg, pretrained=pretrained, model_out=sm.output.model,
                           predictions_out=sm.output.predictions, embeddings_out=sm.output.embeddings,
                           metrics_out=sm.output.metrics, per_class_out=sm.output.per_class,
                           transductive=bool(sm.config.get("pretrain", {}).get("transductive", False))),
    log_path=sm.log[0],
)
