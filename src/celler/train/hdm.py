"""Hard-difficulty mining (HDM, the Celler paper's Eqs. 8-9): which terms of a batch get trained again.

The paper says two things about its hard set, and both are here:

* **class** mode (Eq. 8 read as categories): per cell, keep the true class and the n wrong classes with the
  highest scores, and take −log p_y of the N-weighted softmax over that subset only. With C ≤ n + 1
  classes every class is kept, so the term repeats the GInf term.
* **sample** mode (the paper's prose: "repetitive training on samples that were misclassified with high
  confidence"; "from the C misclassified categories, the top n hard samples with the highest logit scores
  in each category are selected"): per batch, for each class c that some cell is wrongly predicted as, the
  n misclassified cells with the highest logit z_c; those cells' losses are added again (a re-weighting of
  confidently wrong cells, which acts at any class count).

Two readings of the equations (``literal``):

* ``literal=False`` (the workflow's earlier code): ranking on the prior-adjusted noisy scores
  a_j = z_inf_j + τ·log N_j and the noise in numerator and denominator alike (a plain softmax over a).
* ``literal=True``: Eq. 8 ranks on the raw logits ("highest logit scores") and Eq. 9 inflates only the
  numerator, p_y = N_y·exp(z_inf_y) / Σ_{l∈K} N_l·exp(z_l). The numerator's noise Δδ_y·ε_y is then an
  additive constant of the loss: its gradient is that of the noise-free N-weighted softmax (tested), so
  the literal form trains as balanced softmax over the kept set.

Functions take logits ``z`` [B, C], the noisy logits ``z_inf`` (``z`` itself without noise), targets [B] and
the prior ``log_prior`` = τ·log N_j (zeros for the released, prior-free form); each returns a per-cell loss
[B] (0 for cells outside the hard set in sample mode) so callers choose the reduction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

HDM_MODES = ("class", "sample")


def hard_classes(scores: torch.Tensor, targets: torch.Tensor, n: int) -> torch.Tensor:
    """[B, 1 + k] class ids per cell: the true class first, then the k = min(n, C − 1) highest-scoring wrong ones."""
    k = min(int(n), scores.shape[1] - 1)
    wrong = scores.scatter(1, targets[:, None], float("-inf"))  # the true class can't be its own negative
    return torch.cat([targets[:, None], wrong.topk(k, dim=1).indices], dim=1)


def hard_samples(z: torch.Tensor, targets: torch.Tensor, n: int) -> torch.Tensor:
    """[B] bool: per wrongly predicted class c (argmax of z), its n misclassified cells with the highest z_c."""
    pred = z.argmax(1)
    wrong = pred != targets
    hard = torch.zeros_like(wrong)
    for c in pred[wrong].unique():
        members = torch.nonzero(wrong & (pred == c)).flatten()
        top = z[members, c].topk(min(int(n), len(members))).indices
        hard[members[top]] = True
    return hard


def _nll(z: torch.Tensor, z_inf: torch.Tensor, targets: torch.Tensor, log_prior: torch.Tensor,
         kept: torch.Tensor | None, *, literal: bool) -> torch.Tensor:
    """Per-cell −log p_y of the N-weighted softmax over ``kept`` classes (all when None; true class first)."""
    prior = log_prior.expand_as(z)
    if literal:  # Eq. 9 as printed: only the target's own term carries the noise
        numerator = (z_inf + prior).gather(1, targets[:, None]).squeeze(1)
        denominator = z + prior if kept is None else (z + prior).gather(1, kept)
        return torch.logsumexp(denominator, 1) - numerator
    adjusted = z_inf + prior  # noise in numerator and denominator: a softmax over the adjusted noisy logits
    if kept is None:
        return F.cross_entropy(adjusted, targets, reduction="none")
    return -F.log_softmax(adjusted.gather(1, kept), 1)[:, 0]


def class_mode(z, z_inf, targets, log_prior, n: int, *, literal: bool) -> torch.Tensor:
    """Per-cell loss over the true class and its n hardest wrong classes (module docstring)."""
    scores = z if literal else z_inf + log_prior  # Eq. 8: raw logits; earlier code: adjusted noisy scores
    return _nll(z, z_inf, targets, log_prior, hard_classes(scores, targets, n), literal=literal)


def sample_mode(z, z_inf, targets, log_prior, n: int, *, literal: bool) -> torch.Tensor:
    """Per-cell loss (all classes) on the batch's hard samples, 0 elsewhere (module docstring)."""
    hard = hard_samples(z.detach(), targets, n)
    return _nll(z, z_inf, targets, log_prior, None, literal=literal) * hard


__all__ = ["HDM_MODES", "class_mode", "hard_classes", "hard_samples", "sample_mode"]
