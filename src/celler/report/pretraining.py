"""The pretraining loss spikes, explained once: on the index page for the model shared by every tissue; a
tissue page says which model it starts from, links that explanation and gives its own numbers only where it
has its own continued pretraining."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from celler.report.page import note

#: The index page's anchor of the explanation.
ANCHOR = "pretraining"


def pretrain_spikes(log: pd.DataFrame | None) -> dict | None:
    """Mean pretraining loss of the batches of short cells against the full-length ones (after the first 10%
    of steps): batches are length-bucketed, so short cells share batches, and those score worse."""
    if log is None or not {"tokens_per_s", "cells_per_s", "loss"} <= set(log.columns) or len(log) < 20:
        return None
    log = log.iloc[len(log) // 10 :]
    length = log["tokens_per_s"] / log["cells_per_s"].replace(0, np.nan)
    short = length < 0.9 * length.max()
    if not short.any() or short.all():
        return None
    return {
        "n_short": int(short.sum()),
        "n": len(log),
        "short_loss": float(log.loc[short, "loss"].mean()),
        "full_loss": float(log.loc[~short, "loss"].mean()),
        "full_length": float(length.max()),
        "corr": float(np.corrcoef(length[length.notna()], log.loc[length.notna(), "loss"])[0, 1]),
    }


def _numbers(spikes: dict, n_bins: int | None) -> str:
    chance = f" (chance: ln {n_bins - 1} = {math.log(n_bins - 1):.2f})" if n_bins and n_bins > 2 else ""
    return (f"{spikes['n_short']} of the {spikes['n']} steps after the first tenth hold such batches and average a "
            f"loss of {spikes['short_loss']:.2f}{chance}, against {spikes['full_loss']:.2f} for full-length batches "
            f"(correlation of the loss with the tokens per cell: {spikes['corr']:.2f})")


def spikes_paragraph(spikes: dict, n_bins: int | None) -> str:
    """Why the pretraining loss spikes, with the model's numbers (the index page says it once)."""
    return note(
        "The pretraining spikes are batches of short cells, not instabilities. Batches are length-bucketed "
        "(little padding), so cells with fewer expressed genes than the model reads come together: "
        f"{_numbers(spikes, n_bins)}; a short cell gives the model little context to predict a hidden value from. "
        "In each tissue page's pretraining panel the colour is the tokens per cell in the batch."
    )


def index_section(log_path: str | Path | None) -> str:
    """The index page's pretraining section: the shared model (its ``train_log.csv`` and the ``config.json``
    beside it) and the explanation of its loss spikes; ``''`` without a log (no shared pretraining)."""
    if not log_path or not Path(log_path).exists():
        return ""
    log = pd.read_csv(log_path)
    cfg_path = Path(log_path).parent / "config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    spikes = pretrain_spikes(log)
    what = note(f"Every tissue's fine-tuning starts from one pretrained model ({len(log):,} steps, "
                "masked values of the corpus and the tissues' training cells, labels unused) or from a tissue's "
                "own continued pretraining of it; each tissue page draws the curve of the model it starts from.")
    body = spikes_paragraph(spikes, (cfg.get("model") or {}).get("n_bins")) if spikes else ""
    return f'<section id="{ANCHOR}"><h2>Pretraining</h2>{what}{body}</section>'


def tissue_notes(pretrain_config: dict | None, has_log: bool, facts: dict, index_href: str) -> list[str]:
    """A tissue page's training notes on pretraining: which model the panel shows, a link to the explanation
    of the spikes on the index page, and this model's own numbers only where it is the tissue's own."""
    link = (f'the loss spikes are explained once, on the index page (<a href="{html.escape(index_href)}#{ANCHOR}">'
            "Pretraining</a>)")
    if not has_log:
        return [note("No pretraining log (fine-tuned from scratch or from external weights).")]
    if not (pretrain_config or {}).get("init"):
        return [note(f"The pretraining panel is the model shared by every tissue (not retrained for this one); "
                     f"{link}.")]
    steps = pretrain_config.get("steps")
    text = ("The pretraining panel is this tissue's own continued pretraining" + (f" ({steps} steps)" if steps else "")
            + f" on its training cells, labels unused, started from the model shared by every tissue; {link}")
    spikes = facts.get("spikes")
    if spikes:
        text += f". Here, batches of short cells: {_numbers(spikes, facts.get('n_bins'))}"
    return [note(text + ". Colour: tokens per cell in the batch.")]
