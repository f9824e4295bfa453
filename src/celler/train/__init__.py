"""Train: pretraining on unlabelled cells and fine-tuning per tissue.

:mod:`~celler.train.pretrain` (the pretraining loop, CPU to multi-GPU) with :mod:`~celler.train.checkpoint`
(distributed setup, SIGTERM, resumable checkpoints, the model directory it writes);
:mod:`~celler.train.finetune` (the classifier's training loop, model selection, calibration) with the long-tail
losses (:mod:`~celler.train.losses`, :mod:`~celler.train.hdm`) and the prior corrections after training
(:mod:`~celler.train.rebalance`).
"""

__all__ = ["checkpoint", "finetune", "hdm", "losses", "pretrain", "rebalance"]
