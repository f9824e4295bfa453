"""Bad workflow configuration: `snakemake -n` stops with one line naming the config file and the key or line.

Each case is a dry run of the real Snakefile in a scratch working directory (so nothing of the repository's
own results is touched), checked for: non-zero exit, exactly one `celler: error:` line naming the file,
no traceback, and nothing created or changed in the working directory. A good config is the control.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import TIMEOUT, one_error_line, skip_or_fail, tree

REPO = Path(__file__).resolve().parents[1]
GOOD = (REPO / ".test/config.yaml").read_text()



@pytest.fixture(scope="module", autouse=True)
def snakemake_installed():
    """Skip without Snakemake (a failure under CI=true, which installs it)."""
    if shutil.which("snakemake") is None:
        skip_or_fail("snakemake not installed")


def _dry_run(workdir: Path, *args):
    return subprocess.run(["snakemake", "-n", "-s", str(REPO / "Snakefile"), "-d", str(workdir), *args],
                          capture_output=True, text=True, check=False, cwd=workdir, timeout=TIMEOUT)


@pytest.fixture(autouse=True)
def _resources(tmp_path):
    """The scratch working directory sees the repository's resources (relative paths of config and rules)."""
    (tmp_path / "resources").symlink_to(REPO / "resources")


def _fails(workdir: Path, *args) -> str:
    before = tree(workdir)
    proc = _dry_run(workdir, *args)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text
    return one_error_line(text, workdir, before)


def test_good_config_dry_run_succeeds(tmp_path):
    """The control: the same config, unbroken, passes every check below."""
    (tmp_path / "good.yaml").write_text(GOOD)
    proc = _dry_run(tmp_path, "--configfile", "good.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(("content", "words"), [
    (None, "config.yaml: config file not found"),
    ("tissues:\n  a: [1, 2\n  b: c\n", "config.yaml: YAML syntax error at line 3, column 4"),
    ("tissues:\n\tpancreas: {}\n", "config.yaml: YAML syntax error at line 2"),
    ("# nothing but a comment\n", "config.yaml: the config file holds nothing"),
    ("- tissues\n", "config.yaml: the config file holds a list"),
], ids=["missing", "unclosed-bracket", "tab", "empty", "a-list"])
def test_default_config_file_unreadable(tmp_path, content, words):
    """Without --configfile the workflow reads ./config.yaml itself: it names the file and the line."""
    if content is not None:
        (tmp_path / "config.yaml").write_text(content)
    assert words in _fails(tmp_path)


def _replace(old, new):
    def edit(text):
        assert old in text
        return text.replace(old, new)
    return edit


@pytest.mark.parametrize(("edit", "words"), [
    (_replace("n_bins: 51", "n_bins: 1000"), "tokenize.n_bins: 1000 is greater than the maximum of 256"),
    (_replace("epochs: 3", "epochs: three"), "finetune.epochs: 'three' is not of type 'integer'"),
    (_replace("vocab: ", "vocabulary: "), "(top level): Additional properties are not allowed ('vocabulary'"),
    (lambda t: t + "tokenise: {n_bins: 51}\n", "Additional properties are not allowed ('tokenise' was"),
    (_replace("label: bulk_labels", "label: bulk_labels\n    lable: x"),
     "tissues.pbmc68k: Additional properties are not allowed ('lable' was unexpected)"),
    (_replace("pbmc68k_reduced.h5ad", "pbmc68k_reduced.csv"), "tissues.pbmc68k.inputs.0: 'resources/data/"
     "pbmc68k_reduced.csv' is not valid"),
    (_replace("pbmc68k_reduced.h5ad", "nope.h5ad"), "tissues.pbmc68k.inputs: resources/data/nope.h5ad: not found"),
    (_replace("resources/data/pbmc68k_reduced.h5ad", "folder.h5ad"),
     "tissues.pbmc68k.inputs: folder.h5ad: is a folder"),
    (_replace("queries: [", "queries: [resources/missing_query.h5ad, "),
     "tissues.pancreas.queries: resources/missing_query.h5ad: not found"),
    (_replace("split: {by: fraction, test_fraction: 0.3, seed: 0}", "split: {by: column}"),
     "tissues.pbmc68k.split: 'column' is a required property"),
    (_replace("test_fraction: 0.3", "test_fraction: 1.5"), "tissues.pbmc68k.split.test_fraction"),
    (lambda t: re.sub(r"tissues:\n.*?\ncorpus:", "tissues: {}\ncorpus:", t, flags=re.S),
     "tissues: {} should be non-empty"),
], ids=["n_bins-too-large", "epochs-not-a-number", "vocab-missing", "unknown-section", "unknown-tissue-key",
        "input-not-h5ad", "input-missing", "input-a-folder", "query-missing", "split-column-without-column",
        "test-fraction-above-1", "no-tissues"])
