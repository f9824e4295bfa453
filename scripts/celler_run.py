"""Snakemake script: one Celler fine-tuning run (a loss variant, a seed) on a tissue's shared split."""
import torch

from celler.errors import run_guarded
from celler.evaluate.experiments import celler_run_stage
from celler.stages import finetune_config

sm = snakemake  # noqa: F821 (injected by Snakemake)
torch.set_num_threads(sm.threads)  # no more threads than the job was given: oversubscription is ~20x slower
variant = sm.wildcards.variant
section = dict(sm.config["finetune"])
if variant != "default":  # an ablation loss: the ablation's finetune settings, then the loss itself
    ablation = sm.config.get("ablation", {})
    section.update(ablation.get("finetune", {}))
    section.update({"loss_params": {}, **ablation["losses"][variant]})
cfg, scgpt_dir = finetune_config(section)
run_guarded(
    lambda: celler_run_stage(sm.input.tokens, cfg=cfg, pretrained=scgpt_dir or (sm.input.pretrained or None),
                             seed=int(sm.wildcards.seed), train_cells_path=sm.input.train_cells, out=sm.output[0],
                             transductive=bool(sm.config.get("pretrain", {}).get("transductive", False))),
    log_path=sm.log[0],
)
