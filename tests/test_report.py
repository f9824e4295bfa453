"""HTML reports (celler.report): a results folder built from the real Wang pancreas cells plus synthetic
predictions, the tissue page with and without the baseline comparison, the index page, and the page opened in
headless Chromium (skipped when the `chromium` binary is missing, a failure under CI=true)."""

import json
import os
import re
import shutil
import subprocess
from html import unescape
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from celler.errors import CellerError
from celler.metrics import evaluate, scalar_row
from celler.report import FIGURES, build_index, build_tissue_report
from conftest import skip_or_fail

ROOT = Path(__file__).resolve().parents[1]
MARKERS_DIR = ROOT / "resources" / "markers"
CHROMIUM = shutil.which("chromium")


# ------------------------------------------------------------------------------------- a results folder


def _predict(true: np.ndarray, classes: list[str], rng, accuracy: float) -> np.ndarray:
    wrong = rng.random(len(true)) > accuracy
    return np.where(wrong, rng.choice(classes, len(true)), true)


def _scores(cells, true, pred, counts, level="subclass"):
    t = pd.DataFrame({"cell": cells, "split": "test", "level": level, "true": true, "predicted": pred})
    res = evaluate(t, counts, level=level)
    per_class = res["per_class"].reset_index().assign(level=level)
    return t, {"level": level} | scalar_row(res), per_class


def make_results(root: Path, tissue: str = "pancreas", *, evaluation: bool = False) -> Path:
    """The workflow's outputs for one tissue (layout of results/{tissue}/) from the real Wang cells."""
    rng = np.random.default_rng(0)
    a = ad.read_h5ad(ROOT / "resources/data/pancreas_wang_scclassify.h5ad")
    labels = a.obs["celltype"].astype(str).to_numpy()
    split = np.empty(a.n_obs, dtype=object)
    for c in np.unique(labels):  # 60% of each class for training
        idx = rng.permutation(np.flatnonzero(labels == c))
        split[idx] = np.where(np.arange(len(idx)) < max(1, int(0.6 * len(idx))), "train", "test")
    kept = np.ones(a.n_obs, dtype=bool)
    kept[:7] = False
    d = root / tissue
    for sub in ("qc", "vocab", "model", "celler"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    cells = pd.DataFrame(
        {
            "input": "pancreas_wang_scclassify.h5ad",
            "kind": "log",
            "n_genes": (a.X > 0).sum(axis=1).A1,
            "total": np.asarray(a.X.sum(axis=1)).ravel(),
            "pct_mito": 0.0,
            "label": labels,
            "parent": "",
            "batch": np.where(np.arange(a.n_obs) % 2, "wang_a", "wang_b"),
            "input_split": "",
            "kept": kept,
            "reason": np.where(kept, "", "min_genes"),
            "split": np.where(kept, split, ""),
        },
        index=pd.Index(a.obs_names, name="cell"),
    )
    cells.to_csv(d / "qc/cells.tsv.gz", sep="\t")
    genes = pd.DataFrame({"gene": a.var_names, "n_cells": (a.X > 0).sum(axis=0).A1, "kept": True})
    genes.loc[0, "kept"] = False
    genes.to_csv(d / "qc/genes.tsv.gz", sep="\t", index=False)
    pd.DataFrame(
        {
            "step": ["input cells", "cells: min_genes", "genes: min_cells"],
            "removed": [0, 7, 1],
            "left": [a.n_obs, kept.sum(), a.n_vars - 1],
        }
    ).to_csv(d / "qc/summary.tsv", sep="\t", index=False)
    fig = Figure(figsize=(3, 2))
    fig.add_subplot().hist(cells["n_genes"])
    fig.savefig(d / "qc/qc.png")
    (d / "vocab/report.tsv").write_text(
        f"what\tn\ngenes via symbol\t{a.n_vars - 2}\ngenes via unmapped\t1\n"
        f"genes in dataset\t{a.n_vars - 1}\n# unmapped genes (1): FAM84A\n"
    )

    x = a[kept, genes.loc[genes.kept, "gene"].to_numpy()].copy()
    x.obs = pd.DataFrame(
        {
            "celler_label": labels[kept],
            "celler_batch": cells["batch"].to_numpy()[kept],
            "celler_split": split[kept],
        },
        index=x.obs_names,
    )
    x.write_h5ad(d / "expr.h5ad")

    classes = sorted(np.unique(labels))
    train = pd.Series(labels[kept & (split == "train")]).value_counts().reindex(classes, fill_value=0)
    (d / "model/labels.json").write_text(
        json.dumps(
            {
                "levels": {"subclass": classes},
                "class_counts": {"subclass": train.astype(int).tolist()},
                "subclass_to_parent": {},
            }
        )
    )
    pd.DataFrame(
        {
            "stage": "main",
            "epoch": range(5),
            "train_loss": [2.0, 1.4, 1.0, 0.8, 0.7],
            "val_macro_f1_subclass": [0.3, 0.5, 0.6, 0.7, 0.72],
        }
    ).to_csv(d / "model/train_log.csv", index=False)
    (root / "pretrain/model").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "step": range(1, 51),
            "epoch": 0,
            "loss": np.linspace(4, 1.2, 50) + rng.normal(0, 0.1, 50),
            "lr": 1e-3,
        }
    ).to_csv(root / "pretrain/model/train_log.csv", index=False)

    test = kept & (split == "test")
    test_cells, true = a.obs_names[test].to_numpy(), labels[test]
    pred_table, metrics, per_class = _scores(test_cells, true, _predict(true, classes, rng, 0.8), train)
    pred_table.assign(confidence=0.9).to_csv(d / "celler/predictions.tsv", sep="\t", index=False)
    pd.DataFrame([metrics]).to_csv(d / "celler/metrics.tsv", sep="\t", index=False)
    per_class.to_csv(d / "celler/per_class.tsv", sep="\t", index=False)
    dense = a[test].X.toarray()
    u, s, _ = np.linalg.svd(dense - dense.mean(axis=0), full_matrices=False)
    np.savez(d / "celler/embeddings.npz", cells=test_cells.astype(str), embedding=(u[:, :16] * s[:16]))

    if evaluation:
        rows, pcs = [], []
        for method, acc in [("knn", 0.6), ("celler", 0.8), ("logreg", 0.85)]:
            for seed in (0, 1):
                _, m, pc = _scores(test_cells, true, _predict(true, classes, rng, acc), train)
                rows.append({"method": method, "seed": seed} | m)
                pcs.append(pc.assign(method=method, seed=seed))
        (d / "evaluation").mkdir()
        pd.DataFrame(rows).drop(columns=["n_closed", "n_open"]).to_csv(
            d / "evaluation/metrics.tsv", sep="\t", index=False
        )
        pd.concat(pcs).to_csv(d / "evaluation/per_class.tsv", sep="\t", index=False)
    return root


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    """A pancreas report with baselines, known markers and pretraining curves."""
    root = make_results(tmp_path_factory.mktemp("results"), evaluation=True)
    html = build_tissue_report(
        "pancreas",
        root,
        root / "pancreas/report.html",
        marker_tissue="Pancreas",
        markers_dir=MARKERS_DIR,
        pretrain_log=root / "pretrain/model/train_log.csv",
    )
    return root, html


