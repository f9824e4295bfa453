"""Prior handling after the main training run: post-hoc logit adjustment and class-balanced head retraining.

**Post-hoc logit adjustment** (Menon et al., ICLR 2021): predict argmax_j z_j + τ′·log N_j with τ′ chosen on
the validation cells. τ′ < 0 removes a prior that a plain-CE model learnt (τ′ = −1 is Menon's correction);
τ′ > 0 gives back part of the prior that balanced softmax or GInf took out (those over-predict tail classes
when the test set is as imbalanced as the training set). One training run instead of a grid of trainings.

**Class-balanced retraining of the last layer** (GCL's second stage, Li et al. 2022; the "decoupling" idea
of Kang et al. 2020): the features are frozen and the head's last layer is trained on class-balanced
batches, so that each class's weight vector sees as many cells as the head's.

Both use the validation cells of :mod:`celler.train.finetune`; the same cells also pick the epoch, so the
validation score of the chosen τ′ is optimistic (the test scores in the tables are not).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from celler.model.classifier import predict_logits
from celler.train.losses import build_loss

log = logging.getLogger(__name__)

#: τ′ candidates: from Menon's full correction of a CE model (−1) to giving back all of a removed prior (+1)
POSTHOC_GRID = (-1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Macro-F1 over the classes present in ``y_true`` (cells with a negative id are skipped).

    A class that is predicted but absent from these cells is not scored as F1 = 0 (its wrong calls still
    lower the recall of the true classes): with a small validation set many tail classes have no cell, and
    counting them would penalise exactly the tail-friendly models.
    """
    from sklearn.metrics import f1_score

    keep = y_true >= 0
    if not keep.any():
        return float("nan")
    return float(f1_score(y_true[keep], y_pred[keep], labels=np.unique(y_true[keep]), average="macro",
                          zero_division=0))


def choose_logit_adjustment(val_logits: torch.Tensor, val_targets: np.ndarray, class_counts,
                            grid=POSTHOC_GRID) -> tuple[float, list[dict]]:
    """(τ′, rows): the τ′ of ``grid`` with the best validation macro-F1 (a tie keeps the smallest |τ′|) and
    one row per candidate with its score (the record written to the model directory)."""
    log_n = torch.log(torch.as_tensor(class_counts, dtype=torch.float32).clamp(min=1))
    rows = [{"tau": float(t), "val_macro_f1": macro_f1(val_targets, (val_logits + t * log_n).argmax(1).numpy())}
            for t in grid]
    best = max(rows, key=lambda r: (r["val_macro_f1"], -abs(r["tau"])))
    return best["tau"], rows


def balanced_batches(labels: np.ndarray, steps: int, batch_size: int, seed: int) -> np.ndarray:
    """[steps, batch_size] row indices drawn with probability 1 / N_class (each class equally often)."""
    counts = np.bincount(labels)
    weights = 1.0 / counts[labels]
    rng = np.random.default_rng(seed)
    return rng.choice(len(labels), size=(steps, batch_size), p=weights / weights.sum())


def retrain_last_layer(head, hidden: torch.Tensor, labels: np.ndarray, loss_fn, *, steps: int,
                       batch_size: int, lr: float, seed: int) -> None:
    """Train ``head.last`` alone on frozen ``hidden`` features with class-balanced batches (in place)."""
    if steps <= 0 or len(labels) == 0:
        return
    params = list(head.out.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    target = torch.as_tensor(labels, dtype=torch.long)
    loss_fn.train()
    for rows in balanced_batches(labels, steps, batch_size, seed):
        rows = torch.as_tensor(rows)
        loss = loss_fn(head.last(hidden[rows]).float(), target[rows])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def gcl_second_stage(model, store, train_idx, val_idx, targets, counts, losses, params, cfg, *,
                     frozen_emb=None) -> float:
    """GCL's stage 2 (as published: margin 0.1, focal γ = 1): the heads' last layers retrained on
    class-balanced batches over the frozen features of the training cells; returns the validation macro-F1."""
    _, emb = predict_logits(model, store, train_idx, cfg,
                            embeddings=frozen_emb[train_idx] if frozen_emb is not None else None)
    device = next(model.parameters()).device
    for level, head in model.heads.items():
        t = targets[level][train_idx]
        keep = t >= 0
        with torch.no_grad():  # model is in eval mode: no dropout in the frozen features
            hidden = head.hidden(torch.as_tensor(emb[keep], device=device))
        stage2 = build_loss("gcl", counts[level], generator=losses[level].generator,
                            **{**params, "margin": 0.1, "gamma": 1.0}).to(device)
        retrain_last_layer(head, hidden, t[keep], stage2, steps=stage2.stage2_steps, batch_size=cfg.batch_size,
                           lr=cfg.lr, seed=cfg.seed)
    if not len(val_idx):
        return float("nan")
    val_logits, _ = predict_logits(model, store, val_idx, cfg,
                                   embeddings=frozen_emb[val_idx] if frozen_emb is not None else None)
    return macro_f1(targets["subclass"][val_idx], val_logits["subclass"].argmax(1).numpy())


def posthoc_adjustment(model, store, val_idx, targets, counts, cfg) -> dict:
    """Choose τ′ per level on the validation cells and set ``model.logit_bias`` = τ′·log N_j (celler.train.rebalance)."""
    val_logits, _ = predict_logits(model, store, val_idx, cfg)
    record = {}
    for level, z in val_logits.items():
        tau, grid = choose_logit_adjustment(z, targets[level][val_idx], counts[level])
        model.logit_bias[level] = tau * torch.log(torch.as_tensor(counts[level], dtype=torch.float32).clamp(min=1))
        record[level] = {"tau": tau, "grid": grid}
        log.info("post-hoc logit adjustment, %s level: tau' = %+.2f (validation macro-F1 %.4f at 0)", level, tau,
                 next(r["val_macro_f1"] for r in grid if r["tau"] == 0))
    return record


__all__ = ["POSTHOC_GRID", "balanced_batches", "choose_logit_adjustment", "gcl_second_stage", "macro_f1",
           "posthoc_adjustment", "retrain_last_layer"]
