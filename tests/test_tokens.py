"""Token store: round trip on real data, random access, per-batch edges saved, ConcatStore."""

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from celler.config import dataset_spec
from celler.data.binning import digitize
from celler.data.io import MatrixReader
from celler.data.qc import run_qc
from celler.data.tokens import ConcatStore, TokenStore, tokenize
from celler.data.vocab import Vocab, map_genes

KANG = "resources/data/pbmc_kang2018_8k_counts_muscat.h5ad"


@pytest.fixture(scope="module")
def kang_store(tmp_path_factory):
    spec = dataset_spec("kang", {"inputs": [KANG], "label": "celltype", "batch": "donor",
                                 "split": {"by": "column", "column": "donor", "test_values": ["1015"]},
                                 "qc": {"min_genes": 300, "min_cells": 3}})
    cells, genes, _ = run_qc(spec)
    with MatrixReader(KANG) as r:
        mapping = map_genes(r.var, Vocab.load("resources/vocab.json"))
    out = tmp_path_factory.mktemp("tok") / "tokens"
    tokenize(spec, cells, genes, mapping, out, n_bins=51, chunk_size=1000)  # several chunks
    return TokenStore(out), cells, genes, mapping


def test_round_trip_matches_the_input_matrix(kang_store):
    store, cells, genes, mapping = kang_store
    a = ad.read_h5ad(KANG)
    kept = cells.index[cells.kept]
    assert len(store) == len(kept) and list(store.cells.index) == list(kept)
    vocab = store.vocab()
    edges = store.bin_edges()
    for i in (0, 17, len(store) - 1):
        cell = kept[i]
        row = a[cell].X
        row = row.toarray().ravel() if sp.issparse(row) else np.ravel(row)
        lib = row.sum()
        gene_ok = genes.reindex(a.var_names)["kept"].to_numpy() & (mapping.table.token_id.to_numpy() >= 0)
        nz = np.flatnonzero((row > 0) & gene_ok)
        expected_tokens = np.sort([vocab.token_to_id[g] for g in a.var_names[nz]])
        tok, bins = store[i]
        assert np.array_equal(tok, expected_tokens)
        values = np.log1p(row[nz] / lib * 1e4)
        order = np.argsort([vocab.token_to_id[g] for g in a.var_names[nz]])
        expected_bins = digitize(values[order], edges[str(cells.loc[cell, "batch"])])
        assert np.array_equal(bins, expected_bins)
    assert set(store.cells["split"]) == {"train", "test"}
    assert store.cells.loc[store.cells.split == "test", "batch"].astype(str).eq("1015").all()


def test_edges_saved_per_donor_and_they_differ(kang_store):
    edges = kang_store[0].bin_edges()
    assert set(edges) == {"1015", "1016", "1244", "1256", "1488"}
    assert len(edges["1015"]) == 49
    assert not np.allclose(edges["1015"], edges["1488"])


def test_lengths_and_memmap(kang_store):
    store = kang_store[0]
    assert isinstance(store.genes, np.memmap)
    assert np.array_equal(store.lengths, store.cells["n_tokens"].to_numpy())
    assert all(len(store[i][0]) == store.lengths[i] for i in range(0, len(store), 997))
    assert store[5][1].min() >= 1 and store[5][1].max() <= 50


def test_concat_store_offsets(kang_store):
    store = kang_store[0]
    both = ConcatStore([store, store])
    assert len(both) == 2 * len(store)
    assert np.array_equal(both[len(store) + 3][0], store[3][0])
    assert len(both.cells) == 2 * len(store)
