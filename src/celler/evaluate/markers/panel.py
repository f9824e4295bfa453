"""The gene panel of a report's dot plots, chosen from the training cells' true labels; the dot table
(see :mod:`celler.evaluate.markers`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import anndata as ad
import numpy as np
import pandas as pd

from celler.errors import CellerError

#: Genes never chosen as markers by default: ribosomal proteins (RPS3, RPL13A, RPLP0, RPSA; not RPS6KA1, a
#: kinase) and mitochondrial genes (MT-). They are among the most expressed genes of every cell, so they
#: rank high wherever a type has more RNA, and mark nothing.
EXCLUDE = r"^(?:MT-|RP[SL]\d+(?:A|AL|L|X|Y|Y1|Y2)?$|RPLP[0-2]$|RPSA$)"
#: Anonymised gene names (``gene_000``): no marker table can match them.
ANONYMOUS = r"^gene[_.-]?\d+$"
#: Known markers per type (most votes first) considered for the plots.
KNOWN_CANDIDATES = 10
#: A "clean" marker, preferred: scanpy's ``filter_rank_genes_groups`` defaults (detected in >= 25% of the
#: type, <= 50% of the other cells, >= 2-fold up); keeps genes every cell has (EEF1A1) out of the panel.
CLEAN = {"in_group": 0.25, "out_group": 0.5, "fold_change": 2.0}
#: Detected in at least this much larger a share of the type's cells than of the others: preferred.
MIN_SPECIFIC = 0.1
#: Significance level of "up in this type against the rest" (BH-adjusted Wilcoxon p-value).
ALPHA = 0.05
CONFIRMED = "confirmed"


@dataclass
class MarkerPanel:
    """The genes of a report's dot plots, and what the data says about each type's known markers.

    ``genes``: ``gene, marker_of, known, source`` in plot order (``known``: a known marker this data confirms,
    starred; ``source``: ``data`` or ``known``). ``known``: ``label, gene, votes, sources, status,
    highest_in``
    for the top known markers of each type (status :data:`CONFIRMED` or why not). ``excluded``: the genes of
    the data left out by ``exclude``. ``unclean``: types with neither a clean data-driven marker
    (:data:`CLEAN`) nor a confirmed known one: their columns are the best they have, which is not much.
    """

    genes: pd.DataFrame
    known: pd.DataFrame
    anonymised: bool = False
    excluded: list[str] = field(default_factory=list)
    unclean: list[str] = field(default_factory=list)

    @property
    def gene_list(self) -> list[str]:
        return self.genes["gene"].tolist()


def excluded(genes: Iterable[str], pattern: str | None = EXCLUDE) -> np.ndarray:
    """Mask of ``genes`` matching ``pattern`` (case-insensitive; mouse ``Rps3`` / ``mt-Co1`` too)."""
    names = pd.Index(list(genes)).astype(str)
    if not pattern:
        return np.zeros(len(names), dtype=bool)
    return np.asarray(names.str.contains(pattern, case=False, regex=True), dtype=bool)


def anonymised(genes: Iterable[str]) -> bool:
    """True when most gene names are placeholders such as ``gene_000``."""
    names = pd.Index(list(genes)).astype(str)
    return len(names) > 0 and bool(np.mean(names.str.match(ANONYMOUS, case=False)) >= 0.5)


def marker_budget(n_groups: int, *, max_columns: int = 45) -> tuple[int, int]:
    """Data-driven and known markers per type: up to 3 + 2, fewer with many types so that the plot stays
    within ``max_columns`` gene columns (the page width). A type with more confirmed known markers gets them
    all (:func:`marker_panel`), and the dot plot narrows its columns to stay on the page."""
    per = min(5, max(1, max_columns // max(n_groups, 1)))
    known = per // 2
    return per - known, known


def marker_panel(
    adata: ad.AnnData,
    groupby: str,
    *,
    order: Sequence[str] | None = None,
    n_ranked: int = 3,
    n_known: int = 2,
    known: pd.DataFrame | None = None,
    exclude: str | None = EXCLUDE,
    min_cells: int = 2,
) -> MarkerPanel:
    """Choose the marker genes of the groups of ``adata.obs[groupby]`` (the training cells by true label).

    ``n_ranked + n_known`` genes per group (types with fewer than ``min_cells`` cells get none): every known
    marker from ``known`` (:func:`known_markers` output with ``n=None`` and no gene filter, so that markers
    missing from the data are reported too) that this data confirms among the type's
    :data:`KNOWN_CANDIDATES` (all of them, even beyond ``n_known``: a confirmed marker is never left out of the
    plot), and data-driven genes for the rest (none where the confirmed ones fill the type's columns);
    ``n_known=0`` plots data-driven genes only. ``exclude``: a regular expression of genes never chosen (default
    :data:`EXCLUDE`; None keeps every gene). See the module docstring.
    """
    import scanpy as sc

    labels = adata.obs[groupby].astype(str)
    sizes = labels.value_counts()
    order = [str(g) for g in (order if order is not None else sorted(sizes.index))]
    groups = [g for g in order if sizes.get(g, 0) >= min_cells] + sorted(
        g for g in sizes.index[sizes >= min_cells] if g not in order
    )
    drop = excluded(adata.var_names, exclude)
    empty = pd.DataFrame(columns=["gene", "marker_of", "known", "source"])
    status_cols = ["label", "gene", "votes", "sources", "status", "highest_in"]
    if len(groups) < 2:
        return MarkerPanel(
            empty, pd.DataFrame(columns=status_cols), anonymised(adata.var_names), list(adata.var_names[drop])
        )
    sub = adata[labels.isin(groups).to_numpy(), ~drop].copy()
    sub.obs[groupby] = pd.Categorical(sub.obs[groupby].astype(str), categories=groups)
    agg = sc.get.aggregate(sub, by=groupby, func=["mean"])
    means = pd.DataFrame(agg.layers["mean"], index=agg.obs_names.astype(str), columns=sub.var_names)
    peak = means.idxmax(axis=0)
    sc.tl.rank_genes_groups(sub, groupby, method="wilcoxon", pts=True, use_raw=False, key_added="celler_rank")
    ranks = sc.get.rank_genes_groups_df(sub, group=None, key="celler_rank")
    ranks["group"] = ranks["group"].astype(str)
    ranks["specific"] = ranks["pct_nz_group"] - ranks["pct_nz_reference"]
    ranks["peaks_here"] = ranks["names"].map(peak).to_numpy() == ranks["group"].to_numpy()
    clean = ranks["pct_nz_group"].ge(CLEAN["in_group"]) & ranks["pct_nz_reference"].le(CLEAN["out_group"])
    ranks["clean"] = clean & ranks["logfoldchanges"].ge(np.log2(CLEAN["fold_change"]))
    informative = ranks["specific"].ge(MIN_SPECIFIC)  # EEF1A1, in every cell, says nothing in a dot plot
    ranks["tier"] = 4 * informative + 2 * ranks["clean"] + ranks["peaks_here"]  # the best first
    up = ranks[(ranks["logfoldchanges"] > 0) & (ranks["pvals_adj"] < ALPHA)]
    confirmed = set(zip(up.loc[up["peaks_here"], "group"], up.loc[up["peaks_here"], "names"], strict=True))

    status = pd.DataFrame(columns=status_cols)
    if known is not None and len(known):
        status = _known_status(
            known, order, set(sizes.index[sizes >= min_cells]), adata.var_names, drop, peak, confirmed
        )
    ok = status[status["status"] == CONFIRMED]
    rows, used, unclean = [], set(), []
    for g in groups:
        # every confirmed known marker is plotted (the page lists them as confirmed: INS for beta was not)
        mine = [x for x in ok.loc[ok["label"] == g, "gene"] if x not in used] if n_known else []
        cand = up[up["group"] == g]
        if cand.empty:  # nothing significant (a small type): its best up-regulated genes
            cand = ranks[(ranks["group"] == g) & (ranks["logfoldchanges"] > 0)]
        cand = cand.sort_values(["tier", "specific", "scores"], ascending=False, kind="stable")
        n_data = max(n_ranked + n_known - len(mine), 0)  # data-driven genes make up for missing known ones
        cand = cand[~cand["names"].isin(used | set(mine))].head(n_data)
        picked = cand["names"].tolist()
        if not cand["clean"].any() and not mine:
            unclean.append(g)
        used.update(picked + mine)
        rows += [(x, g, False, "data") for x in picked] + [(x, g, True, "known") for x in mine]
    starred = set(zip(ok["label"], ok["gene"], strict=True))  # a data-driven pick that is a known marker
    rows = [(x, m, k or (m, x) in starred, s) for x, m, k, s in rows]
    out = pd.DataFrame(rows, columns=["gene", "marker_of", "known", "source"])
    out["marker_of"] = pd.Categorical(out["marker_of"], categories=groups)
    out = out.sort_values("marker_of", kind="stable").assign(marker_of=lambda d: d["marker_of"].astype(str))
    return MarkerPanel(
        out.reset_index(drop=True), status, anonymised(adata.var_names), list(adata.var_names[drop]), unclean
    )


def _known_status(known, order, with_cells, var_names, drop, peak, confirmed) -> pd.DataFrame:
    """Each type's top known markers (by votes) and what this data says about them."""
    present = {g.upper(): g for g in var_names}
    left_out = {g.upper() for g in var_names[drop]}
    rows = []
    top = (
        known.sort_values("votes", ascending=False, kind="stable")
        .groupby("label", sort=False)
        .head(KNOWN_CANDIDATES)
    )
    for _, r in top.iterrows():
        label, name = str(r["label"]), str(r["gene"])
        gene = present.get(name.upper())
        highest = peak.get(gene, "") if gene else ""
        if gene is None:
            st = "absent from the gene panel"
        elif name.upper() in left_out:
            st = "left out (ribosomal / mitochondrial)"
        elif label not in with_cells:
            st = "no training cells of this type"
        elif (label, gene) in confirmed:
            st = CONFIRMED
        elif highest != label:
            st = f"not enriched here: highest in {highest}"
        else:
            st = "highest here, but not significantly up"
        rows.append((label, gene or name, int(r["votes"]), r["sources"], st, highest))
    out = pd.DataFrame(rows, columns=["label", "gene", "votes", "sources", "status", "highest_in"])
    out["label"] = pd.Categorical(out["label"], categories=list(dict.fromkeys([*order, *out["label"]])))
    return out.sort_values("label", kind="stable").assign(label=lambda d: d["label"].astype(str))


def dot_table(
    adata: ad.AnnData,
    groupby: str,
    genes: Sequence[str],
    *,
    order: Sequence[str] | None = None,
    keep_empty: bool = False,
) -> pd.DataFrame:
    """Share of cells expressing (> 0) and mean expression of ``genes`` per group.

    Long format: ``group, gene, fraction, mean, n_cells``; groups in ``order`` (default: sorted); a group of
    ``order`` without cells is left out, or with ``keep_empty`` kept as a row of NaN (so that two plots of
    the same groups line up).
    """
    missing = [g for g in genes if g not in adata.var_names]
    if missing:
        msg = f"dot_table: genes not in the data: {', '.join(missing[:10])}"
        raise CellerError(msg)
    labels = adata.obs[groupby].astype(str).to_numpy()
    seen = set(labels)
    order = list(order) if order is not None else sorted(seen)
    x = adata[:, list(genes)].X
    x = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
    rows = []
    for group in order:
        m = x[labels == group]
        if len(m) == 0 and not keep_empty:
            continue
        for j, gene in enumerate(genes):
            frac, mean = ((m[:, j] > 0).mean(), m[:, j].mean()) if len(m) else (np.nan, np.nan)
            rows.append((group, gene, float(frac), float(mean), len(m)))
    return pd.DataFrame(rows, columns=["group", "gene", "fraction", "mean", "n_cells"])
