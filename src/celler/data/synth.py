"""Synthetic long-tailed, multi-tissue, two-level single-cell counts (scale benchmarks, hierarchy tests).

**Synthetic data: never report it as real data.** Every object carries ``uns["synthetic"] = True``.

Model (all reproducible from ``seed``):

* **tissues and parents**: real PanglaoDB organs (human markers; the organs with the most cell types first)
  and, per tissue, ``n_parents`` of its real cell types as parent classes;
* **subclasses**: per tissue a number drawn from ``n_subclasses = (low, high)``, each attached to one parent
  (every parent gets at least one) and named ``"<parent> <k>"``;
* **long tail**: within a tissue subclass ``k`` (in a shuffled order) has share proportional to
  ``imbalance ** (-k / (K - 1))`` - an exponential profile whose largest class is ``imbalance`` times the
  smallest; cells are allotted by largest remainder (every subclass gets a cell when the tissue has enough);
* **profiles**: a log-normal baseline per gene; each parent multiplies its real PanglaoDB markers (those in
  the gene list) by a strong factor; each subclass adds its own small marker set and log-normal noise on a
  fraction of genes, so subclasses of one parent are close and parents far apart;
* **counts**: negative binomial with mean ``size_factor * batch_factor[gene] * profile[gene]`` and
  dispersion ``theta`` (size). One uniform per entry decides zero / non-zero exactly (zero iff
  ``u <= P(X = 0)``); only the ~``density`` non-zero entries are then drawn from the zero-truncated NB
  (inverse CDF of the same uniform for small means, rejection for large ones);
* **batches**: multiplicative per-gene log-normal factors and a per-batch library-size shift;
* the baseline scale is calibrated so that about ``density`` of the entries are non-zero.

Generation is chunked (fixed-size float32 buffers), so memory is the output CSR plus ~200 MB.
"""

from __future__ import annotations

import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from celler.errors import CellerError
from celler.resources import resources_dir

DEFAULT_MARKERS = resources_dir() / "markers" / "PanglaoDB_markers_27_Mar_2020.tsv.gz"


def load_panglao(path: str | Path | None = None) -> pd.DataFrame:
    """Human (``Hs``) rows of the PanglaoDB marker table: columns ``gene, cell_type, organ, rank``.

    ``rank`` orders a cell type's markers: canonical first, then by human sensitivity, then by specificity
    (low ubiquitousness index).
    """
    if path is None:
        here = Path("resources") / "markers" / DEFAULT_MARKERS.name
        path = DEFAULT_MARKERS if DEFAULT_MARKERS.exists() or not here.exists() else here
    path = Path(path)
    if not path.exists():
        msg = f"{path}: PanglaoDB marker table not found; it ships in resources/markers/"
        raise CellerError(msg)
    m = pd.read_csv(path, sep="\t")
    need = ["species", "official gene symbol", "cell type", "organ"]
    missing = [c for c in need if c not in m.columns]
    if missing:
        msg = f"{path}: not a PanglaoDB marker table (missing column(s) {', '.join(missing)})"
        raise CellerError(msg)
    m = m[m["species"].fillna("").str.contains("Hs")].copy()
    m["gene"] = m["official gene symbol"].astype(str).str.strip()
    m = m[(m["gene"] != "") & m["organ"].notna()]
    m["canon"] = m.get("canonical marker", pd.Series(0, index=m.index)).fillna(0)
    m["sens"] = m.get("sensitivity_human", pd.Series(0, index=m.index)).fillna(0)
    m["ubiq"] = m.get("ubiquitousness index", pd.Series(0, index=m.index)).fillna(0)
    m = m.sort_values(
        ["cell type", "canon", "sens", "ubiq", "gene"], ascending=[True, False, False, True, True]
    )
    m = m.drop_duplicates(["cell type", "gene"])
    m["rank"] = m.groupby("cell type").cumcount()
    return m.rename(columns={"cell type": "cell_type"})[["gene", "cell_type", "organ", "rank"]].reset_index(
        drop=True
    )


def _long_tail_counts(n: int, k: int, imbalance: float) -> np.ndarray:
    """Largest-remainder allotment of ``n`` cells to ``k`` classes with shares ``imbalance**(-i/(k-1))``."""
    share = imbalance ** (-np.arange(k) / max(k - 1, 1))
    share /= share.sum()
    raw = share * n
    counts = np.floor(raw).astype(np.int64)
    counts[np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]] += 1
    if n >= k:  # every class gets a cell, taken from the largest
        for i in np.flatnonzero(counts == 0):
            counts[np.argmax(counts)] -= 1
            counts[i] = 1
    return counts


