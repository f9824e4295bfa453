"""Bad input: one clear line naming the file and the problem, exit 1, no partial outputs, input untouched."""

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
KANG = REPO / "resources/data/pbmc_kang2018_8k_counts_muscat.h5ad"


def _small(tmp_path, name="in.h5ad", edit=None):
    a = ad.read_h5ad(KANG)[:300].copy()
    if edit:
        edit(a)
    path = tmp_path / name
    a.write_h5ad(path)
    return path


def _digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _run(tmp_path, h5ad, *extra):
    out = tmp_path / "out"
    before = _digest(h5ad) if Path(h5ad).exists() else None
    proc = subprocess.run([sys.executable, "-m", "celler.cli", "tokenize", str(h5ad), "--out", str(out),
                           "--min-genes", "10", *extra], capture_output=True, text=True, cwd=REPO, check=False)
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("celler: error:")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists(), "a failed run must leave no output"
    assert not list(tmp_path.glob(".out.*")), "temporary output left behind"
    if before:
        assert _digest(h5ad) == before, "the input file was modified"
    return errors[0]


def _set_value(value):
    def edit(a):
        a.X = a.X.toarray()
        a.X[3, 5] = value
    return edit


def test_missing_file(tmp_path):
    msg = _run(tmp_path, tmp_path / "nope.h5ad")
    assert "nope.h5ad: file not found" in msg


def test_wrong_file_type(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("a,b\n1,2\n")
    assert "not an .h5ad file" in _run(tmp_path, p)


def test_corrupt_h5ad(tmp_path):
    p = tmp_path / "broken.h5ad"
    p.write_bytes(b"not hdf5 at all")
    assert "broken.h5ad: cannot be read as AnnData" in _run(tmp_path, p)


def test_missing_label_column(tmp_path):
    msg = _run(tmp_path, _small(tmp_path), "--label", "cell_type")
    assert "obs column 'cell_type' (config key 'label') not found" in msg and "celltype" in msg


def test_missing_batch_column(tmp_path):
    assert "obs column 'sample' (config key 'batch') not found" in _run(tmp_path, _small(tmp_path), "--batch", "sample")


@pytest.mark.parametrize(("value", "words"), [(np.nan, "NaN/inf"), (np.inf, "NaN/inf"), (-1.0, "negative values")])
def test_nan_inf_negative_values(tmp_path, value, words):
    msg = _run(tmp_path, _small(tmp_path, edit=_set_value(value)))
    assert "in.h5ad: expression matrix has" in msg and words in msg


def test_duplicate_cell_names(tmp_path):
    def edit(a):
        a.obs_names = ["same"] * 2 + list(a.obs_names[2:])
    assert "duplicate cell name 'same'" in _run(tmp_path, _small(tmp_path, edit=edit))


def test_zero_vocabulary_overlap(tmp_path):
    def edit(a):
        a.var_names = [f"gene_{i:04d}" for i in range(a.n_vars)]
    msg = _run(tmp_path, _small(tmp_path, edit=edit))
    assert "only 0 of 2511 genes" in msg and "vocab_mode: extend" in msg


def test_nothing_left_after_qc(tmp_path):
    msg = _run(tmp_path, _small(tmp_path), "--min-genes", "100000")
    assert "no cells left after QC" in msg


def test_good_input_succeeds_and_is_untouched(tmp_path):
    h5ad = _small(tmp_path)
    before = _digest(h5ad)
    out = tmp_path / "ok"
    subprocess.run([sys.executable, "-m", "celler.cli", "tokenize", str(h5ad), "--out", str(out), "--min-genes", "10",
                    "--batch", "donor"], check=True, cwd=REPO, capture_output=True)
    assert (out / "tokens" / "meta.json").exists() and (out / "qc.png").stat().st_size > 0
    assert _digest(h5ad) == before


def test_invalid_config_names_the_key(tmp_path):
    if shutil.which("snakemake") is None:
        pytest.skip("snakemake not installed")
    cfg = tmp_path / "bad.yaml"
    cfg.write_text((REPO / ".test/config.yaml").read_text().replace("n_bins: 51", "n_bins: 1000"))
    proc = subprocess.run(["snakemake", "-n", "--configfile", str(cfg)], cwd=REPO, capture_output=True, text=True,
                          check=False)
    assert proc.returncode != 0
    assert "n_bins" in proc.stdout + proc.stderr
