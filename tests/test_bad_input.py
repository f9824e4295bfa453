"""Bad input to `celler tokenize`: one clear line naming the file and the problem, exit 1, no traceback, no
partial output, the input (and every file around it) untouched; outputs replace only what Celler wrote."""

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import TIMEOUT, fails, set_x, tree

from celler.cli import main
from celler.data.io import OUTPUT_MARKER

REPO = Path(__file__).resolve().parents[1]
KANG = REPO / "resources/data/pbmc_kang2018_8k_counts_muscat.h5ad"


def _small(tmp_path, name="in.h5ad", edit=None, **write):
    a = ad.read_h5ad(KANG)[:300].copy()
    if edit:
        edited = edit(a)
        a = a if edited is None else edited
    path = tmp_path / name
    a.write_h5ad(path, **write)
    return path


def _digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _run(tmp_path, h5ad, *extra):
    """`celler tokenize` as a separate process (the real entry point): the same contract as :func:`fails`."""
    out = tmp_path / "out"
    before = tree(tmp_path)
    cmd = [sys.executable, "-m", "celler.cli", "tokenize", str(h5ad), "--out", str(out), "--min-genes", "10",
           *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False, timeout=TIMEOUT)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr  # one line: not also a timestamped log line
    assert proc.stderr.startswith("celler: error:"), proc.stderr
    assert tree(tmp_path) == before, "a failed run must leave no output and the input untouched"
    return proc.stderr.strip()


def _set_value(value):
    def edit(a):
        a.X = a.X.toarray()
        a.X[3, 5] = value
    return edit


@pytest.fixture
def tokenize_fails(tmp_path, capfd, monkeypatch):
    """``tokenize_fails(h5ad, *options, out="out")``: run `celler tokenize` in ``tmp_path`` (the current
    folder), check the bad-input contract (:func:`fails`) and return the error line."""
    monkeypatch.chdir(tmp_path)

    def run(h5ad, *extra, out="out"):
        return fails(["tokenize", h5ad, "--out", out, "--min-genes", "10", *extra], tmp_path, capfd)
    return run


def _tokenize_ok(h5ad, out, *extra):
    main(["tokenize", str(h5ad), "--out", str(out), "--min-genes", "10", *extra])


# ----------------------------------------------------------------------------- files that are not .h5ad


def test_missing_file_is_one_line_from_the_real_command(tmp_path):
    msg = _run(tmp_path, tmp_path / "nope.h5ad")
    assert "nope.h5ad: file not found" in msg
    assert "config.yaml" not in msg  # the CLI has no config file


def test_zero_cells_from_the_real_command(tmp_path):
    assert "in.h5ad: matrix X has no cells" in _run(tmp_path, _small(tmp_path, edit=lambda a: a[:0].copy()))


def _link_loop(tmp_path):
    (tmp_path / "loop.h5ad").symlink_to("loop.h5ad")
    return "loop.h5ad"


def _broken_link(tmp_path):
    (tmp_path / "gone.h5ad").symlink_to("nowhere.h5ad")
    return "gone.h5ad"


def _folder(tmp_path):
    (tmp_path / "folder.h5ad").mkdir()
    (tmp_path / "folder.h5ad" / "x").write_text("x")
    return "folder.h5ad"


def _bytes(name, data):
    def make(tmp_path):
        (tmp_path / name).write_bytes(data(tmp_path) if callable(data) else data)
        return name
    return make


def _truncated(tmp_path):
    return _small(tmp_path, "full.h5ad").read_bytes()[:600_000]


def _damaged_gzip_chunk(tmp_path):
    """A gzip-compressed h5ad whose first compressed chunk of X's values is overwritten with zeros."""
    path = _small(tmp_path, "gz.h5ad", compression="gzip")
    with h5py.File(path) as f:
        offset = f["X/data"].id.get_chunk_info(0).byte_offset
    data = bytearray(path.read_bytes())
    data[offset + 20:offset + 120] = bytes(100)
    path.unlink()
    return bytes(data)


@pytest.mark.parametrize(("make", "words"), [
    (_link_loop, ["loop.h5ad: a symbolic link that leads nowhere"]),
    (_broken_link, ["gone.h5ad: a symbolic link that leads nowhere"]),
    (_folder, ["folder.h5ad: is a folder, not an .h5ad file"]),
    (_bytes("x.csv", b"a,b\n1,2\n"), ["x.csv: not an .h5ad file"]),
    (_bytes("broken.h5ad", b"not hdf5 at all"), ["broken.h5ad: cannot be read as AnnData"]),
    (_bytes("empty.h5ad", b""), ["empty.h5ad: cannot be read as AnnData"]),
    (_bytes("cut.h5ad", _truncated), ["cut.h5ad: cannot be read as AnnData", "truncated"]),
    (_bytes("bad.h5ad", _damaged_gzip_chunk), ["bad.h5ad: rows 0-300 of the matrix cannot be", "damaged"]),
], ids=["symlink-loop", "broken-symlink", "folder", "csv", "not-hdf5", "empty-file", "truncated",
        "bad-gzip-chunk"])
