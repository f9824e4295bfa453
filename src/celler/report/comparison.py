"""The result in one table: Celler against the best baseline, per label level, on macro-F1 and rare recall.

Both the index page (one row per tissue and level) and each tissue page's summary are built from
:func:`compare`, which reads the evaluation table (every method x seed x level) and nothing else, so the
numbers shown are the evaluation's means over seeds.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd

from celler.evaluate.metrics import summarise

#: The two headline metrics.
HEADLINE = {"macro_f1": "macro-F1", "macro_precision": "macro precision", "macro_recall": "macro recall",
            "rare_recall": "rare recall"}
#: Celler's own figures shown beside the comparison: what the ``Unassigned`` rule leaves the user.
RECEIVED = {"n_rare_test": "rare test cells", "rare_recall_after_unassigned": "Celler rare recall after Unassigned",
            "unassigned_share": "Celler Unassigned"}
#: Differences smaller than this are called level (seed-to-seed spread on these sets is 0.002-0.05).
TIE = 0.01


def compare(metrics: pd.DataFrame, levels: list[str] | None = None) -> pd.DataFrame:
    """Per level: Celler's mean over seeds, the best baseline's (and its name) and Celler minus it, for each
    metric of :data:`HEADLINE`.

    ``metrics``: one row per method, seed and level (``evaluation/metrics.tsv``). Columns of the result:
    ``level, n_seeds`` and per metric ``m``: ``m`` (Celler), ``m_best``, ``m_baseline``, ``m_delta``; NaN
    where the metric is undefined (no rare class in the test set) or no baseline ran.
    """
    have = [m for m in (*HEADLINE, *RECEIVED) if m in metrics]
    s = summarise(metrics[["method", "seed", "level", *have]], have, seed_col="seed")
    order = levels or list(dict.fromkeys(s["level"]))
    rows = []
    for level in order:
        part = s[s["level"] == level]
        celler = part[part["method"] == "celler"]
        if celler.empty:
            continue
        others = part[part["method"] != "celler"]
        row = {"level": level, "n_seeds": int(celler["n_seeds"].iloc[0])}
        for m in HEADLINE:
            mean = float(celler[f"{m}_mean"].iloc[0]) if m in have else np.nan
            scored = others.dropna(subset=[f"{m}_mean"]) if m in have else others.iloc[:0]
            best = scored.loc[scored[f"{m}_mean"].idxmax()] if len(scored) else None
            row[m] = mean
            row[f"{m}_best"] = float(best[f"{m}_mean"]) if best is not None else np.nan
            row[f"{m}_baseline"] = str(best["method"]) if best is not None else ""
            row[f"{m}_delta"] = mean - row[f"{m}_best"]
        for m in RECEIVED:
            row[m] = float(celler[f"{m}_mean"].iloc[0]) if m in have else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def best_baseline(metrics: pd.DataFrame, levels: list[str] | None = None, metric: str = "macro_f1") -> str:
    """The baseline the summary and the index name for ``metric`` at the main (first) level: :func:`compare`'s
    choice (the highest mean over seeds); ``''`` when no baseline ran."""
    rows = compare(metrics, levels)
    return str(rows[f"{metric}_baseline"].iloc[0]) if len(rows) else ""


def outcome(delta: float) -> str:
    """``ahead``, ``level`` or ``behind`` (within :data:`TIE`: level); ``''`` when undefined."""
    if pd.isna(delta):
        return ""
    return "level" if abs(delta) < TIE else "ahead" if delta > 0 else "behind"


def verdict(rows: pd.DataFrame, *, unit: str = "tissue", names: str = "tissue") -> str:
    """One sentence saying who wins on each headline metric over :func:`compare` ``rows`` (one per ``unit``;
    the ``names`` column, when present, names the units where Celler is higher or lower)."""
    parts = []
    for m, label in HEADLINE.items():
        d = rows[f"{m}_delta"].dropna() if f"{m}_delta" in rows else pd.Series(dtype=float)
        if len(d) == 1:
            v, base = float(d.iloc[0]), rows.loc[d.index[0], f"{m}_baseline"]
            kind = outcome(v)
            parts.append(
                f"{label} is level with {base}'s"
                if kind == "level"
                else f"{label} is {'higher' if kind == 'ahead' else 'lower'} than {base}'s by {abs(v):.3f}"
            )
        elif len(d) > 1:
            kinds = pd.Series([outcome(v) for v in d], index=d.index)
            bits = []
            for kind, word in (("ahead", "higher"), ("level", "level"), ("behind", "lower")):
                hit = kinds.index[kinds == kind]
                if len(hit) == 0:
                    continue
                of = "" if bits else f" of {len(d)} {unit}s"
                who = (
                    " (" + ", ".join(f"{rows.loc[i, names]} {_signed(d[i])}" for i in hit) + ")"
                    if names in rows and kind != "level"
                    else ""
                )
                bits.append(f"{word} in {len(hit)}{of}{who}")
            parts.append(f"{label} is {_join(bits)}")
    if not parts:
        return "No baseline was evaluated, so there is nothing to compare Celler with."
    one = "n_seeds" in rows and len(rows) and (rows["n_seeds"] == 1).all()
    return f"Against the best baseline{' (one seed)' if one else ''}, Celler's {'; its '.join(parts)}."


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _signed(v: float) -> str:
    return f"{v:+.3f}".replace("-", "−")


def delta_cell(delta: float) -> str:
    """A coloured ``<td>`` for a difference: blue ahead, orange behind, grey level (the sign is printed
    too, so the colour is never the only cue)."""
    kind = outcome(delta)
    if not kind:
        return "<td>–</td>"
    return f'<td class="{kind}">{_signed(delta)}</td>'


def comparison_table(rows: pd.DataFrame, *, lead: list[tuple[str, list[str]]] = ()) -> str:
    """HTML table of :func:`compare` rows; ``lead``: leading columns as (header, one cell's html per row)."""
    head = "".join(f'<th class="txt">{html.escape(h)}</th>' for h, _ in lead) + '<th class="txt">level</th>'
    for name in HEADLINE.values():
        head += (
            f'<th>Celler {name}</th><th>best baseline</th><th class="txt">which</th><th>Celler − best</th>'
        )
        if name == HEADLINE["rare_recall"]:
            head += "".join(f"<th>{label}</th>" for label in RECEIVED.values())
    body = []
    for i, (_, r) in enumerate(rows.iterrows()):
        cells = "".join(col[i] for _, col in lead) + f'<td class="txt">{html.escape(str(r["level"]))}</td>'
        for m in HEADLINE:
            ahead = outcome(r[f"{m}_delta"])  # the better of the two values is bold, whoever it is
            cells += (
                f'<td class="celler">{_num(r[m], bold=ahead == "ahead")}</td>'
                f'<td>{_num(r[f"{m}_best"], bold=ahead == "behind")}</td>'
                f'<td class="txt">{html.escape(r[f"{m}_baseline"] or "–")}</td>{delta_cell(r[f"{m}_delta"])}'
            )
            if m == "rare_recall":
                cells += "".join(f'<td class="celler">{_num(r.get(k), count=k == "n_rare_test")}</td>' for k in RECEIVED)
        body.append(f"<tr>{cells}</tr>")
    # four metrics side by side are wider than a page: the table scrolls inside it, the page does not
    return (f'<div class="scroll"><table class="summary"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _num(v, *, bold: bool = False, count: bool = False) -> str:
    if v is None or pd.isna(v):
        return "–"
    text = f"{float(v):,.0f}" if count else f"{float(v):.3f}"
    return f"<strong>{text}</strong>" if bold else text
