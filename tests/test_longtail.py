"""The induced long tail keeps an exact exponential profile, is seeded, and can be written and read back."""

import numpy as np
import pandas as pd
import pytest

from celler.data.longtail import (
    induce_long_tail,
    label_fraction,
    load_kept_cells,
    load_long_tail,
    save_long_tail,
)

# CBMC's natural training class sizes: already long-tailed (natural ratio ~62)
CBMC = [3086, 2481, 976, 348, 282, 219, 143, 93, 81, 80, 50]


def make_labels(sizes, shuffle_seed=None):
    names = [f"type{i:02d}" for i in range(len(sizes))]
    cells = [f"cell{i}" for i in range(sum(sizes))]
    labels = pd.Series(np.repeat(names, sizes), index=cells, name="cell_type")
    if shuffle_seed is not None:
        labels = labels.sample(frac=1, random_state=shuffle_seed)
    return labels


@pytest.fixture
def cbmc():
    return make_labels(CBMC, shuffle_seed=0)


@pytest.mark.parametrize("ratio", [10, 50, 100])
def test_realised_ratio_matches_request_within_rounding(cbmc, ratio):
    kept, table, realised = induce_long_tail(cbmc, ratio, seed=0)
    head, tail = table["n_kept"].iloc[0], table["n_kept"].iloc[-1]
    assert realised == head / tail
    # head and tail are each within 0.5 of the real-valued curve
    assert abs(realised - ratio) <= ratio * (0.5 / (tail - 0.5) + 0.5 / (head - 0.5))
    assert head < CBMC[0]  # the head was lowered: capping alone would keep all 3086 and give ratio 62
    assert len(kept) == table["n_kept"].sum()


@pytest.mark.parametrize("ratio", [3, 10, 100])
def test_every_class_fits_the_curve(cbmc, ratio):
    _, table, _ = induce_long_tail(cbmc, ratio, seed=1)
    n = len(CBMC)
    k = np.arange(n)
    assert list(table["n_available"]) == CBMC  # head first
    # the largest head for which all classes fit, recomputed here from the definition
    n_head = min(CBMC[i] * ratio ** (i / (n - 1)) for i in range(n))
    curve = n_head * ratio ** (-k / (n - 1))
    assert np.all(np.abs(table["n_kept"].to_numpy() - curve) <= 0.5 + 1e-9)
    assert (table["n_kept"] <= table["n_available"]).all()
    assert (table["n_kept"] == table["n_available"]).any()  # the binding class keeps all its cells
    assert table["n_kept"].is_monotonic_decreasing


def test_kept_cells_match_the_table_and_come_from_the_input(cbmc):
    kept, table, _ = induce_long_tail(cbmc, 10, seed=2)
    assert kept.isin(cbmc.index).all()
    assert kept.is_unique
    counts = cbmc.loc[kept].value_counts()
    assert counts.reindex(table.index).tolist() == table["n_kept"].tolist()
    kept_set = set(kept)
    assert list(kept) == [c for c in cbmc.index if c in kept_set]  # input order kept


def test_seeded_and_independent_of_row_order(cbmc):
    first = induce_long_tail(cbmc, 10, seed=7).kept
    again = induce_long_tail(cbmc, 10, seed=7).kept
    other = induce_long_tail(cbmc, 10, seed=8).kept
    reordered = induce_long_tail(cbmc.sample(frac=1, random_state=3), 10, seed=7).kept
    assert first.equals(again)
    assert set(first) != set(other)
    assert len(first) == len(other)
    assert set(reordered) == set(first)


def test_ratio_one_gives_equal_classes(cbmc):
    _, table, realised = induce_long_tail(cbmc, 1, seed=0)
    assert (table["n_kept"] == min(CBMC)).all()
    assert realised == 1.0


def test_tiny_class_keeps_one_cell():
    labels = make_labels([100, 2, 1])  # the middle class caps the head at 2·√100 = 20; the tail's curve: 0.2
    _, table, realised = induce_long_tail(labels, 100, seed=0)
    assert table["n_target"].tolist() == [20, 2, 0]
    assert table["n_kept"].tolist() == [20, 2, 1]
    assert realised == 20.0  # reported honestly, not the requested 100


def test_single_class_and_unused_categories():
    labels = make_labels([30, 20]).astype(pd.CategoricalDtype(["type00", "type01", "never_seen"]))
    _, table, _ = induce_long_tail(labels, 4, seed=0)
    assert list(table.index) == ["type00", "type01"]
    kept, table, realised = induce_long_tail(make_labels([30]), 10, seed=0)
    assert len(kept) == 30
    assert realised == 1.0


def test_bad_input_is_a_clear_value_error(cbmc):
    with pytest.raises(ValueError, match="ratio"):
        induce_long_tail(cbmc, 0.5, seed=0)
    with pytest.raises(ValueError, match="ratio"):
        induce_long_tail(cbmc, float("nan"), seed=0)
    with pytest.raises(ValueError, match="empty"):
        induce_long_tail(pd.Series([], dtype=object), 10, seed=0)
    with pytest.raises(ValueError, match="no label"):
        induce_long_tail(pd.Series(["a", None], index=["x", "y"]), 10, seed=0)
    with pytest.raises(ValueError, match="not unique"):
        induce_long_tail(pd.Series(["a", "b"], index=["x", "x"]), 10, seed=0)


def test_save_and_load_round_trip(cbmc, tmp_path):
    result = induce_long_tail(cbmc, 10, seed=4)
    cells, table = tmp_path / "kept_cells.txt", tmp_path / "classes.tsv"
    save_long_tail(result, cells, table, ratio=10, seed=4)
    assert cells.read_text().splitlines() == list(result.kept)
    assert load_kept_cells(cells).equals(result.kept)
    back, meta = load_long_tail(cells, table)
    assert back.kept.equals(result.kept)
    pd.testing.assert_frame_equal(back.table, result.table, check_dtype=False)
    assert back.realised_ratio == pytest.approx(result.realised_ratio)
    assert meta["ratio"] == "10"
    assert meta["seed"] == "4"


def test_label_fraction_is_stratified_with_a_floor_and_seeded():
    labels = make_labels(CBMC, shuffle_seed=0)
    kept = label_fraction(labels, 0.1, seed=0)
    counts = labels[kept].value_counts()
    expected = {f"type{i:02d}": max(3, round(0.1 * n)) for i, n in enumerate(CBMC)}
    assert counts.to_dict() == expected  # 309, 248, ... down to 5 (50 cells) and the floor of 3 nowhere hit
    tiny = label_fraction(labels, 0.01, seed=0)
    assert labels[tiny].value_counts().min() == 3  # 1% of 50 is 0.5: the floor
    assert tiny.isin(labels.index).all() and not tiny.duplicated().any()
    assert kept.equals(label_fraction(labels, 0.1, seed=0))
    assert not kept.equals(label_fraction(labels, 0.1, seed=1))
    small = make_labels([10, 2])
    assert labels_of(small, label_fraction(small, 0.01, seed=0)) == {"type00": 3, "type01": 2}  # all of a class < 3
    assert label_fraction(labels, 1.0, seed=0).equals(labels.index)


def labels_of(labels, kept):
    return labels[kept].value_counts().to_dict()
