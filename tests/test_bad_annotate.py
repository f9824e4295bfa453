"""Bad input to `celler annotate`: the query, the options, the outputs and a damaged model directory.

Each case checks the whole contract (:func:`conftest.fails`): exit 1, one line naming the file / option /
value, no traceback, nothing created, changed or removed (query, model, outputs). The model is conftest's
``pancreas_model``, shared with test_annotate.py; queries are 300 cells of Xin.
"""

import json
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from conftest import fails, set_x

from celler.cli import main

ROOT = Path(__file__).resolve().parents[1]
XIN = ROOT / "resources/data/pancreas_xin_scclassify.h5ad"


def _query(tmp_path, edit=None, name="q.h5ad"):
    a = ad.read_h5ad(XIN)[:300].copy()
    if edit:
        edited = edit(a)
        a = a if edited is None else edited
    a.write_h5ad(tmp_path / name)
    return name


@pytest.fixture
def annotate_fails(tmp_path, capfd, monkeypatch, pancreas_model):
    """``annotate_fails(query, *options, model=...)``: `celler annotate` in ``tmp_path`` (a copy of the model
    there as ``model/``), checked against the bad-input contract; returns the error line."""
    shutil.copytree(pancreas_model, tmp_path / "model")
    monkeypatch.chdir(tmp_path)

    def run(query, *extra, model="model", out="annotated.h5ad"):
        return fails(["annotate", query, "--model", model, "--out", out, "--device", "cpu", *extra], tmp_path,
                     capfd)
    return run


# ------------------------------------------------------------------------------------------------ the query


def _entry(value):
    def edit(a):
        x = a.X.toarray() if sp.issparse(a.X) else np.array(a.X)
        x[3, 5] = value
        a.X = x
    return edit


def _genes(a):
    a.var_names = [f"gene_{i:04d}" for i in range(a.n_vars)]


def _empty_name(a):
    a.var_names = ["", *a.var_names[1:]]


@pytest.mark.parametrize(("edit", "extra", "words"), [
    (lambda a: a[:0].copy(), [], "q.h5ad: matrix X has no cells"),
    (set_x(lambda a: sp.csr_matrix(a.shape, dtype=np.float32)), [], "q.h5ad: the expression matrix is all zero"),
    (_genes, [], "q.h5ad: no gene of the query is one of the model's"),
    (_entry(np.nan), [], "q.h5ad: expression matrix has NaN/inf values"),
    (_entry(-2.0), [], "q.h5ad: expression matrix has negative values"),
    (set_x(lambda a: np.asarray(a.X.todense() if sp.issparse(a.X) else a.X).astype(np.complex64)), [],
     "q.h5ad: matrix X holds complex values"),
    (set_x(lambda a: np.asarray(a.X.todense() if sp.issparse(a.X) else a.X) > 0), [],
     "q.h5ad: matrix X holds boolean values"),
    (set_x(lambda a: None), [], "q.h5ad: the file has no expression matrix X"),
    (_empty_name, [], "q.h5ad: gene 0 of var has an empty name"),
    (None, ["--batch-key", "donor"], "q.h5ad: batch column 'donor' not found in obs"),
    (None, ["--matrix", "raw"], "q.h5ad: matrix 'raw' requested but the file has no .raw"),
    (None, ["--matrix", "layers/counts"], "q.h5ad: matrix 'layers/counts' not found"),
    (None, ["--gene-symbols", "symbol"], "q.h5ad: var column 'symbol' (config key 'gene_symbols') not found"),
], ids=["zero-cells", "all-zero", "no-shared-genes", "nan", "negative", "complex", "bool", "no-X",
        "empty-gene-name", "no-batch-column", "no-raw", "no-layer", "no-symbol-column"])
def test_bad_query(tmp_path, annotate_fails, edit, extra, words):
    assert words in annotate_fails(_query(tmp_path, edit), *extra)


