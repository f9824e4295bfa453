"""Confidence calibration on the validation cells: a temperature, a low-confidence threshold, and their trade-off.

Fine-tuning calls :func:`calibrate` on the held-out validation cells once training is done and saves the
result as ``model_dir/calibration.json``; annotation (:mod:`celler.annotate`) reads it back, scores each cell
with ``max softmax(logits / temperature)`` and flags a call below its class's threshold ``low_confidence``
(it keeps its label). Which cells are ``Unassigned`` is the novelty score's (:mod:`celler.model.novelty`):
a rare type is less confident by construction, so a confidence cut took rare cells first (the thresholds
below, until the novelty score replaced them as the Unassigned rule; the figures in brackets are from then).

**Temperature.** One scalar ``T`` minimising the negative log-likelihood of the validation labels under
``softmax(logits / T)`` (Guo et al. 2017). It rescales confidence without changing any argmax. ``T`` is
searched on a log scale in ``[0.05, 20]``. A validation set the model gets entirely right has no optimum (sharper
is always better there, down to the bound): it is no evidence for rescaling, so ``T`` stays 1. Sharpening to
the bound made every cell's confidence about 1 and left no room for a threshold: pancreas trained without its
ductal cells, seeds 0-2, left 0-4% of the never-seen ductal cells ``Unassigned`` at T = 0.05 and 23-79% at T = 1
(0-0.2% of the seen types'). The threshold below does not rely on the temperature alone either.

**Threshold** (the rule):

1. ``t_accuracy``: the lowest confidence cut at which the validation cells kept (confidence >= cut) are at
   least ``TARGET_ACCURACY`` (95%) right: lower cuts keep more cells but the kept accuracy falls below the
   target. (If no cut reaches it, the cut with the best kept accuracy over at least ``MIN_CELLS`` cells.)
2. ``t_known``: the ``KNOWN_QUANTILE`` (10%) quantile of the confidence of the correctly predicted
   validation cells: a cell of a *known* type that the model gets right is left ``Unassigned`` only about
   10% of the time (a split-conformal bound), while a cell less confident than 90% of those is unusual
   enough to be left unassigned. This is the part aimed at types absent from training, which validation
   cells (all of known types) cannot show directly. (Pancreas, trained on Wang without its ductal cells, 10
   trainings: a 5% quantile left a median 51% of the unseen ductal cells Unassigned, 10% raises that to
   78%, for 2 points less labelled accuracy on the known types of the Xin study.)
3. ``threshold = clip(max(t_accuracy, t_known), MIN_THRESHOLD, MAX_THRESHOLD)``.
4. **Per class** (``class_thresholds``): a class the model calls with less confidence — typically a rare
   one — would lose most of its right calls to one global cut (pancreas: 34 of 49 delta cells of Xin
   ``Unassigned``). So each class c with right validation calls gets
   ``t_c = clip(min(threshold, q_c), MIN_THRESHOLD, MAX_THRESHOLD)``, where q_c is the ``KNOWN_QUANTILE``
   quantile (``lower``: the smallest one below 10 calls) of the confidence of the right calls *of that
   class* — class-conditional (Mondrian) conformal: about 90% of each known class's right calls are kept,
   not 90% of the head's. A class is never held to a stricter cut than the global one; a class without
   right validation calls uses the global threshold.

With fewer than ``MIN_CELLS`` validation cells the quantiles mean little and the documented default
``DEFAULT_THRESHOLD`` is used (the value annotation also falls back to without a ``calibration.json``).
``curve`` lists coverage and accuracy of the validation cells at a grid of thresholds, so the trade-off can
be read and another cut chosen with ``celler annotate --threshold``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

TARGET_ACCURACY = 0.95  # accuracy wanted among the cells that get a label
KNOWN_QUANTILE = 0.10  # share of right validation calls allowed below the threshold
DEFAULT_THRESHOLD = 0.5  # used without calibration.json, or with too few validation cells
MIN_THRESHOLD = 0.3  # below this a "confident" call is hardly better than a coin flip between two types
MAX_THRESHOLD = 0.99
MIN_CELLS = 20  # validation cells needed to estimate the threshold
T_BOUNDS = (0.05, 20.0)
CURVE_GRID = [round(x, 2) for x in np.arange(0.0, 1.0, 0.05)] + [0.96, 0.97, 0.98, 0.99]


def _nll(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> float:
    return float(torch.nn.functional.cross_entropy(logits / temperature, targets))


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The temperature minimising validation NLL: a coarse log grid, then golden-section refinement; 1 when
    every cell is right (no optimum there: sharper is always better, down to the bound)."""
    if bool((logits.argmax(1) == targets).all()):
        return 1.0
    lo, hi = (math.log(b) for b in T_BOUNDS)
    grid = np.linspace(lo, hi, 61)
    losses = [_nll(logits, targets, math.exp(g)) for g in grid]
    k = int(np.argmin(losses))
    a, b = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    phi = (math.sqrt(5) - 1) / 2
    for _ in range(40):  # NLL is unimodal in log T around the grid minimum
        c, d = b - phi * (b - a), a + phi * (b - a)
        if _nll(logits, targets, math.exp(c)) < _nll(logits, targets, math.exp(d)):
            b = d
        else:
            a = c
    best = (a + b) / 2
    better = _nll(logits, targets, math.exp(best)) <= losses[k]
    return float(math.exp(best if better else grid[k]))


