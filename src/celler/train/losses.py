"""Classification losses for long-tailed cell-type labels: CE, focal, balanced softmax, GInf, HDM and GCL.

Notation (Celler paper, issue 4): z = logits [B, C], y = targets [B], N_j = training cells of class j,
Δδ_j = log N_max − log N_j (0 for the head class, largest for the rarest), ε ~ N(μ, σ²) per cell and class.
The "N-weighted softmax" p_j = N_j^τ·exp(z_j) / Σ_l N_l^τ·exp(z_l) is softmax(z + τ·log N), so every
prior-weighted loss below is a cross-entropy on shifted logits (stable, and exact for the σ = 0 identities).

Noise is drawn only in training mode (``module.train()``); in ``.eval()`` mode GInf is its noise-free limit.
It comes from the ``generator`` given (or torch's global RNG), so the same seed gives the same loss.
Losses are computed in float32 whatever the logits' dtype (bf16 autocast) and return the batch mean.
Prediction (argmax of the logits, no noise; plus τ′·log N_j when post-hoc adjustment is on, see
:mod:`celler.train.rebalance`) is not done here; HDM's hard sets are :mod:`celler.train.hdm`'s.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from celler.errors import CellerError
from celler.train import hdm

LOSS_NAMES = ("ce", "focal", "balanced_softmax", "ginf", "ginf+hdm", "gcl")
GINF_FORMS = ("paper", "released")


class LossConfigError(CellerError, ValueError):
    """A bad loss name, parameter or class-count vector (a ValueError that entry points print as one line)."""


def _log_counts(class_counts: Sequence[int]) -> torch.Tensor:
    """log N_j; a class with 0 training cells counts as 1 cell (the rarest possible), with a warning.

    Clamping rather than raising keeps a label map that lists a class absent from this training split usable:
    the class is never a target, so it only enters the denominators, with the smallest prior.
    """
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    if counts.ndim != 1 or counts.numel() < 2 or not torch.isfinite(counts).all() or (counts < 0).any():
        msg = f"`class_counts` must list >= 2 finite non-negative cell counts, got {list(class_counts)!r}"
        raise LossConfigError(msg)
    if (counts == 0).any():
        absent = torch.nonzero(counts == 0).flatten().tolist()
        warnings.warn(f"classes {absent} have no training cells; counting them as 1 cell", stacklevel=3)
    return torch.log(counts.clamp(min=1.0)).float()


def _check(logits: torch.Tensor, targets: torch.Tensor, n_classes: int | None = None) -> None:
    if logits.ndim != 2 or targets.shape != logits.shape[:1]:
        msg = f"expected logits [B, C] and targets [B], got {tuple(logits.shape)} and {tuple(targets.shape)}"
        raise ValueError(msg)
    if n_classes is not None and logits.shape[1] != n_classes:
        msg = f"logits have {logits.shape[1]} classes but `class_counts` has {n_classes}"
        raise ValueError(msg)


class CrossEntropy(nn.Module):
    """Plain cross-entropy, the baseline every long-tail loss is compared with."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        _check(logits, targets)
        return F.cross_entropy(logits.float(), targets)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): −α_t·(1 − p_t)^γ·log p_t, down-weights cells that are already easy.

    ``alpha`` is None (no weight), one float for every class, or one weight per class.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | Sequence[float] | None = None) -> None:
        super().__init__()
        if gamma < 0:
            msg = f"focal `gamma` must be >= 0, got {gamma!r}"
            raise LossConfigError(msg)
        alpha_t = None if alpha is None else torch.as_tensor(alpha, dtype=torch.float32)
        if alpha_t is not None and (alpha_t.ndim > 1 or (alpha_t < 0).any()):
            msg = f"focal `alpha` must be None, a weight >= 0 or one weight >= 0 per class, got {alpha!r}"
            raise LossConfigError(msg)
        self.gamma = float(gamma)
        self.register_buffer("alpha", alpha_t)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        _check(logits, targets, self.alpha.numel() if self.alpha is not None and self.alpha.ndim else None)
        logp_t = F.log_softmax(logits.float(), dim=1).gather(1, targets[:, None]).squeeze(1)  # log p_t
        loss = -((1.0 - logp_t.exp()) ** self.gamma) * logp_t  # −(1 − p_t)^γ·log p_t
        if self.alpha is not None:
            loss = loss * (self.alpha[targets] if self.alpha.ndim else self.alpha)  # α_t
        return loss.mean()


