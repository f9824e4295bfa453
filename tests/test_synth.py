"""The synthetic generator: format, reproducibility, long tail, hierarchy, markers, NB counts, speed."""


import numpy as np
import pytest
import scipy.sparse as sp
from scipy import stats

from celler.data.synth import _nb_inverse_cdf, _nb_nonzero, load_panglao, make_synthetic
from celler.errors import CellerError


@pytest.fixture(scope="module")
def syn():
    return make_synthetic(20_000, n_genes=1000, seed=7)


def test_format(syn):
    assert syn.shape == (20_000, 1000)
    assert syn.uns["synthetic"] is True
    x = syn.X
    assert sp.isspmatrix_csr(x) or isinstance(x, sp.csr_array)
    assert x.dtype == np.float32
    assert np.all(x.data == np.round(x.data))
    assert x.data.min() >= 1
    assert 0.08 < x.nnz / np.prod(x.shape) < 0.12
    assert {"tissue", "parent", "subclass", "batch"} <= set(syn.obs.columns)
    assert syn.obs["batch"].nunique() == 4
    assert syn.var_names.is_unique
    assert syn.obs_names.is_unique


def test_reproducible_by_seed():
    a = make_synthetic(3000, n_genes=300, seed=1)
    b = make_synthetic(3000, n_genes=300, seed=1)
    c = make_synthetic(3000, n_genes=300, seed=2)
    assert (a.X != b.X).nnz == 0
    assert a.obs.equals(b.obs)
    assert list(a.var_names) == list(b.var_names)
    assert (a.X != c.X).nnz > 0 or not a.obs.equals(c.obs)


def test_long_tailed_subclasses_and_hierarchy(syn):
    obs = syn.obs
    assert obs["tissue"].nunique() == 2
    for tissue, o in obs.groupby("tissue", observed=True):
        sizes = o["subclass"].value_counts()
        sizes = sizes[sizes > 0].sort_values(ascending=False).to_numpy()
        assert 20 <= len(sizes) <= 60
        assert o["parent"].nunique() == 5
        assert sizes[0] / sizes[-1] > 50  # imbalance 100 (exponential profile), up to rounding
        top = sizes[: max(1, len(sizes) // 5)].sum() / sizes.sum()
        assert top > 0.45, tissue  # a fifth of the classes hold about half the cells
        # exponential profile: log size falls linearly with rank
        r = stats.pearsonr(np.arange(len(sizes)), np.log(sizes))[0]
        assert r < -0.98
    # every subclass sits under exactly one parent and one tissue, as uns says
    pairs = obs.groupby("subclass", observed=True)[["parent", "tissue"]].nunique()
    assert (pairs.to_numpy() == 1).all()
    h = syn.uns["hierarchy"]
    assert all(h[s] == p for s, p in zip(obs["subclass"], obs["parent"], strict=True))


def test_genes_are_real_panglao_symbols_and_markers_drive_profiles(syn):
    mk = load_panglao()
    assert set(syn.var_names) <= set(mk["gene"])
    marker_of = syn.var["marker_of"]
    assert (marker_of != "").sum() >= 50
    by_type = mk.groupby("cell_type")["gene"].apply(set)
    for gene, parent in marker_of[marker_of != ""].items():
        assert gene in by_type[parent]
    # a parent's markers are higher in its own cells than elsewhere (library-size normalised)
    x = syn.X.multiply(1e4 / syn.X.sum(axis=1)).tocsr()
    x.data = np.log1p(x.data)
    for parent in syn.obs["parent"].cat.categories[:4]:
        genes = np.flatnonzero(marker_of.to_numpy() == parent)
        inside = (syn.obs["parent"] == parent).to_numpy()
        m_in = x[inside][:, genes].mean()
        m_out = x[~inside][:, genes].mean()
        assert m_in > 2 * m_out, parent


def test_batch_effects_are_multiplicative_per_gene():
    def spread(batch_sd):
        a = make_synthetic(
            4000, n_genes=300, n_tissues=1, n_subclasses=5, n_parents=5, batch_sd=batch_sd, seed=3
        )
        x = a.X.multiply(1e4 / a.X.sum(axis=1)).tocsr()
        means = np.vstack(
            [
                np.asarray(x[(a.obs["batch"] == b).to_numpy()].mean(axis=0)).ravel()
                for b in a.obs["batch"].cat.categories
            ]
        )
        ok = means.min(axis=0) > 0.5
        return np.log(means[:, ok]).std(axis=0).mean()

    assert spread(0.5) > 2 * spread(0.0)


def test_counts_are_negative_binomial():
    rng = np.random.default_rng(0)
    theta = 2.0
    for mu in (0.2, 1.5, 3.5):
        d = stats.nbinom(theta, theta / (theta + mu))
        u = rng.random(300_000).astype(np.float32)
        u = u[u > d.pmf(0)]  # the non-zero entries
        x = _nb_inverse_cdf(u, np.full(len(u), mu, np.float32), theta)
        for k in (1, 2, 3):
            expected = d.pmf(k) / (1 - d.pmf(0))
            assert abs((x == k).mean() - expected) < 4 * np.sqrt(expected * (1 - expected) / len(u)) + 1e-3
    mu = 12.0  # large means take the rejection path
    d = stats.nbinom(theta, theta / (theta + mu))
    x = _nb_nonzero(np.full(100_000, 0.5, np.float32), np.full(100_000, mu, np.float32), theta, rng)
    assert x.min() >= 1
    assert abs(x.mean() - mu / (1 - d.pmf(0))) < 0.2


def test_large_draw_is_sparse_and_lean():
    """100,000 cells come out with their shape and sparse (timing: benchmarks/preprocess.py, not a test)."""
    a = make_synthetic(100_000, seed=0)
    assert a.shape == (100_000, 2000)
    assert a.X.data.nbytes + a.X.indices.nbytes < 1.3 * 0.1 * 100_000 * 2000 * 8


def test_errors():
    with pytest.raises(CellerError, match="n_genes"):
        make_synthetic(100, n_genes=100_000)
    with pytest.raises(CellerError, match="n_parents"):
        make_synthetic(100, n_parents=8, n_subclasses=(4, 6))
    with pytest.raises(CellerError, match="n_tissues"):
        make_synthetic(100, n_tissues=50)
