"""Report figures (celler.plots) and marker-gene selection (celler.markers), on real pancreas data."""

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from celler import markers as mk
from celler import plots
from celler.errors import CellerError

ROOT = Path(__file__).resolve().parents[1]
MARKERS_DIR = ROOT / "resources" / "markers"


@pytest.fixture(scope="module")
def wang():
    """Real Wang et al. pancreas cells (log-normalised, 219 genes, 7 long-tailed classes)."""
    a = ad.read_h5ad(ROOT / "resources/data/pancreas_wang_scclassify.h5ad")
    a.obs["celltype"] = a.obs["celltype"].astype(str).astype("category")
    return a


def _saved(fig, tmp_path: Path, name: str, *, min_bytes: int = 5000) -> Path:
    path = plots.save_figure(fig, tmp_path / f"{name}.png")
    assert path.exists()
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
    key = (lambda b: b[1].x0) if axis == "x" else (lambda b: b[1].y0)
    boxes.sort(key=key)
    return [(a[0], b[0]) for a, b in zip(boxes, boxes[1:], strict=False) if a[1].overlaps(b[1])]


def _many_classes(n: int) -> list[str]:
    return [f"Cell type number {i:02d} (long name)" for i in range(n)]


# ------------------------------------------------------------------------------------------------ palette


def test_palette_is_colour_blind_safe_when_small_and_distinct_up_to_60():
    assert plots.palette(5) == plots.OKABE_ITO[:5]
    assert len(set(plots.palette(9))) == 9
    assert len(set(plots.palette(20))) == 20
    assert len(set(plots.palette(60))) == 60


# ------------------------------------------------------------------------------------------ class sizes


def test_class_sizes_rows_sorted_largest_first(wang, tmp_path):
    counts = pd.crosstab(
        wang.obs["celltype"].astype(str), np.where(np.arange(wang.n_obs) % 3, "train", "test")
    )
    fig = plots.class_sizes(counts)
    _saved(fig, tmp_path, "class_sizes")
    ax = fig.axes[0]
    expected = counts.sum(axis=1).sort_values(ascending=False).index.tolist()
    assert _labels(ax, "y") == expected
    assert ax.get_xscale() == "log"


def test_class_sizes_60_classes_labels_do_not_overlap(tmp_path):
    names = _many_classes(60)
    counts = pd.DataFrame(
        {"train": np.geomspace(2000, 3, 60).astype(int), "test": np.geomspace(800, 1, 60).astype(int)},
        index=names,
    )
    fig = plots.class_sizes(counts)
    _saved(fig, tmp_path, "class_sizes60")
    assert _overlapping(fig, fig.axes[0], "y") == []


# --------------------------------------------------------------------------------------------- training


def test_training_curves_panels(tmp_path):
    ft = pd.DataFrame(
        {
            "stage": ["main"] * 4,
            "epoch": range(4),
            "train_loss": [3, 2, 1.5, 1.2],
            "val_macro_f1_subclass": [0.2, 0.4, 0.6, 0.65],
            "val_macro_f1_parent": [0.5, 0.7, 0.8, 0.8],
        }
    )
    pt = pd.DataFrame({"step": range(1, 101), "loss": np.linspace(4, 1, 100)})
    fig = plots.training_curves(ft, pt)
    _saved(fig, tmp_path, "training")
    assert [a.get_title() for a in fig.axes] == [
        "Pretraining",
        "Fine-tuning: loss",
        "Fine-tuning: validation",
    ]
    assert [t.get_text() for t in fig.axes[2].get_legend().get_texts()] == ["subclass", "parent"]
    assert len(plots.training_curves(ft, None).axes) == 2


# ------------------------------------------------------------------------------------------- f1 vs size


def test_f1_vs_size_one_series_per_method(tmp_path):
    rng = np.random.default_rng(0)
    classes, counts = ["a", "b", "c", "d"], [500, 80, 12, 3]
    rows = [
        (m, s, c, rng.uniform(), n, 10, n < 20)
        for m in ["knn", "celler", "logreg"]
        for s in (0, 1)
        for c, n in zip(classes, counts, strict=True)
    ]
    pc = pd.DataFrame(rows, columns=["method", "seed", "class", "f1", "train_count", "support", "rare"])
    fig = plots.f1_vs_size(pc)
    _saved(fig, tmp_path, "f1")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["rare classes", "celler", "knn", "logreg"]  # Celler first
    celler = [ln for ln in ax.get_lines() if ln.get_label() == "celler"][0]
    mean_f1 = pc[pc.method == "celler"].groupby("class")["f1"].mean()
    assert sorted(celler.get_ydata()) == pytest.approx(sorted(mean_f1))  # seeds averaged


# -------------------------------------------------------------------------------------------- confusion