@pytest.mark.parametrize(("name", "data", "words"), [
    ("missing.h5ad", None, "missing.h5ad: query file not found"),
    ("query.csv", b"cell,gene\n", "query.csv: not an .h5ad file"),
    ("fake.h5ad", b"not hdf5", "fake.h5ad: cannot be read as AnnData"),
    ("empty.h5ad", b"", "empty.h5ad: cannot be read as AnnData"),
    ("cut.h5ad", "truncated", "cut.h5ad: cannot be read as AnnData"),
    ("dir.h5ad", "folder", "dir.h5ad: is a folder, not an .h5ad file"),
    ("loop.h5ad", "loop", "loop.h5ad: query file not found"),
], ids=["missing", "csv", "not-hdf5", "empty-file", "truncated", "folder", "symlink-loop"])
def test_unreadable_query(tmp_path, annotate_fails, name, data, words):
    if data == "folder":
        (tmp_path / name).mkdir()
    elif data == "loop":
        (tmp_path / name).symlink_to(name)
    data = None if data in ("folder", "loop") else data
    if data == "truncated":
        data = (tmp_path / _query(tmp_path, name="full.h5ad")).read_bytes()[:200_000]
    if data is not None:
        (tmp_path / name).write_bytes(data)
    assert words in annotate_fails(name)


# ---------------------------------------------------------------------------------------------- the options


@pytest.mark.parametrize(("extra", "words"), [
    (["--threshold", "2"], "threshold must be between 0 and 1, got 2.0"),
    (["--min-prop", "-1"], "min_prop must be between 0 and 1, got -1.0"),
    (["--top-k", "0"], "top_k must be >= 1, got 0"),
    (["--batch-size", "lots"], "--batch-size must be a positive integer or auto, got 'lots'"),
    (["--device", "tpu"], "device 'tpu' is not a device; use auto, cpu or cuda"),
    (["--device", "cuda:7"], "device 'cuda:7': " + ("no CUDA GPU is visible here" if not torch.cuda.is_available()
                                                     else "only")),
], ids=["threshold", "min-prop", "top-k", "batch-size", "unknown-device", "missing-gpu-index"])
def test_bad_option(tmp_path, annotate_fails, extra, words):
    assert words in annotate_fails(_query(tmp_path), *extra)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu(tmp_path, annotate_fails):
    assert "device 'cuda': no CUDA GPU is visible here; use --device cpu" in annotate_fails(
        _query(tmp_path), "--device", "cuda")


# ---------------------------------------------------------------------------------------------- the outputs


def _folder_with_a_file(tmp_path, name):
    (tmp_path / name).mkdir()
    (tmp_path / name / "keep.txt").write_text("mine")
    return name


@pytest.mark.parametrize(("out", "extra", "words"), [
    ("q.h5ad", [], "q.h5ad: refusing to write the output there: it is the input q.h5ad"),
    ("a.h5ad", ["--csv", "q.h5ad"], "q.h5ad: refusing to write the output there: it is the input q.h5ad"),
    ("a.h5ad", ["--csv", "model"], "model: refusing to write the output there: it is the input model"),
    ("a.h5ad", ["--csv", "model/.."], "refusing to replace the current folder"),
    ("a.h5ad", ["--csv", "mydir"], "mydir: already exists and is a folder; refusing to replace it with an"),
    ("dir.h5ad", [], "dir.h5ad: already exists and is a folder; refusing to replace it"),
    ("x.h5ad", ["--csv", "x.h5ad"], "x.h5ad: given for two outputs"),
    ("a.csv", [], "a.csv: the annotated copy must be an .h5ad file"),
    ("q.h5ad", ["--force"], "it is the input q.h5ad"),
    ("a.h5ad", ["--csv", "q.h5ad", "--force"], "it is the input q.h5ad"),
], ids=["out-is-query", "csv-is-query", "csv-is-model", "csv-is-cwd", "csv-is-folder", "out-is-folder",
        "same-path-twice", "out-not-h5ad", "force-out-is-query", "force-csv-is-query"])
