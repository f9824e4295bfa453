"""Metrics against scikit-learn on hand-made tables; open-set, rare classes, summaries, tables, hierarchy."""

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from celler.errors import CellerError
from celler.evaluate.metrics import (
    SCALAR_METRICS,
    evaluate,
    evaluate_table,
    hierarchy_disagreement,
    summarise,
    table2,
    table3,
    table4,
    to_markdown,
    write_table,
)

TRUE = list("AAAAABBBCCCDDE")
PRED = list("AABBCBBBCCADZA")  # 'Z' is only predicted
TRAIN = pd.Series({"A": 500, "B": 300, "C": 150, "D": 20, "E": 30})  # D 2.0%, E 3.0% of 1000


def table(true, pred, level="subclass"):
    n = len(true)
    return pd.DataFrame(
        {
            "cell": [f"c{i}" for i in range(n)],
            "split": "test",
            "level": level,
            "true": true,
            "predicted": pred,
            "confidence": np.linspace(0, 1, n),
        }
    )


def test_closed_set_metrics_equal_sklearn():
    res = evaluate(table(TRUE, PRED), TRAIN)
    labels = sorted(set(TRUE))
    p, r, f, s = precision_recall_fscore_support(TRUE, PRED, labels=labels, zero_division=0)
    assert res["accuracy"] == pytest.approx(accuracy_score(TRUE, PRED))
    assert res["macro_precision"] == pytest.approx(p.mean())
    assert res["macro_recall"] == pytest.approx(r.mean())
    assert res["macro_f1"] == pytest.approx(
        f1_score(TRUE, PRED, labels=labels, average="macro", zero_division=0)
    )
    assert res["weighted_f1"] == pytest.approx(
        f1_score(TRUE, PRED, labels=labels, average="weighted", zero_division=0)
    )
    with warnings.catch_warnings():  # sklearn warns about 'Z' (predicted, never true); the value is the same
        warnings.simplefilter("ignore")
        assert res["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(TRUE, PRED))
    pc = res["per_class"]
    np.testing.assert_allclose(pc.loc[labels, "precision"], p)
    np.testing.assert_allclose(pc.loc[labels, "recall"], r)
    np.testing.assert_allclose(pc.loc[labels, "f1"], f)
    np.testing.assert_array_equal(pc.loc[labels, "support"], s)
    # the predicted-only label is listed (support 0) but does not enter the averages
    assert pc.loc["Z", "support"] == 0
    assert res["macro_f1"] == pytest.approx(pc.loc[labels, "f1"].mean())
    cols = [*labels, "Z"]
    np.testing.assert_array_equal(res["confusion"].to_numpy(), confusion_matrix(TRUE, PRED, labels=cols)[:5])
    assert list(res["confusion"].columns) == cols


def test_perfect_predictions():
    res = evaluate(table(TRUE, TRUE), TRAIN)
    for m in ("accuracy", "macro_f1", "weighted_f1", "balanced_accuracy", "macro_precision"):
        assert res[m] == 1.0


def test_open_set_cells_are_reported_separately():
    true = [*TRUE, "NEW", "NEW", "NEW"]
    pred = [*PRED, "A", "A", "B"]
    res = evaluate(table(true, pred), TRAIN)
    closed = evaluate(table(TRUE, PRED), TRAIN)
    assert res["n_cells"] == len(true)
    assert res["n_closed"] == len(TRUE)
    assert res["n_open"] == 3
    assert res["open_set"]["classes"] == {"NEW": 3}
    assert res["open_set"]["predicted_as"].loc["NEW", "A"] == 2
    assert res["open_set"]["predicted_as"].loc["NEW", "B"] == 1
    for m in SCALAR_METRICS:  # excluded from closed-set metrics, not counted as errors
        assert res[m] == pytest.approx(closed[m], nan_ok=True)
    assert "NEW" not in res["per_class"].index
    assert "NEW" not in res["confusion"].index


def test_rare_recall_uses_the_threshold():
    res = evaluate(table(TRUE, PRED), TRAIN)  # 3%: only D (2.0%) is rare; E is exactly 3%
    assert res["rare_classes"] == ["D"]
    assert res["rare_recall"] == pytest.approx(0.5)  # D: 1 of 2
    res = evaluate(table(TRUE, PRED), TRAIN, rare_fraction=0.05)  # D and E; E recall 0
    assert res["rare_classes"] == ["D", "E"]
    assert res["rare_recall"] == pytest.approx((0.5 + 0.0) / 2)
    assert list(res["per_class"].query("rare").index) == ["D", "E"]
    assert np.isnan(evaluate(table(TRUE, PRED), TRAIN, rare_fraction=0.01)["rare_recall"])


def test_levels_and_input_errors():
    both = pd.concat([table(TRUE, PRED), table(list("PPPPPPPPQQQQQQ"), list("PPPPPPPPQQQQQP"), "parent")])
    with pytest.raises(CellerError, match="pass level="):
        evaluate(both, TRAIN)
    par = evaluate(both, pd.Series({"P": 9, "Q": 5}), level="parent")
    assert par["accuracy"] == pytest.approx(13 / 14)
    rows = evaluate_table(both, {"subclass": TRAIN, "parent": pd.Series({"P": 9, "Q": 5})})
    assert rows.set_index("level").loc["parent", "accuracy"] == pytest.approx(13 / 14)
    with pytest.raises(CellerError, match="no rows for level 'cluster'"):
        evaluate(both, TRAIN, level="cluster")
    with pytest.raises(CellerError, match="lacks column"):
        evaluate(table(TRUE, PRED).drop(columns="predicted"), TRAIN)


def _runs():
    rows = []
    for tissue, method, seed, f in [
        ("pancreas", "celler", 0, 0.9),
        ("pancreas", "celler", 1, 0.8),
        ("pancreas", "celler", 2, 0.7),
        ("pancreas", "knn", 0, 0.5),
    ]:
        rows.append(
            {
                "dataset": tissue,
                "tissue": tissue,
                "level": "subclass",
                "method": method,
                "seed": seed,
                "loss": "ginf" if method == "celler" else "ce",
                "macro_f1": f,
                "macro_precision": f - 0.1,
                "macro_recall": f - 0.2,
                "balanced_accuracy": f - 0.2,
                "rare_recall": np.nan,
            }
        )
    return pd.DataFrame(rows)


def test_summarise_mean_std_over_seeds():
    s = summarise(_runs()).set_index("method")
    assert s.loc["celler", "macro_f1_mean"] == pytest.approx(0.8)
    assert s.loc["celler", "macro_f1_std"] == pytest.approx(np.std([0.9, 0.8, 0.7], ddof=1))
    assert s.loc["celler", "n_seeds"] == 3
    assert s.loc["knn", "macro_f1_std"] == 0.0
    assert s.loc["knn", "n_seeds"] == 1
    with pytest.raises(CellerError, match="lacks column"):
        summarise(_runs().drop(columns="seed"))


def test_paper_tables_and_writers(tmp_path):
    t2 = table2(_runs())
    assert list(t2.columns[:3]) == ["tissue", "level", "method"]
    # the columns say which average (macro) and the tables carry rare-class recall too
    assert {"macro_precision_mean", "macro_recall_std", "macro_f1_mean", "rare_recall_mean", "n_seeds"} <= set(
        t2.columns)
    assert t2.set_index("method").loc["celler", "macro_f1_mean"] == pytest.approx(0.8)
    t3 = table3(_runs())
    assert list(t3.columns[:2]) == ["dataset", "method"]
    assert {"macro_f1_mean", "macro_precision_mean", "rare_recall_mean"} <= set(t3.columns)
    assert "f1_mean" not in t3 and "macro_f1" in to_markdown(t3)
    t4 = table4(_runs())
    assert {"loss", "macro_f1_mean", "balanced_accuracy_std", "rare_recall_mean"} <= set(t4.columns)
    md = to_markdown(t2)
    assert "0.800 ± 0.100" in md
    assert "|" in md
    assert "–" in to_markdown(t4)  # rare recall undefined -> dash, not 'nan ± 0'
    tsv, mdp = write_table(t3, tmp_path / "table3.tsv")
    back = pd.read_csv(tsv, sep="\t")
    assert back.set_index("method").loc["celler", "macro_f1_mean"] == pytest.approx(0.8)
    assert "± " in mdp.read_text()
    with pytest.raises(CellerError, match="tissue"):
        table2(_runs().drop(columns="tissue"))


def test_hierarchy_disagreement():
    s2p = {"a1": "A", "a2": "A", "b1": "B"}
    sub = pd.Series(["a1", "a2", "b1", "b1", "rand"], index=list("vwxyz"))
    par = pd.Series(["A", "B", "B", "A", "A"], index=list("vwxyz"))
    assert hierarchy_disagreement(sub, par, s2p) == pytest.approx(3 / 5)  # w, y, and unknown 'rand'
    shuffled = par.iloc[::-1]
    assert hierarchy_disagreement(sub, shuffled, s2p) == pytest.approx(3 / 5)  # aligned by cell, not position
    assert hierarchy_disagreement(["a1", "b1"], ["A", "B"], s2p) == 0.0
    with pytest.raises(CellerError):
        hierarchy_disagreement(["a1"], ["A", "B"], s2p)
