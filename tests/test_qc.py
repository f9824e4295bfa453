"""QC: thresholds, reasons, raw-vs-log detection, splits."""

import numpy as np
import pandas as pd
import pytest

from celler.config import dataset_spec
from celler.data.qc import detect_kind, run_qc
from celler.data.splits import stratified_split
from celler.errors import CellerError

KANG = "resources/data/pbmc_kang2018_8k_counts_muscat.h5ad"
WANG = "resources/data/pancreas_wang_scclassify.h5ad"
XIN = "resources/data/pancreas_xin_scclassify.h5ad"


def test_detect_kind_counts_vs_log():
    assert detect_kind(np.array([1.0, 2.0, 7.0], np.float32)) == "counts"
    assert detect_kind(np.array([0.69, 1.1, 2.3], np.float32)) == "log"


def test_thresholds_remove_exactly_the_failing_cells():
    spec = dataset_spec("kang", {"inputs": [KANG], "label": "celltype",
                                 "qc": {"min_genes": 400, "max_pct_mito": 5, "min_cells": 10}})
    cells, genes, summary = run_qc(spec)
    assert cells.loc[cells.n_genes < 400, "reason"].eq("min_genes").all()
    assert not cells.loc[cells.kept, "n_genes"].lt(400).any()
    assert not cells.loc[cells.kept, "pct_mito"].gt(5).any()
    # min_genes is checked first, so mito removals all passed min_genes
    assert cells.loc[cells.reason == "max_pct_mito", "n_genes"].ge(400).all()
    assert genes.loc[genes.kept, "n_cells"].ge(10).all()
    assert not genes.loc[~genes.kept, "n_cells"].ge(10).any()
    row = summary.set_index("step")
    assert row.loc["cells: min_genes", "removed"] == (cells.reason == "min_genes").sum() > 0
    assert row.loc["cells: max_pct_mito", "left"] == cells.kept.sum()


def test_gene_counts_are_over_kept_cells_only():
    spec = dataset_spec("kang", {"inputs": [KANG], "label": "celltype", "qc": {"min_genes": 1000}})
    cells, genes, _ = run_qc(spec)
    import anndata as ad

    a = ad.read_h5ad(KANG)
    kept = a[cells.kept.to_numpy()]
    expected = np.asarray((kept.X > 0).sum(axis=0)).ravel()
    assert np.array_equal(genes["n_cells"].to_numpy(), expected)


def test_drop_labels_and_split_by_file():
    spec = dataset_spec("pancreas", {"inputs": [{"path": WANG, "split": "train"}, {"path": XIN, "split": "test"}],
                                     "label": "celltype", "batch": "batch", "drop_labels": ["acinar"],
                                     "split": {"by": "file"}, "qc": {"min_genes": 10}})
    cells, genes, _ = run_qc(spec)
    assert (cells.loc[cells.label == "acinar", "reason"] == "dropped label").all()
    assert cells.loc[cells.label == "acinar", "split"].eq("excluded").all()
    assert set(cells.loc[cells.input.str.contains("wang") & cells.kept, "split"]) == {"train"}
    assert set(cells.loc[cells.input.str.contains("xin"), "split"]) == {"test"}
    assert (cells.kind == "log").all()
    assert len(genes) == 219  # intersection: all Wang genes are in Xin


def test_count_thresholds_ignore_log_input():
    spec = dataset_spec("wang", {"inputs": [WANG], "label": "celltype", "qc": {"min_counts": 1e9, "min_genes": 0}})
    cells, _, _ = run_qc(spec)
    assert cells.kept.all()


def test_nothing_left_after_qc_is_a_clear_error():
    spec = dataset_spec("kang", {"inputs": [KANG], "label": "celltype", "qc": {"min_genes": 10**6}})
    with pytest.raises(CellerError, match="no cells left after QC"):
        run_qc(spec)


def test_stratified_split_keeps_every_class_in_train_and_is_seeded():
    labels = pd.Series(["a"] * 50 + ["b"] * 10 + ["c"], index=[f"c{i}" for i in range(61)])
    s1, s2, s3 = (stratified_split(labels, 0.3, seed) for seed in (0, 0, 1))
    assert s1.equals(s2) and not s1.equals(s3)
    assert (s1[labels == "a"] == "test").sum() == 15
    assert (s1[labels == "b"] == "test").sum() == 3
    assert s1["c60"] == "train"


def test_split_by_column_is_leave_one_donor_out():
    spec = dataset_spec("kang", {"inputs": [KANG], "label": "celltype", "batch": "donor",
                                 "split": {"by": "column", "column": "donor", "test_values": ["1015"]},
                                 "qc": {"min_genes": 0}})
    cells, _, _ = run_qc(spec)
    assert set(cells.loc[cells.split == "test", "batch"]) == {"1015"}
    assert "1015" not in set(cells.loc[cells.split == "train", "batch"])


def test_multi_file_messages_name_the_files(tmp_path):
    """Errors about how several inputs fit together name the files, not the dataset's config name."""
    import anndata as ad
    import scipy.sparse as sp

    def write(name, genes, cells):
        a = ad.AnnData(X=sp.csr_matrix(np.ones((len(cells), len(genes)), np.float32)),
                       obs=pd.DataFrame({"celltype": ["a"] * len(cells)}, index=cells),
                       var=pd.DataFrame(index=genes))
        a.write_h5ad(tmp_path / name)
        return str(tmp_path / name)

    one = write("one.h5ad", ["CD3E", "CD19"], ["c1", "c2"])
    other = write("two.h5ad", ["INS", "GCG"], ["c3", "c4"])
    same = write("same.h5ad", ["CD3E", "CD19"], ["c1", "c9"])
    for inputs, words in (([one, other], "the input files share no gene names"),
                          ([one, same], "cell name 'c1' occurs in more than one of these files")):
        spec = dataset_spec("blood", {"inputs": inputs, "label": "celltype"})
        with pytest.raises(CellerError, match=words) as e:
            run_qc(spec)
        assert inputs[0] in str(e.value) and inputs[1] in str(e.value) and "blood" not in str(e.value)