def test_bad_configfile(tmp_path, edit, words):
    (tmp_path / "folder.h5ad").mkdir()
    (tmp_path / "bad.yaml").write_text(edit(GOOD))
    msg = _fails(tmp_path, "--configfile", "bad.yaml")
    assert msg.startswith("celler: error: bad.yaml: "), msg
    assert words in msg, msg


WANG = "resources/data/pancreas_wang_scclassify.h5ad"
PBMC68K = "resources/data/pbmc68k_reduced.h5ad"


@pytest.mark.parametrize(("edit", "words"), [
    (_replace("label: celltype", "label: celltyp"),
     f"tissues.pancreas.label: {WANG} has no obs column 'celltyp'; its columns: celltype, "),
    (_replace("batch: batch", "batch: study"), f"tissues.pancreas.batch: {WANG} has no obs column 'study'"),
    (_replace("label: bulk_labels", "label: bulk_labels\n    parent_label: lineage"),
     f"tissues.pbmc68k.parent_label: {PBMC68K} has no obs column 'lineage'; its columns: "),
    (_replace("split: {by: fraction, test_fraction: 0.3, seed: 0}", "split: {by: column, column: donor, "
              "test_values: [a]}"), f"tissues.pbmc68k.split.column: {PBMC68K} has no obs column 'donor'"),
    (_replace("split: {by: file}", "split: {by: column, column: batch, test_values: [baron]}"),
     "tissues.pancreas.split.test_values: ['baron'] match no cell of column 'batch'; its values: "),
    (_replace("matrix: raw", "matrix: layers/counts"),
     f"tissues.pbmc68k.matrix: {PBMC68K} has no layer 'counts'; its layers: none"),
    (_replace("label: celltype", "label: celltype\n    matrix: raw"),
     f"tissues.pancreas.matrix: {WANG} has no .raw"),
    (_replace("label: celltype", "label: celltype\n    drop_labels: [alpha, beta, gamma, delta, ductal, acinar, "
              "stellate]"),
     "tissues.pancreas.drop_labels: removes every class of 'celltype'"),
], ids=["label-column", "batch-column", "parent-column", "split-column", "split-values", "layer", "raw",
        "drop-every-label"])
def test_config_keys_checked_against_the_files_before_any_job(tmp_path, edit, words):
    """Keys that name things inside the inputs are checked when the workflow is parsed (a dry run here): one
    line naming the config, the key, the file and what it has instead; no job starts, no file is written."""
    (tmp_path / "bad.yaml").write_text(edit(GOOD))
    msg = _fails(tmp_path, "--configfile", "bad.yaml")
    assert msg.startswith("celler: error: bad.yaml: "), msg
    assert words in msg, msg


def test_bad_config_override(tmp_path):
    """A bad `--config key=value` is named as such, next to the file it overrides."""
    (tmp_path / "good.yaml").write_text(GOOD)
    msg = _fails(tmp_path, "--configfile", "good.yaml", "--config", "vocab=123")
    assert "good.yaml + --config: vocab: 123 is not of type 'string'" in msg


def test_duplicate_query_names(tmp_path):
    query = "resources/data/pancreas_xin_scclassify.h5ad"
    (tmp_path / "bad.yaml").write_text(_replace("queries: [", f"queries: [{query}, ")(GOOD))
    assert "tissues.pancreas.queries: two files share a name" in _fails(tmp_path, "--configfile", "bad.yaml")


@pytest.mark.xfail(reason="Snakemake reads --configfile itself, before any workflow code runs: a missing "
                   "file ends in its own traceback (snakemake/settings/types.py), which the workflow cannot "
                   "catch", strict=True, raises=AssertionError)
def test_missing_configfile(tmp_path):
    _fails(tmp_path, "--configfile", "nope.yaml")


def test_one_error_line_accepts_a_warnings_source_line_and_nothing_else_indented(tmp_path):
    """The contract's own check: an indented line passes only as the source line right after a Python
    warning; an indented traceback frame or a Snakemake job block fails it."""
    from conftest import one_error_line, tree

    before = tree(tmp_path)
    err = "celler: error: config.yaml: tissues.x.label: no column 'y'; use one of ..."
    warned = "/x/y.py:3: UserWarning: something\n  warnings.warn('something')\n" + err
    assert one_error_line(warned, tmp_path, before) == err
    for bad in ('  File "/x/y.py", line 3, in f\n' + err, "rule qc:\n    input: a.h5ad\n" + err):
        with pytest.raises(AssertionError):
            one_error_line(bad, tmp_path, before)
