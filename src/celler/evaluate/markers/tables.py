"""Known markers: the PanglaoDB, CellMarker 2.0 and ScType tables in ``resources/markers``, and the
conservative word matching of their cell-type names to a dataset's labels (see :mod:`celler.evaluate.markers`)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from celler.errors import CellerError
from celler.resources import resources_dir

#: File names of the marker tables in the markers directory.
MARKER_FILES = {
    "PanglaoDB": "PanglaoDB_markers_27_Mar_2020.tsv.gz",
    "CellMarker": "CellMarker2_Human_Aug.csv",
    "ScType": "ScTypeDB_full.tsv",
}

#: Extra table tissues searched for a config ``marker_tissue`` (lower case).
TISSUE_ALIASES = {
    "immune system": ("blood", "bone marrow"),
    "blood": ("immune system",),
}

# Whole phrases rewritten before splitting into words, then single-word synonyms.
_PHRASES = (
    (r"natural killer", "nk"),
    (r"plasmacytoid dendritic", "pdc"),
    (r"\bt[ -]?regs?\b", "regulatory t"),
    (r"\bregs?\b", "regulatory"),
    (r"\bdendritic\b", "dc"),
)
_WORDS = {
    "mono": "monocyte",
    "eryth": "erythroid",
    "erythrocyte": "erythroid",
    "mk": "megakaryocyte",
    "α": "alpha",
    "β": "beta",
    "γ": "gamma",
    "δ": "delta",
    "ε": "epsilon",
    "dcs": "dc",
    "nks": "nk",
}
# Words that never distinguish cell types (the tissue's own adjective included).
_STOP = {"cell", "cells", "pancreatic", "human", "type", "of", "the", "and"}


def default_markers_dir() -> Path:
    return resources_dir() / "markers"


# ------------------------------------------------------------------------------------------- marker tables


def load_marker_tables(markers_dir: str | Path | None = None) -> pd.DataFrame:
    """All three tables as one long table: ``source, tissue, cell_type, gene`` (human, positive markers).

    A missing table file is skipped; no table at all raises :class:`CellerError`.
    """
    d = Path(markers_dir) if markers_dir is not None else default_markers_dir()
    readers = {"PanglaoDB": _panglao, "CellMarker": _cellmarker, "ScType": _sctype}
    parts = [readers[src](d / name) for src, name in MARKER_FILES.items() if (d / name).exists()]
    if not parts:
        msg = f"no marker table found in {d} (expected any of {', '.join(MARKER_FILES.values())})"
        raise CellerError(msg)
    out = pd.concat(parts, ignore_index=True)
    out["gene"] = out["gene"].astype(str).str.strip()
    out = out[out["gene"].ne("") & out["gene"].ne("nan")]
    return out.drop_duplicates().reset_index(drop=True)


def _panglao(path: Path) -> pd.DataFrame:
    t = pd.read_csv(path, sep="\t")
    t = t[t["species"].astype(str).str.contains("Hs")]
    t = t.sort_values("canonical marker", ascending=False, kind="stable")  # canonical markers first
    return pd.DataFrame(
        {
            "source": "PanglaoDB",
            "tissue": t["organ"],
            "cell_type": t["cell type"],
            "gene": t["official gene symbol"],
        }
    )


def _split_genes(t: pd.DataFrame, gene_col: str) -> pd.Series:
    return t[gene_col].fillna("").astype(str).str.split(",")


def _cellmarker(path: Path) -> pd.DataFrame:
    t = pd.read_csv(path)
    t = t.assign(gene=_split_genes(t, "Gene")).explode("gene")
    return pd.DataFrame(
        {"source": "CellMarker", "tissue": t["Tissue"], "cell_type": t["CT"], "gene": t["gene"]}
    )


def _sctype(path: Path) -> pd.DataFrame:
    t = pd.read_csv(path, sep="\t")
    t = t.assign(gene=_split_genes(t, "geneSymbolmore1")).explode("gene")  # geneSymbolmore2: negative markers
    return pd.DataFrame(
        {"source": "ScType", "tissue": t["tissueType"], "cell_type": t["cellName"], "gene": t["gene"]}
    )


def tissue_rows(table: pd.DataFrame, tissue: str) -> pd.DataFrame:
    """Rows of ``table`` for ``tissue`` (case-insensitive, plus :data:`TISSUE_ALIASES`)."""
    key = tissue.strip().lower()
    names = {key, *TISSUE_ALIASES.get(key, ())}
    return table[table["tissue"].astype(str).str.strip().str.lower().isin(names)]


# ----------------------------------------------------------------------------------------- name matching


def name_tokens(name: str) -> list[frozenset[str]]:
    """Normalised word sets of a cell-type name: one per variant (a parenthesised part is a second name)."""
    variants = [re.sub(r"\([^)]*\)", " ", name), *re.findall(r"\(([^)]*)\)", name)]
    out = []
    for v in variants:
        words = _words(v)
        if words:
            out.append(frozenset(words))
    return out


def _words(text: str) -> set[str]:
    s = text.lower().replace("\xa0", " ")
    for pat, rep in _PHRASES:
        s = re.sub(pat, f" {rep} ", s)
    s = re.sub(r"(?<=\w)-(?=\w)", " ", s)  # "Pre-B" -> "pre b"; a trailing "-" (CD25-) stays
    s = re.sub(r"(?<=[a-z])(?=[αβγδε])|(?<=[αβγδε])(?=[a-z])", " ", s)
    words = set()
    for w in re.split(r"[\s/,_;:()]+", s):
        w = w.strip(".'\"").rstrip("+")
        if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
            w = w[:-1]
        w = _WORDS.get(w, w)
        if w and w not in _STOP:
            words.update(w.split())
    return words


def match_cell_types(labels: Iterable[str], cell_types: Iterable[str]) -> dict[str, list[str]]:
    """For each label, the most specific ``cell_types`` whose every word occurs in the label (maybe none)."""
    candidates = [(ct, toks) for ct in dict.fromkeys(cell_types) for toks in name_tokens(str(ct))]
    out = {}
    for label in labels:
        label_words = set().union(*name_tokens(str(label)))
        fits = [(len(toks), ct) for ct, toks in candidates if toks <= label_words]
        best = max((n for n, _ in fits), default=0)
        out[label] = list(dict.fromkeys(ct for n, ct in fits if n == best))
    return out


def known_markers(
    labels: Sequence[str],
    table: pd.DataFrame,
    genes: Iterable[str] | None = None,
    *,
    tissue: str,
    n: int | None = 3,
) -> pd.DataFrame:
    """Up to ``n`` (None: all) known markers per label from the tables' rows for ``tissue``, restricted to
    ``genes`` when given (names matched case-insensitively, returned as spelt in ``genes``).

    Returns ``label, gene, votes, sources, matched`` (votes = matched table entries listing the gene; genes
    are ranked by votes, then by table order; a gene listed for several labels stays with those where it has
    the most votes) - an empty frame when nothing matches.
    """
    cols = ["label", "gene", "votes", "sources", "matched"]
    rows = tissue_rows(table, tissue)
    present = None if genes is None else {g.upper(): g for g in genes}
    found = []
    for source, part in rows.groupby("source", sort=False):
        for label, types in match_cell_types(labels, part["cell_type"].unique()).items():
            hit = part[part["cell_type"].isin(types)]
            for i, (ct, g) in enumerate(zip(hit["cell_type"], hit["gene"], strict=True)):
                if present is None or g.upper() in present:
                    found.append(
                        (label, g if present is None else present[g.upper()], source, f"{source}: {ct}", i)
                    )
    if not found:
        return pd.DataFrame(columns=cols)
    f = pd.DataFrame(found, columns=["label", "gene", "source", "matched", "order"])
    agg = f.groupby(["label", "gene"], sort=False).agg(
        votes=("matched", "size"),
        order=("order", "min"),
        sources=("source", lambda s: ", ".join(dict.fromkeys(s))),
        matched=("matched", lambda s: "; ".join(dict.fromkeys(s))),
    )
    agg = agg.reset_index()
    agg = agg[
        agg["votes"] == agg.groupby("gene")["votes"].transform("max")
    ]  # a gene goes where it scores most
    agg = agg.sort_values(["votes", "order"], ascending=[False, True], kind="stable")
    agg = agg.groupby("label", sort=False).head(n) if n is not None else agg
    agg["label"] = pd.Categorical(agg["label"], categories=list(dict.fromkeys(labels)))
    return agg.sort_values("label", kind="stable")[cols].assign(label=lambda d: d["label"].astype(str))
