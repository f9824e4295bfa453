"""Classification losses for long-tailed cell-type labels: CE, focal, balanced softmax, GInf and HDM.

Notation (Celler paper, issue 4): z = logits [B, C], y = targets [B], N_j = training cells of class j,
Δδ_j = log N_max − log N_j (0 for the head class, largest for the rarest), ε ~ N(μ, σ²) per cell and class.
The "N-weighted softmax" p_j = N_j^τ·exp(z_j) / Σ_l N_l^τ·exp(z_l) is softmax(z + τ·log N), so every
prior-weighted loss below is a cross-entropy on shifted logits (stable, and exact for the σ = 0 identities).

Noise is drawn only in training mode (``module.train()``); in ``.eval()`` mode GInf is its noise-free limit.
It comes from the ``generator`` given (or torch's global RNG), so the same seed gives the same loss.
Losses are computed in float32 whatever the logits' dtype (bf16 autocast) and return the batch mean.
Prediction (argmax of the raw logits, no prior, no noise) is not done here.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from celler.errors import CellerError

LOSS_NAMES = ("ce", "focal", "balanced_softmax", "ginf", "ginf+hdm")
GINF_FORMS = ("paper", "released", "gcl")


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


def hdm_loss(adjusted: torch.Tensor, targets: torch.Tensor, n: int) -> torch.Tensor:
    """Hard-difficulty mining on prior-adjusted logits a_j = z_j + τ·log N_j.

    Per cell, keep the true class and the n wrong classes with the highest a_j (the terms that dominate the
    N-weighted denominator), and take −log p_y of the softmax over that subset only. n >= C − 1 keeps every
    class, so the loss equals the full N-weighted softmax.
    """
    k = min(int(n), adjusted.shape[1] - 1)
    wrong = adjusted.scatter(1, targets[:, None], float("-inf"))  # the true class can't be its own negative
    hard = wrong.topk(k, dim=1).indices  # the n highest-scoring wrong classes
    kept = torch.cat([targets[:, None], hard], dim=1)  # true class first
    subset = adjusted.gather(1, kept)
    return -F.log_softmax(subset, dim=1)[:, 0].mean()  # −log p_y over the kept set


class HardDifficultyMining(nn.Module):
    """HDM alone on the given logits (no noise): see :func:`hdm_loss`; the prior weights are N_j^τ."""

    def __init__(self, class_counts: Sequence[int], n: int = 20, tau: float = 1.0) -> None:
        super().__init__()
        if int(n) < 1 or not tau >= 0:
            msg = f"HDM needs `hdm_n` >= 1 and `tau` >= 0, got {n!r} and {tau!r}"
            raise LossConfigError(msg)
        self.register_buffer("log_n", _log_counts(class_counts))
        self.n, self.tau = int(n), float(tau)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        _check(logits, targets, self.log_n.numel())
        return hdm_loss(logits.float() + self.tau * self.log_n, targets, self.n)


class GInf(nn.Module):
    """Gaussian-influenced logits: tail classes get noise scaled by Δδ_j, so their margins are learnt wider.

    Forms (``form``):

    * ``"paper"``: z_inf = z + Δδ·ε; p_j ∝ N_j^τ·exp(z_inf_j); loss −log p_y. σ = μ = 0 is balanced softmax.
    * ``"released"``: the authors' released code: plain CE on z_inf, no N_j weights (τ unused).
    * ``"gcl"``: Gaussian clouded logits (Li et al., CVPR 2022): z_inf = z − (Δδ / max Δδ)·min(|ε|, 1), then
      the same N_j^τ-weighted softmax as the paper form. The cloud is *subtracted*, as in GCL: lowering a
      tail class's logit asks the model for a larger tail margin when it is the target and pushes it down less
      when it is a competitor. With all N_j equal (max Δδ = 0) no noise is added.
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
        delta = log_n.max() - log_n  # Δδ_j = log N_max − log N_j
        self.register_buffer("log_n", log_n)
        self.register_buffer("delta", delta)
        top = delta.max()  # GCL's per-class cloud scale Δδ / max Δδ (all 0 when every N_j is equal)
        self.register_buffer("gcl_scale", delta / top if top > 0 else torch.zeros_like(delta))
        self.form, self.mu, self.sigma, self.tau = form, float(mu), float(sigma), float(tau)
        self.generator = generator

    def extra_repr(self) -> str:
        return f"form={self.form!r}, mu={self.mu}, sigma={self.sigma}, tau={self.tau}"

    def _epsilon(self, z: torch.Tensor) -> torch.Tensor:
        """ε ~ N(μ, σ²), one draw per cell and class (no draw at all when σ = 0)."""
        if self.sigma == 0:
            return torch.full_like(z, self.mu)
        g = self.generator
        std = torch.randn(z.shape, generator=g, device=z.device if g is None else g.device)
        return (self.mu + self.sigma * std).to(z)

    def noisy_logits(self, z: torch.Tensor) -> torch.Tensor:
        """z_inf in training mode, z itself in eval mode."""
        if not self.training:
            return z
        eps = self._epsilon(z)
        if self.form == "gcl":
            return z - self.gcl_scale * eps.abs().clamp(max=1.0)  # z − (Δδ / max Δδ)·clip(|ε|, 0, 1)
        return z + self.delta * eps  # z_inf = z + Δδ·ε

    def adjusted_logits(self, z_inf: torch.Tensor) -> torch.Tensor:
        """Logits whose plain softmax is the loss's p: z_inf + τ·log N_j, or z_inf for the released form."""
        return z_inf if self.form == "released" else z_inf + self.tau * self.log_n

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        _check(logits, targets, self.log_n.numel())
        z_inf = self.noisy_logits(logits.float())
        return F.cross_entropy(self.adjusted_logits(z_inf), targets)  # −log p_y


