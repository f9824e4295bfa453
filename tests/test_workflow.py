"""The Snakemake workflow on the test config (real data), run in a scratch directory."""

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import anndata as ad
import pandas as pd
import pytest
import torch
from conftest import TIMEOUT, skip_or_fail
from PIL import Image

from celler.data.tokens import TokenStore
from celler.train.pretrain import PretrainConfig, pretrain

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def snakemake_installed():
    """Before the module's workflow run: skip without Snakemake (a failure under CI=true)."""
    if shutil.which("snakemake") is None:
        skip_or_fail("snakemake not installed")


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the repo's Snakefile in ``workdir`` (which sees the repo's resources/) on the test config."""
    (workdir / "resources").exists() or (workdir / "resources").symlink_to(REPO / "resources")
    cmd = ["snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--configfile",
           str(REPO / ".test/config.yaml"), "-c2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=check, cwd=workdir, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory):
    """The whole default target of the test config: data, pretraining, fine-tuning, baselines, tables."""
    wd = tmp_path_factory.mktemp("wf")
    proc = snakemake(wd, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return wd


def test_lint_is_clean():
    proc = subprocess.run(["snakemake", "--lint"], cwd=REPO, capture_output=True, text=True, check=False, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_workflow_runs_through_tokenisation(tokenized):
    wd = tokenized
    store = TokenStore(wd / "results/pancreas/tokens")
    cells = store.cells
    assert set(cells.split) == {"train", "test"}
    assert (cells.split == "test").sum() == 674  # every Xin cell
    assert set(store.bin_edges()) == {"wang", "xin"}  # per-study binning
    summary = pd.read_csv(wd / "results/pancreas/qc/summary.tsv", sep="\t").set_index("step")
    assert summary.loc["split: train", "left"] + summary.loc["split: test", "left"] == len(store)
    for rule in ("qc", "map_genes", "tokenize"):
        log = wd / f"logs/{rule}/pancreas.log"
        assert log.exists() and log.stat().st_size > 0
    assert "log-normalised" in (wd / "logs/qc/pancreas.log").read_text()
    report = (wd / "results/pancreas/vocab/report.tsv").read_text()
    assert "genes via symbol\t218" in report


def test_expression_export_is_log_normalised(tokenized):
    a = ad.read_h5ad(tokenized / "results/pancreas/expr.h5ad")
    import numpy as np

    totals = np.expm1(a.X).sum(axis=1)
    assert np.allclose(totals, 1e4, rtol=1e-3)
    assert {"celler_label", "celler_split", "celler_batch"} <= set(a.obs.columns)


def test_pbmc68k_uses_raw_matrix(tokenized):
    store = TokenStore(tokenized / "results/pbmc68k/tokens")
    assert store.meta["input_kind"] == "log" and len(store) == 700


def test_failed_job_leaves_no_output(tmp_path):
    """A job that fails on its data (every cell below min_genes: only the QC job can know) writes nothing.
    (A wrong column name no longer gets this far: it fails when the workflow is parsed, test_bad_config.)"""
    cfg = (REPO / ".test/config.yaml").read_text().replace(
        "label: bulk_labels", "label: bulk_labels\n    qc: {min_genes: 100000}")
    (tmp_path / "bad.yaml").write_text(cfg)
    (tmp_path / "resources").symlink_to(REPO / "resources")
    proc = subprocess.run(["snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "--configfile",
                           str(tmp_path / "bad.yaml"), "-c1", "results/pbmc68k/qc/cells.tsv.gz"],
                          capture_output=True, text=True, check=False, timeout=TIMEOUT)
    assert proc.returncode != 0
    assert not (tmp_path / "results/pbmc68k/qc/cells.tsv.gz").exists()
    log = (tmp_path / "logs/qc/pbmc68k.log").read_text()
    assert "min_genes" in log and "celler: error:" in log, log[-2000:]


def test_per_tissue_pretraining_continues_the_shared_model_and_feeds_fine_tuning(tokenized):
    """pretrain.per_tissue: all (the test config): each tissue's continued pretraining starts from the shared
    model, reads only that tissue's training cells, and is the model its fine-tuning starts from."""
    wd = tokenized
    for tissue in ("pancreas", "pbmc68k"):
        own = wd / f"results/{tissue}/pretrained"
        config = json.loads((own / "config.json").read_text())
        assert config["pretrain"]["init"] == "results/pretrain/model"
        assert config["steps"] == 10 and config["stores"] == [f"results/{tissue}/tokens"]
        cells = TokenStore(wd / f"results/{tissue}/tokens").cells
        assert config["n_cells"] == int((cells["split"].astype(str) != "test").sum())
        shared = torch.load(wd / "results/pretrain/model/model.pt", weights_only=True)["encoder"]
        tuned = torch.load(own / "model.pt", weights_only=True)["encoder"]
        assert not torch.equal(shared["gene_embedding.weight"], tuned["gene_embedding.weight"])
        used = json.loads((wd / f"results/{tissue}/model/config.json").read_text())["pretrained"]
        assert used == f"results/{tissue}/pretrained"