def test_confusion_heatmap_rows_normalised(tmp_path):
    conf = pd.DataFrame([[8, 2, 0], [1, 3, 0]], index=["alpha", "beta"], columns=["alpha", "beta", "gamma"])
    fig = plots.confusion_heatmap(conf)
    _saved(fig, tmp_path, "confusion")
    ax = fig.axes[0]
    assert _labels(ax, "y") == ["alpha", "beta"]
    assert _labels(ax, "x") == ["alpha", "beta", "gamma"]
    data = ax.get_images()[0].get_array()
    assert np.asarray(data).sum(axis=1) == pytest.approx([1, 1])


def test_confusion_heatmap_60_classes_readable(tmp_path):
    names = _many_classes(60)
    rng = np.random.default_rng(1)
    conf = pd.DataFrame(rng.integers(0, 5, (60, 60)) + np.eye(60, dtype=int) * 30, index=names, columns=names)
    fig = plots.confusion_heatmap(conf)
    _saved(fig, tmp_path, "confusion60")
    assert _overlapping(fig, fig.axes[0], "x") == []
    assert _overlapping(fig, fig.axes[0], "y") == []


# ------------------------------------------------------------------------------------------------- umap


def test_umap_embedding_shared_legend(tmp_path):
    rng = np.random.default_rng(2)
    true = np.array(["b", "a", "c"] * 20)
    pred = true.copy()
    pred[:5] = "d"
    fig = plots.umap_embedding(
        rng.normal(size=(60, 2)), {"true": true, "predicted": pred}, order=["a", "b", "c", "e"]
    )
    _saved(fig, tmp_path, "umap")
    assert [a.get_title() for a in fig.axes] == ["true label", "predicted label"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "a",
        "b",
        "c",
        "d",
    ]  # only labels that occur


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
    with pytest.raises(CellerError, match="NOT_A_GENE"):
        mk.dot_table(wang, "celltype", ["NOT_A_GENE"])


def test_marker_dotplot_rows_and_columns(wang, tmp_path):
    order = ["alpha", "beta", "delta", "gamma", "ductal", "stellate", "acinar"]
    ranked = mk.ranked_markers(wang, "celltype", n=2)
    assert set(ranked) == set(order)
    assert all(len(g) == 2 and set(g) <= set(wang.var_names) for g in ranked.values())
    known = mk.known_markers(
        order, mk.load_marker_tables(MARKERS_DIR), wang.var_names, tissue="Pancreas", n=2
    )
    chosen = mk.combine_markers(order, ranked, known)
    assert chosen["gene"].is_unique
    table = mk.dot_table(wang, "celltype", chosen["gene"].tolist(), order=order)
    fig = plots.marker_dotplot(table, markers=chosen, title="pancreas")
    _saved(fig, tmp_path, "dotplot")
    ax = fig.axes[0]
    assert _labels(ax, "y") == order
    known_genes = set(chosen.loc[chosen["known"], "gene"])
    assert known_genes  # the tables know pancreas markers present in these 219 genes
    assert _labels(ax, "x") == [g + ("*" if g in known_genes else "") for g in chosen["gene"]]
    assert len(ax.collections[0].get_offsets()) == len(order) * len(chosen)
    assert table["fraction"].between(0, 1).all()


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
    ax = fig.axes[0]
    assert _overlapping(fig, ax, "x") == []
    assert _overlapping(fig, ax, "y") == []


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
    assert mk.known_markers(labels, table, wang.var_names, tissue="Brain").empty  # no match: nothing
    immune = mk.tissue_rows(table, "Immune system")
    assert {"Immune system", "Blood"} <= set(immune["tissue"])


def test_marker_tables_missing_raise(tmp_path):
    with pytest.raises(CellerError, match="no marker table"):
        mk.load_marker_tables(tmp_path)


def test_marker_budget_shrinks_with_classes():
    assert mk.marker_budget(7) == (3, 2)
    assert sum(mk.marker_budget(60)) * 60 <= 120


def test_annotate_marker_dotplot_uses_the_report_markers(wang, tmp_path):
    """celler annotate's dot plot: one column per ranked marker of each type with 3+ cells, one row per type;
    a single type gives the small 'nothing to compare' figure."""
    from PIL import Image

    from celler.annotate import marker_dotplot

    sizes = wang.obs["celltype"].value_counts()
    n_types = int((sizes >= 3).sum())
    ranked = mk.ranked_markers(wang[wang.obs["celltype"].isin(sizes[sizes >= 3].index)].copy(), "celltype", n=2)
    n_genes = len({g for genes in ranked.values() for g in genes})
    marker_dotplot(wang, "celltype", tmp_path / "m.png", n_markers=2)
    one = wang.copy()
    one.obs["celltype"] = "alpha"
    marker_dotplot(one, "celltype", tmp_path / "one.png")
    with Image.open(tmp_path / "m.png") as im, Image.open(tmp_path / "one.png") as empty:
        assert empty.size == (660, 220)  # plots.empty_figure at 110 dpi
        assert im.size[0] > empty.size[0] and im.size[1] > empty.size[1]
    assert n_types >= 2 and n_genes >= n_types  # the plot above had something to rank