class GInfHDM(GInf):
    """GInf + λ·HDM. Both terms see the same noisy logits z_inf (one ε draw per step), so HDM mines the
    negatives that are hard under the very perturbation GInf trains on. HDM always uses the N_j^τ-weighted
    softmax, also with the released GInf form (there τ affects only the HDM term).
    """

    def __init__(
        self, class_counts: Sequence[int], *, hdm_n: int = 20, hdm_lambda: float = 1.0, **ginf: object
    ) -> None:
        super().__init__(class_counts, **ginf)  # type: ignore[arg-type]
        if int(hdm_n) < 1 or not hdm_lambda >= 0:
            msg = f"need `hdm_n` >= 1 and `hdm_lambda` >= 0, got {hdm_n!r} and {hdm_lambda!r}"
            raise LossConfigError(msg)
        self.hdm_n, self.hdm_lambda = int(hdm_n), float(hdm_lambda)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, hdm_n={self.hdm_n}, hdm_lambda={self.hdm_lambda}"

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        _check(logits, targets, self.log_n.numel())
        z_inf = self.noisy_logits(logits.float())
        ginf = F.cross_entropy(self.adjusted_logits(z_inf), targets)
        hdm = hdm_loss(z_inf + self.tau * self.log_n, targets, self.hdm_n)
        return ginf + self.hdm_lambda * hdm  # total = GInf + λ·HDM


_DEFAULTS: dict[str, dict[str, object]] = {
    "ce": {},
    "focal": {"gamma": 2.0, "alpha": None},
    "balanced_softmax": {"tau": 1.0},
    "ginf": {"form": "paper", "mu": 0.0, "sigma": 1 / 3, "tau": 1.0},
    "ginf+hdm": {"form": "paper", "mu": 0.0, "sigma": 1 / 3, "tau": 1.0, "hdm_n": 20, "hdm_lambda": 1.0},
}


def build_loss(
    name: str, class_counts: Sequence[int], *, generator: torch.Generator | None = None, **params: object
) -> nn.Module:
    """The loss named in config, e.g. ``build_loss("ginf", counts, form="gcl", sigma=0.5)``.

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
    return GInfHDM(class_counts, generator=generator, **kw)
