"""Gene-vocabulary mapping: case, Ensembl ids, duplicates, low overlap, extend mode."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from celler.data.vocab import Vocab, load_ensembl_table, map_genes, merge_matrix
from celler.errors import CellerError


@pytest.fixture(scope="module")
def vocab():
    return Vocab.load("resources/vocab.json")


def test_default_vocab_is_scgpt_census_plus_specials(vocab):
    assert len(vocab) == 60697
    assert (vocab.pad_id, vocab.cls_id, vocab.token_to_id["<eoc>"]) == (60694, 60695, 60696)


def test_symbols_match_case_insensitively_exact_first(vocab):
    var = pd.DataFrame(index=["CD3E", "cd3e", "Ms4a1", "NOT_A_GENE"])
    m = map_genes(var, vocab, min_overlap=0)
    ids = m.table.token_id.to_numpy()
    assert ids[0] == ids[1] == vocab.token_to_id["CD3E"]
    assert ids[2] == vocab.token_to_id["MS4A1"]
    assert ids[3] == -1 and m.table.source[3] == "unmapped"


def test_ensembl_ids_map_through_the_table(vocab):
    table = load_ensembl_table("resources/ensembl_to_symbol.tsv.gz")
    # real pbmc3k ids: ENSG00000167286 is CD3D, ENSG00000156738 is MS4A1
    var = pd.DataFrame(index=["ENSG00000167286.5", "ENSG00000156738"])
    m = map_genes(var, vocab, ensembl_to_symbol=table)
    assert m.table.token.tolist() == ["CD3D", "MS4A1"]
    assert set(m.table.source) == {"ensembl"}


def test_ensembl_column_is_used_when_symbols_miss(vocab):
    table = load_ensembl_table("resources/ensembl_to_symbol.tsv.gz")
    var = pd.DataFrame({"gene_ids": ["ENSG00000167286", "ENSG00000156738"]}, index=["oldname1", "oldname2"])
    m = map_genes(var, vocab, ensembl_to_symbol=table)
    assert m.table.token.tolist() == ["CD3D", "MS4A1"]


def test_duplicates_are_merged_by_summing(vocab):
    var = pd.DataFrame(index=["CD3E", "cd3e", "MS4A1"])
    m = map_genes(var, vocab)
    merge, token_ids = merge_matrix(m.table.token_id.to_numpy())
    assert len(token_ids) == 2
    x = sp.csr_matrix(np.array([[1.0, 2.0, 5.0]]))
    merged = (x @ merge).toarray()[0]
    assert merged[list(token_ids).index(vocab.token_to_id["CD3E"])] == 3.0


def test_low_overlap_is_a_clear_error(vocab):
    var = pd.DataFrame(index=[f"gene_{i:03d}" for i in range(500)])
    with pytest.raises(CellerError, match=r"only 0 of 500 genes .* vocab_mode: extend"):
        map_genes(var, vocab, source="cbmc.h5ad")


def test_extend_appends_new_tokens_and_keeps_old_ids(vocab):
    var = pd.DataFrame(index=["CD3E", "gene_000", "gene_001"])
    m = map_genes(var, vocab, mode="extend")
    assert len(m.vocab) == len(vocab) + 2
    assert m.vocab.token_to_id["CD3E"] == vocab.token_to_id["CD3E"]
    assert m.vocab.token_to_id["gene_000"] == len(vocab)
    assert m.table.source.tolist() == ["symbol", "extend", "extend"]
    assert m.vocab.cls_id == vocab.cls_id


def test_real_pbmc3k_mapping(vocab):
    from celler.data.io import MatrixReader

    with MatrixReader("resources/data/pbmc3k_raw_unlabelled_desc.h5ad") as r:
        m = map_genes(r.var, vocab, ensembl_to_symbol=load_ensembl_table("resources/ensembl_to_symbol.tsv.gz"))
    assert 0.8 < m.n_mapped / len(m.table) < 0.9  # 27,275 of 32,738 symbols are in the census vocabulary
