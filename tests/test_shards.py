"""Sharded tokenisation (celler.data.shards, workflow/rules/shards.smk) equals unsharded tokenisation, per cell.

Synthetic data only (celler.data.synth; never reported as real data): 2,400 cells in two input files, 3 batches.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import TIMEOUT, skip_or_fail

from celler.config import dataset_spec
from celler.data.binning import quantile_edges
from celler.data.qc import read_qc
from celler.data.shards import ValueSample, merge_samples, plan_shards, tokenize_sharded
from celler.data.synth import make_synthetic
from celler.data.tokens import ConcatStore, TokenStore, tokenize
from celler.data.vocab import read_mapping
from celler.resources import default_vocab_path
from celler.stages import map_stage, qc_stage

REPO = Path(__file__).resolve().parents[1]
BLOCK = {"inputs": ["data/a.h5ad", "data/b.h5ad"], "batch": "batch", "qc": {"min_genes": 30, "min_cells": 3}}


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    """data/a.h5ad (1,500 cells) and data/b.h5ad (900 cells): one synthetic count dataset in two files."""
    d = tmp_path_factory.mktemp("shards")
    (d / "data").mkdir()
    a = make_synthetic(2400, n_genes=400, n_batches=3, n_subclasses=(5, 8), seed=3)
    a[:1500].copy().write_h5ad(d / "data/a.h5ad")
    a[1500:].copy().write_h5ad(d / "data/b.h5ad")
    return d


@pytest.fixture(scope="module")
def prepared(synth_dir):
    """QC and gene mapping of the synthetic dataset: (spec, cells, genes, mapping)."""
    d = synth_dir
    spec = dataset_spec("atlas", {**BLOCK, "inputs": [str(d / p) for p in BLOCK["inputs"]]})
    qc_stage(
        spec,
        cells_out=d / "cells.tsv.gz",
        genes_out=d / "genes.tsv.gz",
        summary_out=d / "summary.tsv",
        plot_out=d / "qc.png",
    )
    map_stage(
        spec,
        genes_path=d / "genes.tsv.gz",
        vocab_path=default_vocab_path(),
        mapping_out=d / "map.tsv.gz",
        report_out=d / "report.tsv",
        vocab_out=d / "vocab.json",
    )
    cells, genes = read_qc(d / "cells.tsv.gz", d / "genes.tsv.gz")
    return spec, cells, genes, read_mapping(d / "map.tsv.gz", d / "vocab.json")


def assert_same_store(full: TokenStore, parts: list[Path]) -> None:
    """The shards' stores, read together, hold the unsharded store's cells: same order, tokens, bins, rows."""
    shards = [TokenStore(p) for p in parts]
    both = ConcatStore(shards)
    assert len(both) == len(full)
    for i in range(len(full)):
        g1, b1 = full[i]
        g2, b2 = both[i]
        assert np.array_equal(g1, g2), i
        assert np.array_equal(b1, b2), i
    pd.testing.assert_frame_equal(both.cells, full.cells)
    for name in ("genes.bin", "bins.bin"):  # byte for byte, shard after shard
        assert b"".join((p / name).read_bytes() for p in parts) == (full.path / name).read_bytes(), name
    for s in shards:
        assert s.meta["dataset"] == full.meta["dataset"]
        assert {b: e.tolist() for b, e in s.bin_edges().items()} == {
            b: e.tolist() for b, e in full.bin_edges().items()
        }
        assert (s.path / "vocab.json").read_bytes() == (full.path / "vocab.json").read_bytes()


def test_plan_covers_every_kept_cell_once(prepared):
    spec, cells, _, _ = prepared
    plan = plan_shards(cells, spec, 400)
    assert plan["n_kept"].max() <= 400
    assert plan["n_kept"].sum() == cells["kept"].sum()
    assert (
        plan.groupby("input")["n_kept"].sum().tolist()
        == cells.groupby("input", sort=False)["kept"].sum().tolist()
    )
    for _, f in plan.groupby("input"):  # contiguous row ranges covering each file
        assert f["start"].iloc[0] == 0
        assert (f["start"].iloc[1:].to_numpy() == f["stop"].iloc[:-1].to_numpy()).all()
    per_file = plan_shards(cells, spec, None)
    assert per_file[["input", "start", "stop"]].values.tolist() == [[0, 0, 1500], [1, 0, 900]]


@pytest.mark.parametrize("scheme", ["per_batch", "per_cell"])
def test_sharded_stores_equal_the_unsharded_store(prepared, tmp_path, scheme):
    spec, cells, genes, mapping = prepared
    full = tokenize(spec, cells, genes, mapping, tmp_path / "full", scheme=scheme, chunk_size=500)
    parts = tokenize_sharded(
        spec, cells, genes, mapping, tmp_path / "shards", cells_per_shard=350, scheme=scheme, chunk_size=128
    )  # other chunking, shards that cut through files
    assert len(parts) >= 5
    assert_same_store(TokenStore(full), parts)


def test_value_samples_merge_into_the_exact_edges():
    rng = np.random.default_rng(0)
    values = rng.lognormal(size=30_000).astype(np.float32)
    a, b = ValueSample(max_values=20_000), ValueSample(max_values=20_000)
    for chunk in np.array_split(values[:18_000], 7):
        a.add("b1", chunk)
    b.add("b1", values[18_000:])
    b.add("b2", values[:10])
    edges = merge_samples([a, b], 51, max_values=20_000)
    assert list(edges) == ["b1", "b2"]
    assert np.array_equal(edges["b1"], quantile_edges(values, 51))  # 30,000 <= 2 * max_values: exact


def test_value_sample_stays_uniform_when_it_thins():
    """Beyond 2 * max_values every value seen is held with one probability: sorted input, unbiased edges."""
    values = np.arange(1, 400_001, dtype=np.float32)  # ascending: a sampler biased towards late values shows
    s = ValueSample(max_values=5_000, seed=1)
    for chunk in np.array_split(values, 40):
        s.add("b", chunk)
    held = s.values("b")
    assert 5_000 <= held.size <= 10_000
    assert s.p["b"] == pytest.approx(held.size / values.size, rel=0.05)
    assert abs(np.median(held) - 200_000) < 8_000
    other = ValueSample(max_values=5_000, seed=2)
    other.add("b", values[:1_000])  # a small shard, all held: thinned to the common probability on merge
    edges = merge_samples([s, other], 11, max_values=5_000)["b"]
    exact = quantile_edges(np.concatenate([values, values[:1_000]]), 11)
    assert np.allclose(edges, exact, rtol=0.05)


# --- through Snakemake --------------------------------------------------------------------------------------


def _snakemake(wd: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = ["snakemake", "-s", str(REPO / "Snakefile"), "-d", str(wd), "--configfile", str(wd / "config.yaml")]
    return subprocess.run([*cmd, "-c2", *args], capture_output=True, text=True, check=False, cwd=wd, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def sharded_run(synth_dir, tmp_path_factory):
    """The workflow on the synthetic data as a sharded corpus: its shards' stores and its unsharded store."""
    if shutil.which("snakemake") is None:
        skip_or_fail("snakemake not installed")
    wd = tmp_path_factory.mktemp("sharded_run")
    (wd / "resources").symlink_to(REPO / "resources")
    (wd / "data").symlink_to(synth_dir / "data")
    cfg = yaml.safe_load((REPO / ".test/config.yaml").read_text())
    cfg["corpus"] = {"atlas": BLOCK}
    cfg["shards"] = {"cells_per_shard": 700}
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = _snakemake(wd, "results/atlas/shards/stores.txt", "results/atlas/tokens")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return wd