class BalancedSoftmax(nn.Module):
    """Balanced softmax / logit adjustment: CE on z + τ·log N_j, so the prior is learnt by the loss, not z."""

    def __init__(self, class_counts: Sequence[int], tau: float = 1.0) -> None:
        super().__init__()
        if not tau >= 0:
            msg = f"balanced softmax `tau` must be >= 0, got {tau!r}"
            raise LossConfigError(msg)
        self.register_buffer("log_n", _log_counts(class_counts))
        self.tau = float(tau)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        _check(logits, targets, self.log_n.numel())
        return F.cross_entropy(logits.float() + self.tau * self.log_n, targets)


class HardDifficultyMining(nn.Module):
    """HDM alone on the given logits (no noise): :func:`celler.train.hdm.class_mode`; the prior weights are N_j^τ."""

    def __init__(self, class_counts: Sequence[int], n: int = 20, tau: float = 1.0) -> None:
        super().__init__()
        if int(n) < 1 or not tau >= 0:
            msg = f"HDM needs `hdm_n` >= 1 and `tau` >= 0, got {n!r} and {tau!r}"
            raise LossConfigError(msg)
        self.register_buffer("log_n", _log_counts(class_counts))
        self.n, self.tau = int(n), float(tau)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        _check(logits, targets, self.log_n.numel())
        z = logits.float()
        return hdm.class_mode(z, z, targets, self.tau * self.log_n, self.n, literal=False).mean()


