"""Binning: per-batch edges, monotonicity, zero handling, ties, per-cell mode."""

import numpy as np
import scipy.sparse as sp

from celler.data.binning import ValueSample, bin_per_batch, bin_per_cell, digitize, quantile_edges


def _random_counts(n, g, seed, scale=1.0):
    rng = np.random.default_rng(seed)
    x = rng.poisson(0.3 * scale, size=(n, g)).astype(np.float32)
    return sp.csr_matrix(np.log1p(x))


def test_edges_differ_between_batches_and_follow_their_values():
    a, b = _random_counts(200, 50, 0), _random_counts(200, 50, 1, scale=8.0)
    x = sp.vstack([a, b]).tocsr()
    batches = np.array(["a"] * 200 + ["b"] * 200)
    s = ValueSample()
    for name, part in (("a", a), ("b", b)):
        s.add(name, part.data)
    edges = s.edges(11)
    assert not np.allclose(edges["a"], edges["b"])
    assert edges["b"].mean() > edges["a"].mean()
    bins = bin_per_batch(x, batches, edges)
    # each batch's values spread over its own bins: the high-expression batch is not stuck in the top bins
    assert abs(bins[: a.nnz].mean() - bins[a.nnz :].mean()) < 3


def test_zero_is_never_stored_and_nonzero_bins_are_in_range():
    x = _random_counts(100, 30, 2)
    edges = quantile_edges(x.data, 51)
    bins = digitize(x.data, edges)
    assert bins.min() >= 1 and bins.max() <= 50
    assert x.nnz == len(bins)  # only non-zero values get bins: bin 0 is implicit


def test_binning_is_monotone():
    rng = np.random.default_rng(0)
    v = rng.exponential(size=5000)
    edges = quantile_edges(v, 51)
    order = np.argsort(v)
    assert np.all(np.diff(digitize(v[order], edges).astype(int)) >= 0)


def test_ties_share_a_bin_at_their_mid_rank():
    v = np.array([1.0] * 60 + [2.0] * 20 + [3.0] * 20)  # 60% of the mass is tied at 1
    edges = quantile_edges(v, 11)  # 10 non-zero bins
    bins = digitize(v, edges)
    assert len(set(bins[:60])) == 1
    assert 1 < bins[0] < 7  # not pushed to the lowest or to the top of its 6 bins
    assert bins[0] < bins[60] < bins[-1]


def test_equal_mass_bins_on_continuous_values():
    v = np.random.default_rng(1).normal(size=100_000) ** 2 + 0.01
    bins = digitize(v, quantile_edges(v, 51))
    counts = np.bincount(bins, minlength=51)[1:]
    assert counts.min() > 0.9 * len(v) / 50 and counts.max() < 1.1 * len(v) / 50


def test_per_cell_mode_ranks_within_each_cell():
    x = sp.csr_matrix(np.array([[0, 1, 1, 2, 5], [3, 0, 0, 0, 1], [1, 1, 1, 1, 1.0]]))
    b = bin_per_cell(x, 51)
    row0 = b[: x.indptr[1]]
    assert row0[0] == row0[1] < row0[2] < row0[3]  # ties share a bin, order kept
    assert len(set(b[x.indptr[2] :])) == 1  # a constant cell is one bin
    # the same value gets different bins in different cells (unlike per-batch)
    assert b[x.indptr[2]] != b[0]  # value 1 in cell 2 vs value 1 in cell 0
    # scaling one cell's values does not change its per-cell bins
    y = x.copy()
    y.data[: x.indptr[1]] *= 10
    assert np.array_equal(bin_per_cell(y, 51), b)


def test_edge_sampler_bounds_memory_and_stays_close():
    rng = np.random.default_rng(0)
    s = ValueSample(max_values=10_000, seed=0)
    full = []
    for _ in range(20):
        v = rng.exponential(size=5_000).astype(np.float32)
        full.append(v)
        s.add("b", v)
    assert s._held["b"] <= 20_000
    approx = s.edges(11)["b"]
    exact = quantile_edges(np.concatenate(full), 11)
    assert np.allclose(approx, exact, rtol=0.1)