def test_finetune_and_evaluation_outputs(tokenized):
    wd = tokenized
    assert (wd / "results/pretrain/model/model.pt").exists()
    for tissue in ("pancreas", "pbmc68k"):
        pred = pd.read_csv(wd / f"results/{tissue}/celler/predictions.tsv", sep="\t")
        assert set(pred.columns) == {"cell", "split", "level", "true", "predicted", "confidence", "low_confidence",
                                     "novelty", "unassigned"}
        assert set(pred.split) == {"test"}
        metrics = pd.read_csv(wd / f"results/{tissue}/evaluation/metrics.tsv", sep="\t")
        assert set(metrics.method) == {"celler", "logreg", "logreg_balanced", "knn", "label_spreading"}
        # every method is scored on the same test cells
        assert metrics.groupby("method")["n_closed"].first().nunique() == 1
        # a quality floor on the test config's short training: far above chance (a uniform guess scores about
        # 1 / classes) and within 0.25 macro-F1 of logistic regression on the same cells
        f1 = metrics[metrics.level == "subclass"].set_index("method")["macro_f1"]
        assert f1["celler"] > 3 / pred["true"].nunique(), f1.to_dict()
        assert f1["celler"] > f1["logreg"] - 0.25, f1.to_dict()
        # floors from the test config's measured figures (the shipped readout programs+profile and every
        # other default it does not shorten): seeds 0 / 1 / 2 pancreas 0.948 / 0.956 / 0.929, pbmc68k 0.681 /
        # 0.628 / 0.649; the test runs seed 0 (deterministic on CPU), each floor is seed 0 minus the seed spread
        assert f1["celler"] > {"pancreas": 0.92, "pbmc68k": 0.62}[tissue], f1.to_dict()
    table = (wd / "results/tables/table3_datasets.md").read_text()
    assert "pancreas" in table and "logreg" in table
    assert "±" not in table  # one seed: the value alone, no "± 0.000"


def test_annotate_rule_labels_the_queries(tokenized):
    """The test config lists Xin as a pancreas query: the annotate rule labels every cell with the tissue's
    model and leaves the query file as it was."""
    out = tokenized / "results/annotate/pancreas"
    query = ad.read_h5ad(REPO / "resources/data/pancreas_xin_scclassify.h5ad")
    a = ad.read_h5ad(out / "pancreas_xin_scclassify.h5ad")
    assert list(a.obs_names) == list(query.obs_names)  # every cell, in file order
    assert "celler_label" not in query.obs  # the input is untouched
    classes = json.loads((tokenized / "results/pancreas/model/labels.json").read_text())["levels"]["subclass"]
    assert set(a.obs["celler_label"]) <= {*classes, "Unassigned"}
    assert a.obs["celler_confidence"].between(0, 1).all()
    table = pd.read_csv(out / "pancreas_xin_scclassify.csv", index_col=0)
    assert table.loc[a.obs_names, "label"].astype(str).tolist() == a.obs["celler_label"].astype(str).tolist()
    counts = pd.read_csv(out / "pancreas_xin_scclassify.labels.tsv", sep="\t")
    assert counts["n_cells"].sum() == a.n_obs
    assert (out / "pancreas_xin_scclassify.markers.png").stat().st_size > 5000
    # agreement with Xin's own labels: measured 0.969 of the assigned cells right, 99.3% assigned (the test
    # config's one seed and short training, the shipped readout, Unassigned = novel; with the confidence
    # rule before it 0.984 and 83%); floors a little below
    truth = query.obs["celltype"].astype(str).to_numpy()
    label = a.obs["celler_label"].astype(str).to_numpy()
    assigned = label != "Unassigned"
    assert assigned.mean() > 0.95, assigned.mean()
    # the tissue page links the annotated query (the report rule waits for it)
    page = (tokenized / "results/pancreas/report.html").read_text()
    assert 'href="../annotate/pancreas/pancreas_xin_scclassify.h5ad"' in page
    assert (label[assigned] == truth[assigned]).mean() > 0.93