def coverage_curve(confidence: np.ndarray, correct: np.ndarray, thresholds) -> list[dict]:
    """Per threshold: share of cells kept (confidence >= threshold) and accuracy among them."""
    rows = []
    for t in thresholds:
        kept = confidence >= t
        acc = float(correct[kept].mean()) if kept.any() else float("nan")
        rows.append({"threshold": float(t), "coverage": float(kept.mean()) if len(kept) else 0.0,
                     "accuracy": None if math.isnan(acc) else acc})
    return rows


def choose_threshold(confidence: np.ndarray, correct: np.ndarray) -> tuple[float, dict]:
    """The rejection threshold of the module docstring, and its parts (for the record)."""
    if len(confidence) < MIN_CELLS or not correct.any():
        return DEFAULT_THRESHOLD, {"rule": f"default (fewer than {MIN_CELLS} validation cells or none right)"}
    # 1. lowest cut (among the observed confidences) whose kept cells are >= TARGET_ACCURACY right
    order = np.argsort(-confidence, kind="stable")
    kept_acc = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)  # keep the k most confident
    ok = np.flatnonzero(kept_acc >= TARGET_ACCURACY)
    if len(ok):
        t_accuracy = float(confidence[order][ok[-1]])
    else:  # never reached: the cut with the best kept accuracy over at least MIN_CELLS cells
        best = MIN_CELLS - 1 + int(np.argmax(kept_acc[MIN_CELLS - 1:]))
        t_accuracy = float(confidence[order][best])
    # 2. the KNOWN_QUANTILE quantile of the confidence of right calls
    t_known = float(np.quantile(confidence[correct], KNOWN_QUANTILE, method="lower"))
    t = min(max(t_accuracy, t_known, MIN_THRESHOLD), MAX_THRESHOLD)
    parts = {"rule": "max(t_accuracy, t_known) clipped", "t_accuracy": t_accuracy, "t_known": t_known}
    return float(t), parts


def class_thresholds(confidence: np.ndarray, correct: np.ndarray, pred: np.ndarray, threshold: float,
                     classes) -> dict[str, float]:
    """Rule 4 of the module docstring: {class name: its threshold} for the classes with right calls."""
    out = {}
    for c, name in enumerate(classes):
        right = confidence[correct & (pred == c)]
        if len(right):
            q = float(np.quantile(right, KNOWN_QUANTILE, method="lower"))
            out[str(name)] = float(min(max(min(threshold, q), MIN_THRESHOLD), MAX_THRESHOLD))
    return out


def calibrate(val_logits: torch.Tensor, val_targets: np.ndarray, classes=None) -> dict:
    """Temperature, threshold and coverage/accuracy curve from validation logits ``(n, C)`` and class ids.

    Targets below 0 (a class unseen in training) are ignored. Returns a JSON-serialisable dict
    ``{"temperature", "threshold", "curve": [{"threshold", "coverage", "accuracy"}], ...}``; see the module
    docstring for the rule. With no usable validation cells: temperature 1 and the default threshold.
    ``classes``: the class names in id order; with them the per-class thresholds are fitted too.
    """
    logits = torch.as_tensor(val_logits).detach().float().cpu()
    targets = np.asarray(val_targets, dtype=np.int64).reshape(-1)
    if logits.ndim != 2 or logits.shape[0] != len(targets):
        msg = f"calibrate: logits {tuple(logits.shape)} and targets ({len(targets)},) do not match"
        raise ValueError(msg)
    keep = targets >= 0
    logits, targets = logits[torch.from_numpy(keep)], targets[keep]
    out = {"temperature": 1.0, "threshold": DEFAULT_THRESHOLD, "target_accuracy": TARGET_ACCURACY,
           "n_cells": int(len(targets)), "curve": []}
    if len(targets) == 0:
        out["rule"] = "default (no validation cells)"
        return out
    t = torch.from_numpy(targets)
    temperature = fit_temperature(logits, t)
    prob = torch.softmax(logits / temperature, dim=1)
    conf, pred = prob.max(1)
    confidence, correct = conf.numpy().astype(np.float64), pred.numpy() == targets
    threshold, parts = choose_threshold(confidence, correct)
    if classes is not None and len(targets) >= MIN_CELLS:
        out["class_thresholds"] = class_thresholds(confidence, correct, pred.numpy(), threshold, classes)
    out.update({
        "temperature": temperature, "threshold": threshold, **parts,
        "nll_before": _nll(logits, t, 1.0), "nll_after": _nll(logits, t, temperature),
        "val_accuracy": float(correct.mean()),
        "curve": coverage_curve(confidence, correct, sorted({*CURVE_GRID, round(threshold, 4)})),
    })
    return out


def low_confidence(level_calibration: dict | None, predicted: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """Which calls the stored rule flags ``low_confidence`` (they keep their label; ``Unassigned`` is the novelty
    score's, :mod:`celler.model.novelty`): confidence below the threshold of the predicted class.

    ``level_calibration`` is one level's entry of ``calibration.json`` (None: the default threshold);
    ``predicted`` holds class names, ``confidence`` the calibrated confidence (softmax of logits / T). A class
    listed under ``class_thresholds`` uses its own threshold, any other the level's ``threshold``.
    """
    cal = level_calibration or {}
    default = float(cal.get("threshold", DEFAULT_THRESHOLD))
    per_class = cal.get("class_thresholds") or {}
    cut = np.array([float(per_class.get(str(c), default)) for c in np.asarray(predicted, dtype=object)])
    return np.asarray(confidence, dtype=np.float64) < cut


__all__ = ["DEFAULT_THRESHOLD", "calibrate", "choose_threshold", "class_thresholds", "coverage_curve", "fit_temperature",
           "low_confidence"]