class GInf(nn.Module):
    """Gaussian-influenced logits: tail classes get noise scaled by Δδ_j, so their margins are learnt wider.

    Forms (``form``):

    * ``"paper"``: z_inf = z + Δδ·ε; p_j ∝ N_j^τ·exp(z_inf_j); loss −log p_y. σ = μ = 0 is balanced softmax.
    * ``"released"``: the authors' released code: plain CE on z_inf, no N_j weights (τ unused).

    What the noise does in expectation (README, design): every class's noise, the target's included, sits
    inside the log-sum-exp, so it raises the weight of noisy (tail) classes in the denominator on average and
    undoes part of the log N_j correction, more the rarer the class and the larger σ.
    """

    def __init__(
        self,
        class_counts: Sequence[int],
        form: str = "paper",
        mu: float = 0.0,
        sigma: float = 1 / 3,
        tau: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if form not in GINF_FORMS:
            msg = f"GInf `form` must be one of {GINF_FORMS}, got {form!r}"
            raise LossConfigError(msg)
        if not (sigma >= 0 and tau >= 0 and abs(mu) < float("inf")):
            msg = f"GInf needs `sigma` >= 0, `tau` >= 0 and a finite `mu`, got {sigma!r}, {tau!r}, {mu!r}"
            raise LossConfigError(msg)
        log_n = _log_counts(class_counts)
        self.register_buffer("log_n", log_n)
        self.register_buffer("delta", log_n.max() - log_n)  # Δδ_j = log N_max − log N_j
        self.form, self.mu, self.sigma, self.tau = form, float(mu), float(sigma), float(tau)
        self.generator = generator

    def extra_repr(self) -> str:
        return f"form={self.form!r}, mu={self.mu}, sigma={self.sigma}, tau={self.tau}"

    @property
    def log_prior(self) -> torch.Tensor:
        """τ·log N_j, the N-weighting of the softmax (zero for the released form, which has none)."""
        return torch.zeros_like(self.log_n) if self.form == "released" else self.tau * self.log_n

    def noisy_logits(self, z: torch.Tensor) -> torch.Tensor:
        """z_inf = z + Δδ·ε with ε ~ N(μ, σ²) per cell and class, in training mode; z itself in eval mode."""
        if not self.training:
            return z
        if self.sigma == 0:
            return z + self.delta * self.mu
        g = self.generator
        std = torch.randn(z.shape, generator=g, device=z.device if g is None else g.device).to(z)
        return z + self.delta * (self.mu + self.sigma * std)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        _check(logits, targets, self.log_n.numel())
        z_inf = self.noisy_logits(logits.float())
        return F.cross_entropy(z_inf + self.log_prior, targets)  # −log p_y


class GInfHDM(GInf):
    """GInf + λ·HDM (:mod:`celler.train.hdm`). Both terms see the same noisy logits z_inf (one ε draw per step) and
    the same prior as the GInf form (none for ``released``).

    ``hdm_mode``: ``class`` (the true class and the n hardest wrong classes per cell) or ``sample`` (per batch
    and wrongly predicted class, the n most confidently misclassified cells; their loss is added again, summed
    and divided by the batch size). ``hdm_literal``: Eqs. 8-9 as printed (ranking on raw logits, noise in the
    numerator only) instead of the earlier code's reading.
    """

    def __init__(
        self, class_counts: Sequence[int], *, hdm_n: int = 20, hdm_lambda: float = 1.0, hdm_mode: str = "sample",
        hdm_literal: bool = False, **ginf: object,
    ) -> None:
        super().__init__(class_counts, **ginf)  # type: ignore[arg-type]
        if int(hdm_n) < 1 or not hdm_lambda >= 0:
            msg = f"need `hdm_n` >= 1 and `hdm_lambda` >= 0, got {hdm_n!r} and {hdm_lambda!r}"
            raise LossConfigError(msg)
        if hdm_mode not in hdm.HDM_MODES:
            msg = f"`hdm_mode` must be one of {hdm.HDM_MODES}, got {hdm_mode!r}"
            raise LossConfigError(msg)
        self.hdm_n, self.hdm_lambda, self.hdm_mode = int(hdm_n), float(hdm_lambda), hdm_mode
        self.hdm_literal = bool(hdm_literal)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, hdm_n={self.hdm_n}, hdm_lambda={self.hdm_lambda}, "
                f"hdm_mode={self.hdm_mode!r}, hdm_literal={self.hdm_literal}")

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        _check(logits, targets, self.log_n.numel())
        z = logits.float()
        z_inf = self.noisy_logits(z)
        prior = self.log_prior
        ginf = F.cross_entropy(z_inf + prior, targets)
        mine = hdm.class_mode if self.hdm_mode == "class" else hdm.sample_mode
        term = mine(z, z_inf, targets, prior, self.hdm_n, literal=self.hdm_literal).mean()
        return ginf + self.hdm_lambda * term  # total = GInf + λ·HDM


