"""The gene vocabulary and the mapping of a dataset's genes onto it.

The default vocabulary is the public scGPT whole-human one (60,694 genes + ``<pad>``, ``<cls>``, ``<eoc>``),
so token ids here and in scGPT checkpoints mean the same genes.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from celler.errors import CellerError

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ("<pad>", "<cls>", "<eoc>")
ENSEMBL_RE = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")


class Vocab:
    """An ordered token list (genes, then special tokens, then any ``extend`` genes) with id lookup."""

    def __init__(self, token_to_id: dict[str, int]):
        ids = sorted(token_to_id.values())
        if ids != list(range(len(ids))):
            msg = "vocabulary ids must be 0..N-1 without gaps"
            raise CellerError(msg)
        self.token_to_id = dict(token_to_id)
        self.tokens = [None] * len(ids)
        for tok, i in self.token_to_id.items():
            self.tokens[i] = tok
        for tok in SPECIAL_TOKENS:
            if tok not in self.token_to_id:
                self.token_to_id[tok] = len(self.tokens)
                self.tokens.append(tok)

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        path = Path(path)
        try:
            table = json.loads(path.read_text())
        except (OSError, ValueError) as e:  # missing, not text, not JSON
            msg = f"{path}: cannot read the vocabulary ({type(e).__name__}); expected a JSON object gene -> id"
            raise CellerError(msg) from e
        if not isinstance(table, dict) or not all(isinstance(i, int) for i in table.values()):
            msg = f"{path}: not a vocabulary; expected a JSON object gene -> integer id"
            raise CellerError(msg)
        return cls(table)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.token_to_id))

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: str) -> bool:
        return token in self.token_to_id

    @property
    def pad_id(self) -> int:
        return self.token_to_id["<pad>"]

    @property
    def cls_id(self) -> int:
        return self.token_to_id["<cls>"]

    def extended(self, new_tokens: list[str]) -> Vocab:
        """A copy with ``new_tokens`` appended after every existing id (existing ids never move)."""
        t2i = dict(self.token_to_id)
        for tok in new_tokens:
            if tok not in t2i:
                t2i[tok] = len(t2i)
        return Vocab(t2i)


@dataclass
class GeneMapping:
    """How each dataset gene maps to a token id; ``table`` has one row per dataset gene."""

    table: pd.DataFrame  # columns: gene, symbol, token, token_id, source ('symbol'|'ensembl'|'extend'|'unmapped')
    vocab: Vocab

    @property
    def n_mapped(self) -> int:
        return int((self.table["token_id"] >= 0).sum())

    def summary(self) -> pd.DataFrame:
        """Counts per source, plus the number of distinct tokens after merging duplicates."""
        counts = self.table["source"].value_counts()
        rows = [{"what": f"genes via {k}", "n": int(v)} for k, v in counts.items()]
        rows.append({"what": "genes in dataset", "n": len(self.table)})
        rows.append({"what": "distinct tokens", "n": int(self.table.loc[self.table.token_id >= 0, "token_id"].nunique())})
        rows.append({"what": "vocabulary size", "n": len(self.vocab)})
        return pd.DataFrame(rows)


def load_ensembl_table(path: str | Path | None) -> dict[str, str]:
    """Ensembl gene id (without version) -> symbol, from a TSV with columns ``ensembl_id, symbol``."""
    if path is None:
        return {}
    t = pd.read_csv(path, sep="\t", dtype=str)
    return dict(zip(t["ensembl_id"].str.split(".").str[0], t["symbol"], strict=True))


def ensembl_column(var: pd.DataFrame) -> str | None:
    """The first ``var`` column whose values look like Ensembl gene ids (the fallback for gene mapping)."""
    for col in var.columns:
        vals = var[col].astype(str)
        if len(vals) and vals.head(50).map(lambda s: bool(ENSEMBL_RE.match(s))).mean() > 0.8:
            return col
    return None


def map_genes(
    var: pd.DataFrame,
    vocab: Vocab,
    *,
    mode: str = "match",
    symbol_column: str | None = None,
    ensembl_to_symbol: dict[str, str] | None = None,
    min_overlap: float = 0.3,
    source: str = "dataset",
) -> GeneMapping:
    """Map the genes in ``var`` (index = var_names) to vocabulary token ids.

    Order of attempts per gene: its symbol (``symbol_column`` or the var name), exact then case-insensitive;
    then its Ensembl id (from the var name or an Ensembl-looking ``var`` column) through ``ensembl_to_symbol``.
    Several genes hitting one token are merged later (their values summed). ``mode="extend"`` appends
    unmapped genes as new tokens instead of dropping them, for data outside the vocabulary.
    Raises :class:`CellerError` when fewer than ``min_overlap`` of the genes map in ``match`` mode.
    """
    if mode not in ("match", "extend"):
        msg = f"vocab mode must be 'match' or 'extend', got {mode!r}"
        raise CellerError(msg)
    if symbol_column is not None and symbol_column not in var.columns:
        msg = f"{source}: var column {symbol_column!r} (config key 'gene_symbols') not found; have {list(var.columns)}"
        raise CellerError(msg)
    genes = var.index.astype(str)
    symbols = var[symbol_column].astype(str).to_numpy() if symbol_column else genes.to_numpy()
    ens_col = ensembl_column(var)
    ensembl = var[ens_col].astype(str).to_numpy() if ens_col else np.where(
        [bool(ENSEMBL_RE.match(g)) for g in genes], genes, ""
    )
    ensembl_to_symbol = ensembl_to_symbol or {}
    upper = {}
    for tok, i in vocab.token_to_id.items():
        upper.setdefault(tok.upper(), i)  # first id wins on a case collision; exact matches are tried first

    token_ids = np.full(len(genes), -1, dtype=np.int64)
    how = np.array(["unmapped"] * len(genes), dtype=object)
    for k, sym in enumerate(symbols):
        tid = vocab.token_to_id.get(sym, upper.get(sym.upper(), -1))
        if tid >= 0:
            token_ids[k], how[k] = tid, "symbol"
            continue
        ens = ensembl[k].split(".")[0] if ensembl[k] else ""
        alt = ensembl_to_symbol.get(ens)
        if alt is not None:
            tid = vocab.token_to_id.get(alt, upper.get(alt.upper(), -1))
            if tid >= 0:
                token_ids[k], how[k] = tid, "ensembl"

    frac = float((token_ids >= 0).mean()) if len(genes) else 0.0
    if mode == "match" and frac < min_overlap:
        example = ", ".join(genes[:3])
        msg = (
            f"{source}: only {(token_ids >= 0).sum()} of {len(genes)} genes ({frac:.1%}) are in the vocabulary "
            f"(minimum {min_overlap:.0%}; genes look like {example}); use gene symbols or Ensembl ids, "
            "set gene_symbols: to the var column with symbols, or use vocab_mode: extend"
        )
        raise CellerError(msg)
    if mode == "extend":
        new = [str(s) for s, t in zip(symbols, token_ids, strict=True) if t < 0]
        vocab = vocab.extended(new)
        for k in np.flatnonzero(token_ids < 0):
            token_ids[k], how[k] = vocab.token_to_id[str(symbols[k])], "extend"
    merged = pd.Series(token_ids[token_ids >= 0]).value_counts()
    merged = merged[merged > MAX_GENES_PER_TOKEN]
    if len(merged):
        log.warning("%s: %d vocabulary genes each receive more than %d of the input's genes (e.g. %s from %d); "
                    "their values are summed into one gene: check the gene names (or the gene_symbols column)",
                    source, len(merged), MAX_GENES_PER_TOKEN, vocab.tokens[merged.index[0]], merged.iloc[0])
    table = pd.DataFrame({
        "gene": genes,
        "symbol": symbols,
        "token": [vocab.tokens[t] if t >= 0 else "" for t in token_ids],
        "token_id": token_ids,
        "source": how,
    })
    return GeneMapping(table=table, vocab=vocab)


#: more input genes than this on one vocabulary gene is a naming problem, not a symbol / Ensembl duplicate
MAX_GENES_PER_TOKEN = 2


def merge_matrix(mapping_ids: np.ndarray):
    """Sparse (genes x distinct tokens) 0/1 matrix that sums duplicate genes onto one column.

    Returns ``(M, token_ids)``: ``X @ M`` gives one column per distinct token id in ``token_ids`` (sorted);
    unmapped genes (id < 0) get no column.
    """
    import scipy.sparse as sp

    keep = np.flatnonzero(mapping_ids >= 0)
    token_ids, col = np.unique(mapping_ids[keep], return_inverse=True)
    m = sp.csr_matrix(
        (np.ones(len(keep), dtype=np.float32), (keep, col)), shape=(len(mapping_ids), len(token_ids))
    )
    return m, token_ids


def read_mapping(mapping_path, vocab_path) -> GeneMapping:
    """The gene mapping a ``map_genes`` stage wrote (TSV) with its vocabulary."""
    table = pd.read_csv(mapping_path, sep="\t", dtype={"gene": str, "symbol": str, "token": str}, keep_default_na=False)
    return GeneMapping(table=table, vocab=Vocab.load(vocab_path))