# ---------------------------------------------------------------------------------------------- content


def test_tissue_report_figures_and_content(full_report):
    root, html_path = full_report
    html = html_path.read_text()
    for name in FIGURES:
        png = root / "pancreas/figures" / f"{name}.png"
        assert png.exists(), name
        assert png.stat().st_size > 5000, name
        assert f'alt="{FIGURES[name]}"' in html
    for section in ("data", "training", "results", "embeddings", "markers"):
        assert f'id="{section}"' in html
    for text in ("cells before QC", "Vocabulary coverage", "FAM84A"):
        assert text in html
    assert "wang_a" in html  # batches table
    for method in ("celler", "logreg", "knn"):
        assert f'<td class="txt">{method}</td>' in html
    assert "mean ± std over seeds" in html
    assert "Known markers used" in html
    assert "PanglaoDB" in html
    assert re.search(r"<td[^>]*>[^<]*PanglaoDB", html)  # a source in the known-markers table, not just the note
    assert "No pretraining log" not in html


def test_tissue_report_is_self_contained(full_report):
    _, html_path = full_report
    html = html_path.read_text()
    assert "<script" not in html.lower()
    srcs = re.findall(r'(?:src|href)="([^"#][^"]*)"', html)
    assert srcs, "no embedded images"
    assert all(s.startswith("data:image/png;base64,") for s in srcs), [s[:40] for s in srcs]
    assert len(srcs) == len(FIGURES) + 1  # the figures and the QC plot
    assert not re.search(r"url\(|@import|https?://", html)