def test_unreadable_input(tmp_path, tokenize_fails, make, words):
    msg = tokenize_fails(make(tmp_path))
    assert all(w in msg for w in words), msg
    assert "config.yaml" not in msg


# ---------------------------------------------------------------------------------- bad matrix contents


def _dense(value, dtype=np.float32):
    def edit(a):
        x = a.X.toarray().astype(dtype)
        x[3, 5] = value
        a.X = x
    return edit


def _as(dtype):
    def edit(a):
        a.X = a.X.toarray().astype(dtype)
    return edit


def _names(first):
    def edit(a):
        a.var_names = [first, *a.var_names[1:]]
    return edit


def _obs(column, value):
    def edit(a):
        a.obs[column] = value
    return edit


def _cell_names(a):
    a.obs_names = ["same", "same", *a.obs_names[2:]]


def _unknown_genes(a):
    a.var_names = [f"gene_{i:04d}" for i in range(a.n_vars)]


@pytest.mark.parametrize(("edit", "extra", "words"), [
    (_dense(np.nan), [], "expression matrix has NaN/inf values"),
    (_dense(np.inf), [], "expression matrix has NaN/inf values"),
    (_dense(-1.0), [], "expression matrix has negative values"),
    (set_x(lambda a: np.full(a.shape, 3e38, np.float32)), [], "values too large (max 3e+38)"),
    (_dense(1e30), [], "values too large (max 1e+30"),
    (_as(bool), [], "matrix X holds boolean values"),
    (_as(np.complex64), [], "matrix X holds complex values"),
    (lambda a: a[:0].copy(), [], "matrix X has no cells"),
    (lambda a: a[:, :0].copy(), [], "matrix X has no genes"),
    (set_x(lambda a: sp.csr_matrix(a.shape, dtype=np.float32)), [], "the expression matrix (X) is all zeros"),
    (set_x(lambda a: None), [], "the file has no expression matrix X"),
    (_names(""), [], "gene 0 of var has an empty name"),
    (_names("  "), [], "gene 0 of var has an empty name"),
    (_obs("celltype", ""), ["--label", "celltype"], "obs column 'celltype' (config key 'label') is empty"),
    (_obs("celltype", np.nan), ["--label", "celltype"], "obs column 'celltype' (config key 'label') is empt"),
    (None, ["--label", "cell_type"], "obs column 'cell_type' (config key 'label') not found; available: c"),
    (None, ["--batch", "sample"], "obs column 'sample' (config key 'batch') not found"),
    (None, ["--matrix", "raw"], "matrix 'raw' requested but the file has no .raw"),
    (None, ["--matrix", "layers/spliced"], "matrix 'layers/spliced' not found"),
    (None, ["--min-genes", "100000"], "in.h5ad: no cells left after QC (most removed by 'min_genes')"),
    (None, ["--n-bins", "1"], "n_bins must be between 3 and 256"),
    (None, ["--n-bins", "300"], "n_bins must be between 3 and 256"),
    (None, ["--vocab", "nope.json"], "nope.json: cannot read the vocabulary"),
    (None, ["--vocab", "in.h5ad"], "in.h5ad: cannot read the vocabulary"),
    (_cell_names, [], "duplicate cell name 'same'"),
    (_unknown_genes, [], "only 0 of 2511 genes"),
    (None, ["--vocab", "list.json"], "list.json: not a vocabulary"),
], ids=["nan", "inf", "negative", "overflow", "absurd-value", "bool", "complex", "zero-cells", "zero-genes", "all-zero",
        "no-X", "empty-gene-name", "blank-gene-name", "labels-all-empty", "labels-all-nan", "no-label-column",
        "no-batch-column", "no-raw", "no-layer", "nothing-left-after-qc", "one-bin", "too-many-bins",
        "vocab-missing", "vocab-not-json", "duplicate-cells", "no-vocabulary-overlap", "vocab-a-list"])
