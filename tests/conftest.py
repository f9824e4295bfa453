"""Shared pytest fixtures."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def pbmc3k_tokens(tmp_path_factory):
    """Path of a token store of the real pbmc3k cells (QC'd, 51 bins), built once per session (~3 s)."""
    from celler.config import dataset_spec
    from celler.io import MatrixReader
    from celler.qc import run_qc
    from celler.tokens import tokenize
    from celler.vocab import Vocab, map_genes

    spec = dataset_spec("pbmc3k", {"inputs": [str(ROOT / "resources/data/pbmc3k_raw_unlabelled_desc.h5ad")],
                                   "qc": {"min_genes": 200, "min_cells": 3}})
    cells, genes, _ = run_qc(spec)
    mapping = map_genes(MatrixReader(spec.inputs[0].path).var, Vocab.load(ROOT / "resources/vocab.json"))
    return tokenize(spec, cells, genes, mapping, tmp_path_factory.mktemp("pbmc3k") / "tokens", n_bins=51)
