"""The paper's dataset blocks (config/paper.yaml) on small files written in the same layouts."""

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import yaml
from conftest import ROOT, build_store

from celler.data.tokens import TokenStore

PAPER = yaml.safe_load((ROOT / "config/paper.yaml").read_text())


def _wang_like(n_cells: int, seed: int) -> ad.AnnData:
    a = ad.read_h5ad(ROOT / "resources/data/pancreas_wang_scclassify.h5ad")
    rng = np.random.default_rng(seed)
    a = a[np.sort(rng.choice(a.n_obs, n_cells, replace=False))].copy()
    a.obs_names = [f"f{seed}_{c}" for c in a.obs_names]
    return a


def _point_inputs(block: dict, paths: list[Path]) -> dict:
    return {**block, "inputs": [{**i, "path": str(p)} for i, p in zip(block["inputs"], paths, strict=True)]}


def test_hpancreas_tosica_layout(tmp_path):
    """TOSICA demo_train/test: obs has only 'Celltype', var only 'Gene Symbol', X log-normalised; the test set
    has a class absent from training ('MHC class II')."""
    paths = []
    for name, seed in (("demo_train", 0), ("demo_test", 1)):
        a = _wang_like(120, seed)
        obs = pd.DataFrame({"Celltype": a.obs["celltype"].astype(str).to_numpy()}, index=a.obs_names)
        if name == "demo_test":
            obs.iloc[:5, 0] = "MHC class II"
        b = ad.AnnData(X=a.X, obs=obs, var=pd.DataFrame({"Gene Symbol": a.var_names}, index=a.var_names))
        paths.append(tmp_path / f"{name}.h5ad")
        b.write_h5ad(paths[-1])
    store = TokenStore(build_store(tmp_path / "out", "hpancreas", _point_inputs(PAPER["tissues"]["hpancreas"], paths)))
    cells = store.cells
    assert (cells.split == "train").sum() == 120 and (cells.split == "test").sum() == 120
    assert "MHC class II" in set(cells.loc[cells.split == "test", "label"])
    assert store.meta["input_kind"] == "log" and store.meta["n_tokens"] > 0


def test_ms_scgpt_layout(tmp_path):
    """scGPT MS: label in 'Factor Value[inferred cell type - authors labels]', symbols in var['gene_name']."""
    label = PAPER["tissues"]["ms"]["label"]
    assert label == "Factor Value[inferred cell type - authors labels]"
    paths = []
    for name, seed in (("c_data", 0), ("filtered_ms_adata", 1)):
        a = _wang_like(80, seed)
        var = pd.DataFrame({"gene_name": a.var_names.to_numpy()}, index=[f"g{i}" for i in range(a.n_vars)])
        b = ad.AnnData(X=a.X, obs=pd.DataFrame({label: a.obs["celltype"].astype(str).to_numpy()}, index=a.obs_names),
                       var=var)
        paths.append(tmp_path / f"{name}.h5ad")
        b.write_h5ad(paths[-1])
    out = build_store(tmp_path / "out", "ms", _point_inputs(PAPER["tissues"]["ms"], paths))
    store = TokenStore(out)
    assert len(store) == 160
    mapping = pd.read_csv(tmp_path / "out/map.tsv.gz", sep="\t")
    assert (mapping.source == "symbol").sum() >= 200  # mapped through var['gene_name'], not the g0.. index