def test_bad_matrix_or_option(tmp_path, tokenize_fails, edit, extra, words):
    """Each message says what is wrong and names what it is about: the input file, or the option's file or
    name when the option is at fault."""
    (tmp_path / "list.json").write_text("[1, 2]")
    msg = tokenize_fails(_small(tmp_path, edit=edit).name, *extra)
    assert words in msg, msg
    option = dict(zip(extra[::2], extra[1::2]))
    subject = option.get("--vocab") or ("--n-bins" if "--n-bins" in option else "in.h5ad")
    assert subject in msg, msg


def test_text_matrix(tmp_path, tokenize_fails):
    """An object (text) matrix, as a foreign writer may store it: refused, not cast."""
    path = _small(tmp_path, edit=_as(np.float32))
    with h5py.File(path, "r+") as f:
        del f["X"]
        f.create_dataset("X", data=np.full((300, 2511), b"1", dtype="S1"))
        f["X"].attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
    assert "matrix X holds text values" in tokenize_fails(path.name)


def test_duplicate_gene_names_are_summed(tmp_path):
    """A gene name repeated in var is one gene (columns summed), exactly as if the file had the sum."""
    a = ad.read_h5ad(KANG)[:300].copy()
    x = a.X.toarray()
    rng = np.random.default_rng(0)
    split = rng.integers(0, x[:, :40] + 1)  # the first 40 genes' counts, cut in two whole parts
    dup = ad.AnnData(X=sp.csr_matrix(np.hstack([x[:, :40] - split, split, x[:, 40:]])), obs=a.obs,
                     var=a.var.iloc[np.r_[0:40, 0:40, 40:a.n_vars]])
    assert not dup.var_names.is_unique
    dup.write_h5ad(tmp_path / "dup.h5ad")
    a.write_h5ad(tmp_path / "one.h5ad")
    _tokenize_ok(tmp_path / "dup.h5ad", tmp_path / "dup")
    _tokenize_ok(tmp_path / "one.h5ad", tmp_path / "one")
    for name in ("genes.bin", "bins.bin", "offsets.bin"):
        assert _digest(tmp_path / "dup/tokens" / name) == _digest(tmp_path / "one/tokens" / name), name


def test_counts_with_float_noise_are_counts_with_a_warning(tmp_path, capfd):
    """Counts plus float noise are binned as counts (normalised), the same tokens as the exact counts."""
    def noisy(a):
        a.X = a.X.astype(np.float32)
        a.X.data += np.float32(1e-3)
    _tokenize_ok(_small(tmp_path, "noisy.h5ad", edit=noisy), tmp_path / "noisy")
    assert "noisy.h5ad: values are whole numbers plus float noise" in capfd.readouterr().err
    _tokenize_ok(_small(tmp_path, "exact.h5ad"), tmp_path / "exact")
    assert set(pd.read_csv(tmp_path / "noisy/qc_cells.tsv.gz", sep="\t")["kind"]) == {"counts"}
    assert _digest(tmp_path / "noisy/tokens/genes.bin") == _digest(tmp_path / "exact/tokens/genes.bin")
    noisy, exact = (np.fromfile(tmp_path / d / "tokens/bins.bin", np.uint8).astype(int)
                    for d in ("noisy", "exact"))
    assert np.mean(noisy == exact) > 0.9
    assert np.abs(noisy - exact).max() <= 1  # the noise only moves values across a bin edge


def test_counts_with_noise_on_every_entry_are_counts_with_a_warning(tmp_path, capfd):
    """Integer counts with 1e-6 added to every entry (zeros too) are counts, not log values: the same tokens as
    the exact counts, and a warning naming the file (they were taken as log-normalised before)."""
    def noisy(a):
        a.X = a.X.toarray().astype(np.float32) + np.float32(1e-6)
    _tokenize_ok(_small(tmp_path, "noisy.h5ad", edit=noisy), tmp_path / "noisy")
    assert "noisy.h5ad: values are whole numbers plus float noise" in capfd.readouterr().err
    assert set(pd.read_csv(tmp_path / "noisy/qc_cells.tsv.gz", sep="\t")["kind"]) == {"counts"}


def test_many_genes_on_one_symbol_are_named_in_a_warning(tmp_path, capfd):
    """Seven more gene names that all read as CD3E (case variants: distinct names, one vocabulary gene) are
    summed into one gene with the file's own CD3E, but not silently: a warning names the file, the gene and
    how many columns (they passed unnoticed before)."""
    variants = ["cd3e", "Cd3e", "CD3e", "cD3E", "cd3E", "Cd3E", "cD3e"]

    def renamed(a):
        assert "CD3E" in a.var_names
        a.var_names = variants + list(a.var_names[len(variants):])
    _tokenize_ok(_small(tmp_path, "renamed.h5ad", edit=renamed), tmp_path / "renamed")
    err = capfd.readouterr().err
    assert "renamed.h5ad: 1 vocabulary genes each receive more than 2" in err and "CD3E from 8" in err


