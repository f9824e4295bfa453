"""The best baseline's calls beside Celler's on a tissue page: which baseline and which of its runs, its
confusion tables (drawn beside Celler's), and how many of Celler's wrong calls it gets wrong too.

The baseline is the one the summary and the index name for macro-F1 at the main level
(:func:`celler.report.comparison.best_baseline`); its run is the evaluation's at natural imbalance and the seed
of the tissue's Celler model (the same training cells), else its lowest seed.
"""

from __future__ import annotations

import html

import pandas as pd

from celler.evaluate.metrics import evaluate
from celler.report.comparison import HEADLINE, best_baseline
from celler.report.inputs import TissueInputs

#: The headline metric whose best baseline is drawn beside Celler.
METRIC = "macro_f1"


def best_baseline_run(inp: TissueInputs, *, rare_fraction: float = 0.03) -> dict | None:
    """``method``, ``seed``, ``predictions`` (its table), ``results`` (level -> :func:`evaluate` result, on the
    training counts of Celler's model) of the best baseline; None without an evaluation or its run's file."""
    if inp.eval_metrics is None or inp.eval_metrics.empty:
        return None
    method = best_baseline(inp.eval_metrics, inp.levels, METRIC)
    if not method:
        return None
    own = ((inp.model_config or {}).get("finetune") or {}).get("seed", 0)
    ran = inp.eval_metrics.loc[inp.eval_metrics["method"] == method, "seed"].astype(int)
    for seed in dict.fromkeys([int(own), *sorted(ran)]):
        pred = inp.run_predictions(method, seed)
        if pred is not None:
            break
    else:
        return None
    levels = [lv for lv in inp.levels if "level" not in pred or lv in set(pred["level"])]
    results = {
        lv: evaluate(pred, inp.train_counts(lv), rare_fraction=rare_fraction, level=lv if "level" in pred else None)
        for lv in levels
    }
    return {"method": method, "seed": seed, "own_seed": int(own), "predictions": pred, "results": results}


def shared_errors(celler: pd.DataFrame, baseline: pd.DataFrame) -> dict:
    """On the test cells both called (one level): Celler's wrong calls, the baseline's, those both get wrong
    and those both give the same wrong label."""
    c = celler.set_index("cell")[["true", "predicted"]].astype(str)
    b = baseline.set_index("cell")["predicted"].astype(str).rename("baseline")
    both = c.join(b, how="inner")
    cw, bw = both["predicted"] != both["true"], both["baseline"] != both["true"]
    return {
        "n": len(both),
        "celler_wrong": int(cw.sum()),
        "baseline_wrong": int(bw.sum()),
        "both_wrong": int((cw & bw).sum()),
        "same_wrong": int((cw & bw & (both["predicted"] == both["baseline"])).sum()),
    }


def _level(pred: pd.DataFrame, level: str) -> pd.DataFrame:
    return pred[pred["level"] == level] if "level" in pred else pred


def baseline_note(run: dict | None, inp: TissueInputs) -> str:
    """The sentence under the confusion matrices: which baseline is beside Celler's, and how many errors they
    share at the main level (counted from the two prediction tables)."""
    if run is None:
        return ""
    e = shared_errors(inp.predictions_at(), _level(run["predictions"], inp.level))
    seed = (f"seed {run['seed']}, the seed of Celler's model" if run["seed"] == run["own_seed"]
            else f"seed {run['seed']} (Celler's model's seed {run['own_seed']} has no run of it)")
    share = f" ({e['both_wrong'] / e['celler_wrong']:.0%})" if e["celler_wrong"] else ""
    return (
        f"Beside Celler's: <b>{html.escape(run['method'])}</b>, the best baseline on {HEADLINE[METRIC]} (as in "
        f"the summary), its run on the same test cells ({seed}), same rows, columns and colour scale. At the "
        f"{html.escape(inp.level)} level Celler gets {e['celler_wrong']:,} of {e['n']:,} cells wrong and "
        f"{html.escape(run['method'])} {e['baseline_wrong']:,}; {e['both_wrong']:,} of Celler's wrong calls"
        f"{share} are wrong in both, {e['same_wrong']:,} with the same wrong label."
    )