class GaussianCloudedLogits(nn.Module):
    """GCL (Li et al., CVPR 2022) on a cosine head: logits are ``scale``·cos θ_j (the head is built with the
    same scale). In training, a class's cosine is lowered by a one-sided cloud,
    cos_j − ``cloud``·|ε_j|·Δδ_j / max Δδ with ε ~ N(0, σ²) clipped to [−1, 1], the target's cosine also by
    ``margin``; then (focal, γ = ``gamma``) cross-entropy on scale × cosines. No prior term: GCL's
    re-balancing is its second stage, a class-balanced retraining of the head's last layer
    (:func:`celler.train.finetune` with ``loss: gcl``; stage-2 settings as published: margin 0.1, focal γ = 1).
    """

    def __init__(self, class_counts: Sequence[int], *, scale: float = 30.0, cloud: float = 0.5,
                 sigma: float = 1 / 3, margin: float = 0.0, gamma: float = 0.0, stage2_steps: int = 200,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if not (scale > 0 and cloud >= 0 and sigma >= 0 and margin >= 0 and gamma >= 0 and int(stage2_steps) >= 0):
            msg = (f"GCL needs `scale` > 0 and `cloud`, `sigma`, `margin`, `gamma`, `stage2_steps` >= 0, got "
                   f"{scale!r}, {cloud!r}, {sigma!r}, {margin!r}, {gamma!r}, {stage2_steps!r}")
            raise LossConfigError(msg)
        log_n = _log_counts(class_counts)
        delta = log_n.max() - log_n
        self.register_buffer("cloud_scale", delta / delta.max() if delta.max() > 0 else torch.zeros_like(delta))
        self.scale, self.cloud, self.sigma, self.margin, self.gamma = (float(scale), float(cloud), float(sigma),
                                                                       float(margin), float(gamma))
        self.stage2_steps = int(stage2_steps)
        self.generator = generator

    def extra_repr(self) -> str:
        return (f"scale={self.scale}, cloud={self.cloud}, sigma={self.sigma}, margin={self.margin}, "
                f"gamma={self.gamma}")

    def clouded(self, cosine: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The perturbed cosines of training mode (the cosines themselves in eval mode)."""
        if not self.training:
            return cosine
        g = self.generator
        eps = torch.randn(cosine.shape, generator=g, device=cosine.device if g is None else g.device).to(cosine)
        out = cosine - self.cloud * (self.sigma * eps).clamp(-1, 1).abs() * self.cloud_scale
        return out - self.margin * F.one_hot(targets, cosine.shape[1]).to(cosine)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        _check(logits, targets, self.cloud_scale.numel())
        z = self.scale * self.clouded(logits.float() / self.scale, targets)
        logp_t = -F.cross_entropy(z, targets, reduction="none")
        return (-((1.0 - logp_t.exp()) ** self.gamma) * logp_t).mean()


_DEFAULTS: dict[str, dict[str, object]] = {
    "ce": {},
    "focal": {"gamma": 2.0, "alpha": None},
    "balanced_softmax": {"tau": 1.0},
    "ginf": {"form": "paper", "mu": 0.0, "sigma": 1 / 3, "tau": 1.0},
    "ginf+hdm": {"form": "paper", "mu": 0.0, "sigma": 1 / 3, "tau": 1.0, "hdm_n": 20, "hdm_lambda": 1.0,
                 "hdm_mode": "sample", "hdm_literal": False},
    "gcl": {"scale": 30.0, "cloud": 0.5, "sigma": 1 / 3, "margin": 0.0, "gamma": 0.0, "stage2_steps": 200},
}


def build_loss(
    name: str, class_counts: Sequence[int], *, generator: torch.Generator | None = None, **params: object
) -> nn.Module:
    """The loss named in config, e.g. ``build_loss("ginf", counts, form="released", sigma=0.5)``.

    Parameters set to None take their defaults (a YAML ``null``). An unknown name or a parameter the loss
    doesn't take raises :class:`LossConfigError` (a ValueError) listing what is allowed.
    """
    if name not in _DEFAULTS:
        msg = f"unknown loss {name!r}; allowed: {', '.join(LOSS_NAMES)}"
        raise LossConfigError(msg)
    allowed = _DEFAULTS[name]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        msg = f"loss {name!r} takes no parameter {unknown}; allowed: {sorted(allowed) or 'none'}"
        raise LossConfigError(msg)
    kw = {**allowed, **{k: v for k, v in params.items() if v is not None}}
    if name in ("ce", "focal"):
        _log_counts(class_counts)  # unused by these two, but a bad count vector is still a config error
    if name == "ce":
        return CrossEntropy()
    if name == "focal":
        return FocalLoss(**kw)  # type: ignore[arg-type]
    if name == "balanced_softmax":
        return BalancedSoftmax(class_counts, **kw)  # type: ignore[arg-type]
    if name == "ginf":
        return GInf(class_counts, generator=generator, **kw)  # type: ignore[arg-type]
    if name == "gcl":
        return GaussianCloudedLogits(class_counts, generator=generator, **kw)  # type: ignore[arg-type]
    return GInfHDM(class_counts, generator=generator, **kw)
