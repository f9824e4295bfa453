"""Shared pytest fixtures and helpers."""

import hashlib
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def tree(root) -> dict:
    """Every entry under ``root``: a file's hash, a link's target, or 'dir' (links are not followed)."""
    out = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(base, name)
            rel = str(p.relative_to(root))
            out[rel] = (f"-> {p.readlink()}" if p.is_symlink() else "dir" if p.is_dir()
                        else hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def fails(argv, root, capfd) -> str:
    """Run ``celler ARGV`` in-process; check the whole bad-input contract and return the one error line.

    Exit status 1, exactly one line on stderr mentioning an error (``celler: error: ...``, no logged copy),
    no traceback, and nothing under ``root`` created, changed or removed (input and any partial output).
    """
    from celler.cli import main

    capfd.readouterr()
    before = tree(root)
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in argv])
    out, err = capfd.readouterr()
    assert exit_.value.code == 1, err
    return one_error_line(out + err, root, before)


# Seconds any snakemake / celler subprocess of the suite may run: a hang fails its test, not the whole CI run
TIMEOUT = 900

# Lines a failed run may print besides its one error line: Snakemake's start-up notes, and named warnings
ALLOWED_LINES = (
    re.compile(r"^Using workflow specific profile .* for setting default command line arguments\.$"),
    re.compile(r"^Assuming unrestricted shared filesystem usage\.$"),
    re.compile(r"^(celler: )?warning: ", re.IGNORECASE),
    re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ (INFO|WARNING) [\w.]+: "),  # celler's progress log before the failure
    PY_WARNING := re.compile(r"^\S+\.py:\d+: \w*Warning: "),  # a Python warning's first line ...
)
#: ... and its indented source line, accepted only right after that first line
WARNING_SOURCE = re.compile(r"^  \S")


def one_error_line(text: str, root, before: dict) -> str:
    """The bad-input contract on a failed run's whole output (stdout and stderr together): exactly one line, starting
    ``celler: error:``, and nothing else but the lines of ``ALLOWED_LINES``; no traceback; nothing under
    ``root`` created, changed or removed since ``before`` (a :func:`tree`). Returns the error line."""
    lines = [line for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("celler: error: ")]
    assert len(errors) == 1, text
    others = [line for i, line in enumerate(lines) if line not in errors
              and not any(p.search(line) for p in ALLOWED_LINES)
              and not (WARNING_SOURCE.search(line) and i and PY_WARNING.search(lines[i - 1]))]
    assert not others, f"lines besides the error: {others}"
    assert "Traceback" not in text
    assert tree(root) == before, "files were created, changed or removed"
    return errors[0]


def set_x(value):
    """An AnnData edit for the bad-input tests: ``X`` becomes ``value(adata)``."""
    def edit(a):
        a.X = value(a)
    return edit


def skip_or_fail(reason: str) -> None:
    """Skip a test whose system component (Chromium, SLURM) is missing; under CI (``CI=true``), whose setup
    promises every component, fail instead, so that a broken install cannot pass as a green run."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: CI installs it, so this is a failure, not a skip)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pbmc3k_tokens(tmp_path_factory):
    """Path of a token store of the real pbmc3k cells (QC'd, 51 bins), built once per session (~3 s)."""
    from celler.config import dataset_spec
    from celler.data.io import MatrixReader
    from celler.data.qc import run_qc
    from celler.data.tokens import tokenize
    from celler.data.vocab import Vocab, map_genes

    spec = dataset_spec("pbmc3k", {"inputs": [str(ROOT / "resources/data/pbmc3k_raw_unlabelled_desc.h5ad")],
                                   "qc": {"min_genes": 200, "min_cells": 3}})
    cells, genes, _ = run_qc(spec)
    mapping = map_genes(MatrixReader(spec.inputs[0].path).var, Vocab.load(ROOT / "resources/vocab.json"))
    return tokenize(spec, cells, genes, mapping, tmp_path_factory.mktemp("pbmc3k") / "tokens", n_bins=51)


def build_store(tmp_dir: Path, name: str, block: dict) -> Path:
    """Run QC, gene mapping and tokenisation for one config block (paths relative to the repo); returns
    the token store's path. The same stage functions the workflow calls."""
    from celler.config import dataset_spec
    from celler.resources import default_vocab_path
    from celler.stages import map_stage, qc_stage, tokenize_stage

    block = {**block, "inputs": [
        {**i, "path": str(ROOT / i["path"])} if isinstance(i, dict) else str(ROOT / i) for i in block["inputs"]]}
    spec = dataset_spec(name, block)
    d = Path(tmp_dir)
    qc_stage(spec, cells_out=d / "cells.tsv.gz", genes_out=d / "genes.tsv.gz", summary_out=d / "summary.tsv",
             plot_out=d / "qc.png")
    map_stage(spec, genes_path=d / "genes.tsv.gz", vocab_path=default_vocab_path(), mapping_out=d / "map.tsv.gz",
              report_out=d / "report.tsv", vocab_out=d / "vocab.json")
    return tokenize_stage(spec, cells_path=d / "cells.tsv.gz", genes_path=d / "genes.tsv.gz",
                          mapping_path=d / "map.tsv.gz", vocab_path=d / "vocab.json", out=d / "tokens", n_bins=51,
                          scheme="per_batch", normalize=True)


PANCREAS = {"inputs": [{"path": "resources/data/pancreas_wang_scclassify.h5ad", "split": "train"},
                       {"path": "resources/data/pancreas_xin_scclassify.h5ad", "split": "test"}],
            "label": "celltype", "batch": "batch", "split": {"by": "file"}, "qc": {"min_genes": 20, "min_cells": 3}}
FACS = {"inputs": ["resources/data/pbmc_facs_sorted_2k_mudan.h5ad"], "label": "celltype_fine",
        "parent_label": "celltype_l2", "split": {"by": "fraction", "test_fraction": 0.3, "seed": 0},
        "qc": {"min_genes": 200, "min_cells": 3}}


@pytest.fixture(scope="session")
def pancreas_tokens(tmp_path_factory):
    """Token store of the real pancreas pair: Wang (train) -> Xin (test), binned per study."""
    return build_store(tmp_path_factory.mktemp("pancreas"), "pancreas", PANCREAS)


@pytest.fixture(scope="session")
def facs_tokens(tmp_path_factory):
    """Token store of the real FACS-sorted PBMC set with two label levels (fine / l2)."""
    return build_store(tmp_path_factory.mktemp("facs"), "pbmc_facs", FACS)


@pytest.fixture(scope="session")
def pancreas_model(pancreas_tokens, tmp_path_factory):
    """A tiny model fine-tuned on pancreas Wang with its ductal cells held out (about 30 s on 2 cores), shared
    by the annotation tests (test_annotate.py's and test_novelty.py's floors were measured with these
    settings); it reads cells as the shipped default does (config.yaml's readout and view_dropout)."""
    import torch

    from celler.data.tokens import TokenStore
    from celler.train.finetune import FinetuneConfig, finetune

    torch.manual_seed(0)
    cfg = FinetuneConfig(init="scratch", loss="ginf+hdm", epochs=20, patience=20, max_len=128, batch_size=32,
                         lr=3e-3, seed=0, readout="programs+profile", view_dropout=0.25)
    cells = TokenStore(pancreas_tokens).cells
    train_cells = cells.index[cells["split"].eq("train") & cells["label"].ne("ductal")].tolist()
    out = tmp_path_factory.mktemp("annotate") / "model"
    finetune(pancreas_tokens, out, cfg, train_cells=train_cells)
    return out