def _nb_inverse_cdf(u: np.ndarray, mu: np.ndarray, theta: float) -> np.ndarray:
    """Smallest k >= 1 with NB-CDF(k) >= u, for entries known to be non-zero (u > P(X = 0)).

    Meant for small means (the loop runs to the largest value drawn); float32, as the inputs.
    """
    th = np.float32(theta)
    p = mu / (th + mu)
    pmf = np.exp(-th * np.log1p(mu / th)) * th * p  # P(X = 1)
    cdf = np.exp(-th * np.log1p(mu / th)) + pmf
    out = np.ones(len(u), dtype=np.float32)
    active = np.flatnonzero(u > cdf)
    u, p, pmf, cdf = u[active], p[active], pmf[active], cdf[active]
    k = 1
    while active.size and k < 1000:  # NB(mean <= 4) reaches 1000 with probability far below float precision
        k += 1
        pmf *= p * np.float32((k - 1 + theta) / k)
        cdf += pmf
        out[active] = k
        keep = u > cdf
        active, u, p, pmf, cdf = active[keep], u[keep], p[keep], pmf[keep], cdf[keep]
    return out


def _nb_nonzero(u: np.ndarray, mu: np.ndarray, theta: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-truncated NB(mu, theta) draws for entries known to be non-zero.

    Small means (the vast majority) by inverse CDF of ``u`` (a few vectorised steps); means above 4 by
    numpy's gamma-Poisson sampler, redrawing the zeros (rejection: exact, and rare at those means).
    """
    out = np.empty(len(u), dtype=np.float32)
    big = mu > 4.0
    out[~big] = _nb_inverse_cdf(u[~big], mu[~big], theta)
    idx = np.flatnonzero(big)
    prob = theta / (theta + mu[idx].astype(np.float64))
    while idx.size:
        draw = rng.negative_binomial(theta, prob)
        ok = draw > 0
        out[idx[ok]] = draw[ok]
        idx, prob = idx[~ok], prob[~ok]
    return out


def make_synthetic(
    n_cells: int,
    *,
    n_tissues: int = 2,
    n_subclasses: tuple[int, int] | int = (20, 60),
    n_parents: int = 5,
    n_genes: int = 2000,
    n_batches: int = 4,
    density: float = 0.1,
    imbalance: float = 100.0,
    theta: float = 2.0,
    batch_sd: float = 0.3,
    markers_per_parent: int = 25,
    markers_per_subclass: int = 10,
    seed: int = 0,
    chunk_size: int = 8192,
    marker_table: str | Path | None = None,
) -> ad.AnnData:
    """Generate ``n_cells`` synthetic cells: raw integer counts (CSR float32), real gene symbols.

    ``obs``: ``tissue``, ``parent``, ``subclass``, ``batch`` (categoricals), ``size_factor``.
    ``var``: gene symbols as names, ``marker_of`` (parent cell type whose PanglaoDB marker it is, or "").
    ``uns``: ``synthetic`` (True), ``synthetic_params`` (the arguments), ``hierarchy`` (subclass -> parent),
    ``subclass_tissue`` (subclass -> tissue).
    """
    t0 = time.perf_counter()
    if n_cells < 1:
        msg = f"make_synthetic: n_cells must be positive, got {n_cells}"
        raise CellerError(msg)
    lo, hi = (n_subclasses, n_subclasses) if isinstance(n_subclasses, int) else n_subclasses
    if not 1 <= lo <= hi or n_parents < 1 or lo < n_parents:
        msg = (
            f"make_synthetic: need n_parents <= n_subclasses, got n_parents={n_parents}, "
            f"n_subclasses={n_subclasses}"
        )
        raise CellerError(msg)
    if not 0 < density < 1:
        msg = f"make_synthetic: density must be in (0, 1), got {density}"
        raise CellerError(msg)
    rng = np.random.default_rng(seed)
    mk = load_panglao(marker_table)

    # tissues: organs with the most well-marked cell types; parents: their best-marked cell types
    sizes = mk.groupby(["organ", "cell_type"]).size()
    sizes = sizes[sizes >= 10]
    per_organ = sizes.groupby(level=0).size()
    organs = sorted(per_organ.index[per_organ >= n_parents], key=lambda o: (-per_organ[o], o))
    if len(organs) < n_tissues:
        msg = f"make_synthetic: {len(organs)} PanglaoDB organs have {n_parents} cell types; lower n_tissues"
        raise CellerError(msg)
    tissues = organs[:n_tissues]
    parents = {
        t: sorted(sizes.loc[t].index, key=lambda c: (-sizes.loc[(t, c)], c))[:n_parents] for t in tissues
    }

    # gene list: each parent's top markers, then other human marker symbols at random
    all_genes = np.array(sorted(mk["gene"].unique()))
    if n_genes > len(all_genes):
        msg = f"make_synthetic: n_genes={n_genes} exceeds the {len(all_genes)} human marker-table symbols"
        raise CellerError(msg)
    all_parents = [p for t in tissues for p in parents[t]]
    per_parent = max(1, min(markers_per_parent, n_genes // (2 * len(all_parents))))
    marker_of: dict[str, str] = {}
    for p in all_parents:
        own = [g for g in mk.loc[mk["cell_type"] == p].sort_values("rank")["gene"] if g not in marker_of]
        marker_of.update(dict.fromkeys(own[:per_parent], p))
    rest = np.setdiff1d(all_genes, list(marker_of))
    genes = np.concatenate(
        [np.array(list(marker_of)), rng.choice(rest, n_genes - len(marker_of), replace=False)]
    )
    gidx = {g: i for i, g in enumerate(genes)}

    # subclasses, hierarchy and long-tailed sizes
    sub_names, sub_parent, sub_tissue, counts = [], [], [], []
    n_per_tissue = np.full(n_tissues, n_cells // n_tissues)
    n_per_tissue[: n_cells % n_tissues] += 1
    for ti, t in enumerate(tissues):
        k = int(rng.integers(lo, hi + 1))
        par = np.concatenate([np.arange(n_parents), rng.integers(0, n_parents, k - n_parents)])
        rng.shuffle(par)
        num = np.zeros(n_parents, dtype=int)
        for j in par:
            num[j] += 1
            sub_names.append(f"{parents[t][j]} {num[j]}")
            sub_parent.append(parents[t][j])
            sub_tissue.append(t)
        counts.append(rng.permutation(_long_tail_counts(int(n_per_tissue[ti]), k, imbalance)))
    counts = np.concatenate(counts)
    n_types = len(sub_names)

    # expression profiles (relative means; scaled below to hit the density)
    base = rng.normal(0.0, 1.5, n_genes)
    log_prof = np.tile(base, (n_types, 1))
    parent_genes = {p: np.array([gidx[g] for g, q in marker_of.items() if q == p]) for p in all_parents}
    tissue_shift = {t: rng.normal(0.0, 0.5, n_genes) for t in tissues}
    parent_shift = {p: rng.normal(0.0, 0.4, n_genes) for p in all_parents}
    for s in range(n_types):
        p, t = sub_parent[s], sub_tissue[s]
        log_prof[s] += tissue_shift[t] + parent_shift[p]
        log_prof[s, parent_genes[p]] += rng.normal(3.0, 0.5, len(parent_genes[p]))
        own = rng.choice(n_genes, markers_per_subclass, replace=False)
        log_prof[s, own] += rng.normal(2.0, 0.5, markers_per_subclass)
        noisy = rng.random(n_genes) < 0.1
        log_prof[s, noisy] += rng.normal(0.0, 0.5, int(noisy.sum()))
    prof = np.exp(log_prof)

    batch_fac = np.exp(rng.normal(0.0, batch_sd, (n_batches, n_genes)))
    batch_lib = np.exp(rng.normal(0.0, 0.2, n_batches))

    # cells: labels by the long-tailed counts, shuffled; batches uniform; log-normal size factors
    types = rng.permutation(np.repeat(np.arange(n_types), counts))
    batches = rng.integers(0, n_batches, n_cells)
    size = np.exp(rng.normal(0.0, 0.3, n_cells)) * batch_lib[batches]

    # calibrate the overall scale so that E[P(X > 0)] ~= density (on a sample of cells)
    samp = rng.choice(n_cells, min(n_cells, 1000), replace=False)
    mu_s = size[samp, None] * batch_fac[batches[samp]] * prof[types[samp]] / theta

    def _density(scale: float) -> float:
        return float(np.mean(1.0 - np.exp(-theta * np.log1p(scale * mu_s))))

    lo_s, hi_s = 1e-8, 1e4
    for _ in range(40):
        mid = np.sqrt(lo_s * hi_s)
        lo_s, hi_s = (mid, hi_s) if _density(mid) < density else (lo_s, mid)
    prof = prof * np.sqrt(lo_s * hi_s)
    # one row per (subclass, batch): a single gather per chunk
    prof_b = (
        (prof[:, None, :] * batch_fac[None, :, :]).reshape(n_types * n_batches, n_genes).astype(np.float32)
    )
    row_of = types * n_batches + batches
    size32 = size.astype(np.float32)

    # chunked exact NB sampling straight into CSR
    cap = int(density * n_cells * n_genes * 1.2) + chunk_size * n_genes // 4
    data = np.empty(cap, dtype=np.float32)
    idx_dtype = np.int64 if n_cells * n_genes >= 2**31 else np.int32
    indices = np.empty(cap, dtype=idx_dtype)
    indptr = np.zeros(n_cells + 1, dtype=np.int64)
    nnz = 0
    m = min(chunk_size, n_cells)
    mu = np.empty((m, n_genes), dtype=np.float32)
    u = np.empty((m, n_genes), dtype=np.float32)
    tmp = np.empty((m, n_genes), dtype=np.float32)
    mask = np.empty((m, n_genes), dtype=bool)
    neg_theta = np.float32(-theta)
    for start in range(0, n_cells, m):
        stop = min(start + m, n_cells)
        r = stop - start
        mu_c, u_c, tmp_c, mask_c = mu[:r], u[:r], tmp[:r], mask[:r]
        np.take(prof_b, row_of[start:stop], axis=0, out=mu_c)
        mu_c *= size32[start:stop, None]
        rng.random(dtype=np.float32, out=u_c)
        # zero iff u <= P(X=0) = exp(-theta * log1p(mu / theta))
        np.multiply(mu_c, np.float32(1.0 / theta), out=tmp_c)
        np.log1p(tmp_c, out=tmp_c)
        tmp_c *= neg_theta
        with np.errstate(divide="ignore"):
            np.log(u_c, out=u_c)  # u = 0 gives -inf: a zero, as it should
        np.greater(u_c, tmp_c, out=mask_c)
        flat = np.flatnonzero(mask_c)
        k = flat.size
        if nnz + k > cap:
            cap = int((nnz + k) * 1.5)
            data, indices = np.resize(data, cap), np.resize(indices, cap)
        rows, cols = np.divmod(flat, n_genes)
        uu = np.exp(u_c.reshape(-1)[flat])
        data[nnz : nnz + k] = _nb_nonzero(uu, mu_c.reshape(-1)[flat], theta, rng)
        indices[nnz : nnz + k] = cols
        indptr[start + 1 : stop + 1] = nnz + np.cumsum(np.bincount(rows, minlength=r))
        nnz += k
    x = sp.csr_matrix((data[:nnz], indices[:nnz], indptr), shape=(n_cells, n_genes))

    sub_cat = pd.Categorical.from_codes(types, categories=sub_names)
    obs = pd.DataFrame(
        {
            "tissue": pd.Categorical(np.asarray(sub_tissue)[types], categories=tissues),
            "parent": pd.Categorical(np.asarray(sub_parent)[types], categories=all_parents),
            "subclass": sub_cat,
            "batch": pd.Categorical.from_codes(batches, categories=[f"batch{i}" for i in range(n_batches)]),
            "size_factor": size32,
        },
        index=pd.Index([f"syn{i:07d}" for i in range(n_cells)], name="cell"),
    )
    var = pd.DataFrame(
        {"marker_of": [marker_of.get(g, "") for g in genes]}, index=pd.Index(genes, name="gene")
    )
    out = ad.AnnData(X=x, obs=obs, var=var)
    out.uns["synthetic"] = True
    out.uns["synthetic_params"] = {
        "n_cells": n_cells,
        "n_tissues": n_tissues,
        "n_subclasses": [lo, hi],
        "n_parents": n_parents,
        "n_genes": n_genes,
        "n_batches": n_batches,
        "density": density,
        "imbalance": imbalance,
        "theta": theta,
        "batch_sd": batch_sd,
        "seed": seed,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    out.uns["hierarchy"] = dict(zip(sub_names, sub_parent, strict=True))
    out.uns["subclass_tissue"] = dict(zip(sub_names, sub_tissue, strict=True))
    return out


__all__ = ["load_panglao", "make_synthetic"]