def test_tissue_report_without_evaluation_shows_celler_only(tmp_path):
    root = make_results(tmp_path)
    (root / "pretrain").rename(tmp_path / "unused")
    html = build_tissue_report("pancreas", root, tmp_path / "out/report.html", rare_fraction=0.05).read_text()
    assert "Celler only" in html
    assert "below 5% of the training cells" in html and "(5% of the training cells)" in html  # the configured cut
    assert "3%" not in html
    assert '<td class="txt">logreg</td>' not in html
    assert "No <code>marker_tissue</code>" in html
    assert "No pretraining log" in html
    assert len(list((tmp_path / "out/figures").glob("*.png"))) == len(FIGURES)


def test_tissue_report_missing_input_names_the_file(tmp_path):
    root = make_results(tmp_path)
    (root / "pancreas/celler/predictions.tsv").unlink()
    with pytest.raises(CellerError, match="predictions.tsv"):
        build_tissue_report("pancreas", root, tmp_path / "report.html")


def test_index_links_reports(full_report):
    root, _ = full_report
    index = build_index(["pancreas", "kidney"], root / "report_index.html").read_text()
    assert 'href="pancreas/report.html"' in index
    assert "kidney</a> (not built)" in index
    f1 = pd.read_csv(root / "pancreas/celler/metrics.tsv", sep="\t")["macro_f1"].iloc[0]
    assert f"{f1:.3f}" in index
    assert "<script" not in index


# ---------------------------------------------------------------------------------------------- browser


# Appended to a copy of the report: after the page has loaded, write what the browser made of it into the DOM
# that --dump-dom prints. The report itself has no script (test_index_links_reports checks the index page).
PROBE = """<script>
window.celler_errors = [];
window.addEventListener("error", e => window.celler_errors.push(String(e.message)));
window.addEventListener("load", () => {
  const imgs = [...document.images];
  const root = document.documentElement;
  const probe = document.createElement("pre");
  probe.id = "celler-probe";
  probe.textContent = JSON.stringify({
    images: imgs.length,
    broken: imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt),
    scroll_width: root.scrollWidth,
    client_width: root.clientWidth,
    errors: window.celler_errors,
  });
  document.body.appendChild(probe);
});
</script>"""
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--enable-logging=stderr", "--v=0", "--hide-scrollbars",
                  "--window-size=1400,4000"]


def _chromium(*args, cwd) -> subprocess.CompletedProcess:
    run = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, *args], capture_output=True, text=True, timeout=120,
                         cwd=cwd)
    assert run.returncode == 0, f"chromium exited {run.returncode}: {run.stderr[-2000:]}"
    console = [ln for ln in run.stderr.splitlines() if "INFO:CONSOLE" in ln]
    assert console == [], console
    return run


@pytest.fixture
def chromium():
    if CHROMIUM is None:
        skip_or_fail("chromium not installed (apt-get install -y chromium)")
    return CHROMIUM


@pytest.mark.browser
def test_report_renders_in_headless_chromium(chromium, full_report, tmp_path):
    _, html_path = full_report
    html = html_path.read_text()
    probe_page = tmp_path / "report_probe.html"  # the report is self-contained: it can move
    probe_page.write_text(html.replace("</body>", PROBE + "</body>"))
    dom = _chromium("--dump-dom", probe_page.resolve().as_uri(), cwd=tmp_path).stdout
    found = re.search(r'<pre id="celler-probe">(.*?)</pre>', dom, re.S)
    assert found, f"the probe script did not run: {dom[-500:]}"
    result = json.loads(unescape(found.group(1)))
    assert result["images"] == html.count("<img") >= len(FIGURES), result
    assert result["broken"] == [], result  # every embedded figure decodes
    assert result["scroll_width"] <= result["client_width"], result  # nothing wider than the window
    assert result["errors"] == [], result

    shot = tmp_path / "report_pancreas.png"  # copied to $CELLER_TEST_ARTIFACTS (.ci/run: ci-artifacts/)
    _chromium(f"--screenshot={shot}", html_path.resolve().as_uri(), cwd=tmp_path)
    assert shot.exists() and shot.stat().st_size > 50_000  # a rendered page, not a blank one
    artefacts = os.environ.get("CELLER_TEST_ARTIFACTS")
    if artefacts:
        Path(artefacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(artefacts) / shot.name)