def test_outputs_never_replace_inputs_or_folders(tmp_path, annotate_fails, out, extra, words):
    _folder_with_a_file(tmp_path, "mydir")
    _folder_with_a_file(tmp_path, "dir.h5ad")
    assert words in annotate_fails(_query(tmp_path), *extra, out=out)


def test_outputs_replace_files_and_force_a_folder(tmp_path, monkeypatch, pancreas_model):
    """File outputs replace older files (a rerun); --force lets the CSV replace a folder; the query stays."""
    monkeypatch.chdir(tmp_path)
    query = _query(tmp_path)
    before = (tmp_path / query).read_bytes()
    (tmp_path / "a.h5ad").write_text("an older annotated copy")
    _folder_with_a_file(tmp_path, "table.csv")
    main(["annotate", query, "--model", str(pancreas_model), "--out", "a.h5ad", "--csv", "table.csv",
          "--force", "--device", "cpu"])
    assert ad.read_h5ad(tmp_path / "a.h5ad").obs["celler_label"].notna().all()
    assert (tmp_path / "table.csv").is_file()
    assert (tmp_path / query).read_bytes() == before


# --------------------------------------------------------------------------------- a damaged model directory


def _write(name, content):
    def damage(model: Path):
        (model / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return damage


def _truncate(name):
    def damage(model: Path):
        data = (model / name).read_bytes()
        (model / name).write_bytes(data[:len(data) // 2])
    return damage


def _remove(name):
    def damage(model: Path):
        (model / name).unlink()
    return damage


def _edit_json(name, edit):
    def damage(model: Path):
        value = json.loads((model / name).read_text())
        (model / name).write_text(json.dumps(edit(value)))
    return damage


def _drop(key):
    def edit(d):
        d.pop(key)
        return d
    return edit


def _wrong_weights(model: Path):
    blob = torch.load(model / "model.pt", weights_only=True)
    blob["state_dict"] = {k: v[:1] for k, v in blob["state_dict"].items()}
    torch.save(blob, model / "model.pt")


@pytest.mark.parametrize(("damage", "words"), [
    (_write("model.pt", b"garbage"), "model/model.pt: cannot be loaded"),
    (_truncate("model.pt"), "model/model.pt: cannot be loaded"),
    (_wrong_weights, "model/model.pt: incomplete or inconsistent model"),
    (_remove("model.pt"), "model: missing model.pt"),
    (_write("config.json", "{not json"), "model/config.json: cannot be read as JSON"),
    (_truncate("config.json"), "model/config.json: cannot be read as JSON"),
    (_write("labels.json", b"\x89PNG"), "model/labels.json: cannot be read as JSON"),
    (_write("vocab.json", "[1, 2]"), "model/vocab.json: not a vocabulary"),
    (_truncate("genes.json"), "model/genes.json: cannot be read as JSON"),
    (_write("genes.json", '{"a": 1}'), "model/genes.json: expected a JSON list"),
    (_truncate("calibration.json"), "model/calibration.json: cannot be read as JSON"),
    (_edit_json("token_meta.json", _drop("n_bins")), "model/token_meta.json: n_bins is None"),
    (_write("token_meta.json", "[]"), "model/token_meta.json: expected a JSON object"),
    (_remove("token_meta.json"), "model: missing token_meta.json"),
], ids=["model.pt-garbage", "model.pt-truncated", "model.pt-wrong-weights", "model.pt-missing",
        "config-not-json", "config-truncated", "labels-binary", "vocab-a-list", "genes-truncated",
        "genes-not-a-list", "calibration-truncated", "token-meta-no-n_bins", "token-meta-a-list",
        "token-meta-missing"])
def test_damaged_model(tmp_path, annotate_fails, damage, words):
    damage(tmp_path / "model")
    assert words in annotate_fails(_query(tmp_path))


@pytest.mark.parametrize(("model", "words"), [
    ("nowhere", "nowhere: model directory not found"),
    ("q.h5ad", "q.h5ad: model directory not found"),
], ids=["missing", "a-file"])
def test_not_a_model_directory(tmp_path, annotate_fails, model, words):
    assert words in annotate_fails(_query(tmp_path), model=model)