def test_ablation_target(tokenized):
    proc = snakemake(tokenized, "ablation", check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    t4 = pd.read_csv(tokenized / "results/tables/table4_ablation.tsv", sep="\t")
    assert set(t4.loc[t4.method == "celler", "loss"]) == {"ce", "ginf_hdm"}
    assert any("ratio10" in d for d in t4["dataset"])
    assert {"logreg", "knn"} <= set(t4.loc[t4.dataset.str.contains("ratio10"), "method"])  # baselines, same cells
    paired = pd.read_csv(tokenized / "results/tables/table4_ablation_paired.tsv", sep="\t")
    assert set(paired["loss"]) == {"ginf_hdm"} and set(paired["reference"]) == {"ce"}
    runs = pd.read_csv(tokenized / "results/ablation/pbmc68k/metrics.tsv", sep="\t")
    assert {"celler_ce", "logreg"} <= set(runs.method) and set(runs.imbalance) == {"natural", "ratio10"}


def test_snakemake_report(tokenized):
    """`snakemake --report report.html` (README: after a run) bundles the run's captioned outputs."""
    proc = snakemake(tokenized, "--report", "report.html", check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = (tokenized / "report.html").read_text()
    found = re.search(r"var categories = (\{.*?\});\n", html)
    categories = json.loads(found.group(1))  # category -> subcategory -> files
    assert sorted(categories) == ["1. Data", "2. Celler", "3. Evaluation", "4. Reports", "5. Annotation"]
    assert all("Other" not in subs for subs in categories.values())  # every output has a subcategory
    files = [f for subs in categories.values() for fs in subs.values() for f in fs]
    assert "results/annotate/pancreas/pancreas_xin_scclassify.markers.png" in files
    assert "results/report_index.html" in files  # the cross-tissue summary
    assert "results/pancreas/report.html" not in files  # not the tissue pages: they embed every figure again
    assert "results/pancreas/qc/qc.png" in files and "results/pancreas/figures/qc.png" not in files  # QC once
    assert len(files) == len(set(files))
    # every listed output is embedded whole (its bytes, base64) and every figure decodes as an image
    results = json.loads(re.search(r"var results = (\{.*?\});\n", html).group(1))
    assert sorted(results) == sorted(files)
    n_png = 0
    for name, entry in results.items():
        head, data = entry["data_uri"].split(";base64,", 1)
        assert head.startswith(f"data:{entry['mime_type']};"), name
        raw = base64.b64decode(data, validate=True)
        assert raw == (tokenized / name).read_bytes(), name
        if entry["mime_type"] == "image/png":
            with Image.open(io.BytesIO(raw)) as image:
                image.verify()  # a truncated or corrupt PNG raises here
            n_png += 1
    assert n_png >= 18  # QC and 8 report figures for each of two tissues, the query's marker plot


def test_pretrain_rule_resumes_from_its_work_folder(tokenized, tmp_path, monkeypatch):
    """A pre-empted pretraining job leaves its checkpoint in results/pretrain/work-<key>; the next run of the
    rule resumes from it. The kill is the same training (the rule's stores and settings, read from the
    finished run's checkpoint) stopped after 10 of its 30 steps in that folder. Runs in a copy of the
    workflow's folder (it re-makes results/pretrain/model), so the tests' order does not matter."""
    wd = tmp_path / "wf"
    shutil.copytree(tokenized, wd, symlinks=True)
    (work,) = (wd / "results/pretrain").glob("work-*")
    ck = torch.load(work / "checkpoint.pt", weights_only=False)
    assert ck["step"] == 30  # the finished run's last checkpoint
    shutil.rmtree(work)
    monkeypatch.chdir(wd)  # the rule passes the store paths relative to the working directory
    killed = pretrain(ck["stores"], work.relative_to(wd), PretrainConfig(**ck["config"]),
                      on_step=lambda step, loss: step == 10)
    assert killed.interrupted and killed.step == 10
    proc = snakemake(wd, "results/pretrain/model", "--forcerun", "pretrain", check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "from step 10" in (wd / "logs/pretrain/pretrain.log").read_text()  # not "from step 0"
    log = pd.read_csv(wd / "results/pretrain/model/train_log.csv")
    assert list(log["step"]) == list(range(1, 31))