# ------------------------------------------------------------ outputs never replace what Celler did not write


def test_out_is_the_current_folder(tmp_path, tokenize_fails):
    _small(tmp_path)
    assert "refusing to replace the current folder" in tokenize_fails("in.h5ad", out=".")
    assert "refusing to replace the current folder" in tokenize_fails("in.h5ad", "--force", out=".")


def test_out_is_a_folder_above(tmp_path, tokenize_fails):
    (tmp_path / "sub").mkdir()
    _small(tmp_path / "sub")
    os.chdir(tmp_path / "sub")
    assert "refusing to replace the current folder or one above it" in tokenize_fails("in.h5ad", out="..")


def test_out_is_the_folder_of_the_input(tmp_path, tokenize_fails):
    (tmp_path / "data").mkdir()
    _small(tmp_path / "data")
    (tmp_path / "data" / "notes.txt").write_text("mine")
    for force in ([], ["--force"]):
        msg = tokenize_fails("data/in.h5ad", *force, out="data")
        assert "data: refusing to write the output there: it contains the input data/in.h5ad" in msg


def test_out_is_the_input(tmp_path, tokenize_fails):
    _small(tmp_path)
    for force in ([], ["--force"]):
        assert "it is the input in.h5ad" in tokenize_fails("in.h5ad", *force, out="in.h5ad")


def test_out_is_an_existing_file(tmp_path, tokenize_fails):
    _small(tmp_path)
    (tmp_path / "other.h5ad").write_text("someone else's file")
    msg = tokenize_fails("in.h5ad", out="other.h5ad")
    assert "other.h5ad: already exists and is a file; refusing to replace it with an output folder" in msg
    assert "--force" in msg


def test_out_is_a_folder_celler_did_not_write(tmp_path, tokenize_fails):
    _small(tmp_path)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "thesis.tex").write_text("years of work")
    assert "results: already exists and is a folder not written by Celler" in tokenize_fails("in.h5ad",
                                                                                               out="results")


def test_out_parent_is_a_file(tmp_path, tokenize_fails):
    _small(tmp_path)
    (tmp_path / "afile").write_text("x")
    assert "afile/out: cannot write to the folder afile" in tokenize_fails("in.h5ad", out="afile/out")


def test_read_only_output_folder(tmp_path, tokenize_fails, monkeypatch):
    """(Simulated: the tests may run as root, who can write anywhere.)"""
    _small(tmp_path)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    msg = tokenize_fails("in.h5ad", out="out")
    assert "out: cannot write to the folder . (Permission denied)" in msg


def test_outputs_celler_wrote_are_replaced(tmp_path, monkeypatch):
    """A rerun replaces Celler's own output folder (it carries the marker); so does --force a user's folder;
    an empty folder is fine. The input is never touched."""
    monkeypatch.chdir(tmp_path)
    h5ad = _small(tmp_path)
    before = _digest(h5ad)
    _tokenize_ok(h5ad, "out")
    assert (tmp_path / "out" / OUTPUT_MARKER).exists()
    assert (tmp_path / "out" / "tokens" / OUTPUT_MARKER).exists()  # the token store is a Celler output too
    (tmp_path / "out" / "stale.txt").write_text("from an older run")
    _tokenize_ok(h5ad, "out")
    assert not (tmp_path / "out" / "stale.txt").exists()
    (tmp_path / "empty").mkdir()
    _tokenize_ok(h5ad, "empty")
    assert (tmp_path / "empty" / "tokens" / "meta.json").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "old.txt").write_text("replace me")
    _tokenize_ok(h5ad, "mine", "--force")
    assert not (tmp_path / "mine" / "old.txt").exists()
    assert (tmp_path / "mine" / OUTPUT_MARKER).exists()
    assert _digest(h5ad) == before


def test_good_input_succeeds_and_is_untouched(tmp_path):
    h5ad = _small(tmp_path)
    before = _digest(h5ad)
    out = tmp_path / "ok"
    subprocess.run([sys.executable, "-m", "celler.cli", "tokenize", str(h5ad), "--out", str(out),
                    "--min-genes", "10", "--batch", "donor"], check=True, cwd=REPO, capture_output=True, timeout=TIMEOUT)
    assert (out / "tokens" / "meta.json").exists()
    assert (out / "qc.png").stat().st_size > 0
    assert _digest(h5ad) == before