@pytest.mark.slow
def test_workflow_shards_equal_unsharded(sharded_run):
    wd = sharded_run
    stores = [wd / p for p in (wd / "results/atlas/shards/stores.txt").read_text().split()]
    plan = pd.read_csv(wd / "results/atlas/shards/plan/plan.tsv", sep="\t")
    assert len(stores) == len(plan) == 4  # 1,500 + 900 input cells, at most 700 kept cells per shard
    assert_same_store(TokenStore(wd / "results/atlas/tokens"), stores)
    edges = json.loads((wd / "results/atlas/shards/bin_edges.json").read_text())
    assert edges == json.loads((wd / "results/atlas/tokens/bin_edges.json").read_text())
    assert not list((wd / "results/atlas/shards").glob("*/values.npz"))  # temporary samples are gone


@pytest.mark.slow
def test_pretraining_reads_the_shards(sharded_run):
    """The pretraining job gets the shards' stores (read together), not an unsharded store of the dataset."""
    dry = _snakemake(sharded_run, "-n", "-p", "results/pretrain/model")
    assert dry.returncode == 0, dry.stderr[-3000:]
    lines = (dry.stdout + dry.stderr).splitlines()
    command = next(line for line in lines if "pretrain.py" in line and "--stores" in line)
    assert "results/atlas/shards/0000/tokens" in command, command
    assert "results/atlas/tokens" not in command, command


@pytest.mark.slow
def test_pretraining_work_folder_follows_the_sharding(sharded_run):
    """Checkpoints are kept per store list: sharding the corpus (or not) gives pretraining another work folder,
    so a resumed job never meets a checkpoint written for the other stores."""

    def work_folder(*extra: str) -> str:
        dry = _snakemake(sharded_run, "-n", "-p", "results/pretrain/model", *extra)
        assert dry.returncode == 0, dry.stderr[-3000:]
        return re.search(r"--out (results/pretrain/work-\w+)", dry.stdout + dry.stderr).group(1)

    sharded = work_folder()
    assert sharded == work_folder()  # stable for the same config
    assert work_folder("--config", "shards={'datasets': []}") != sharded  # no dataset sharded
