"""A many-class benchmark from bundled cells: Kang's four PBMC types split into ~35 fine subtypes, two levels.

    python benchmarks/many_classes.py --label-fractions 1 0.1 --seeds 0 1 2     # arguments of accuracy.py

The five bundled benchmarks have 4 to 11 classes; the tissues users bring (and the one issue 22 reports, 47
fine types) have dozens. This builds one with dozens from the Kang PBMC file: within each of its four cell
types, Leiden clusters (resolution 1) of the type's own cells on 20 principal components of its 1,000 most
variable genes, each donor's mean removed first so that a cluster is a state shared by donors, not a donor;
clusters under 25 cells are left out. The fine label is "<type> <cluster>", the parent label the type. Such
labels are what atlas annotations often are (clusters within a type), but they are defined in a principal
component space, which favours methods that read one (``logreg_pca``, Celler's program view): read the table
for how methods scale with the number of classes, not as biology. The split is a stratified 30% of the cells
(seeded), donor as the binning batch. Writes ``results/benchmarks/kang_fine.h5ad`` and a whole workflow config
with this one tissue (``results/benchmarks/many_classes.yaml``), then runs ``benchmarks/accuracy.py`` on it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "results/benchmarks"
SOURCE = "resources/data/pbmc_kang2018_8k_counts_muscat.h5ad"
MIN_CELLS = 25


def fine_labels(adata, resolution: float = 1.0, seed: int = 0):
    """Per cell type, donor-centred Leiden clusters of its own cells; None for clusters under MIN_CELLS."""
    import pandas as pd
    import scanpy as sc

    labels = pd.Series(None, index=adata.obs_names, dtype=object)
    for cell_type in adata.obs["celltype"].cat.categories:
        sub = adata[adata.obs["celltype"] == cell_type].copy()
        sc.pp.normalize_total(sub, target_sum=1e4)
        sc.pp.log1p(sub)
        sc.pp.highly_variable_genes(sub, n_top_genes=1000)
        sc.pp.pca(sub, n_comps=20, mask_var="highly_variable", random_state=seed)
        pcs = sub.obsm["X_pca"].copy()
        for donor in sub.obs["donor"].unique():
            rows = (sub.obs["donor"] == donor).to_numpy()
            pcs[rows] -= pcs[rows].mean(axis=0)
        sub.obsm["X_centred"] = pcs
        sc.pp.neighbors(sub, use_rep="X_centred", n_neighbors=15, random_state=seed)
        sc.tl.leiden(sub, resolution=resolution, flavor="igraph", n_iterations=2, random_state=seed)
        sizes = sub.obs["leiden"].value_counts()
        keep = sub.obs["leiden"].map(sizes).to_numpy() >= MIN_CELLS
        labels[sub.obs_names[keep]] = cell_type + " " + sub.obs["leiden"].astype(str)[keep]
    return labels


def build() -> Path:
    """The tissue file and the config (rebuilt only when missing)."""
    import anndata as ad

    h5ad, cfg_path = OUT / "kang_fine.h5ad", OUT / "many_classes.yaml"
    if not h5ad.exists():
        adata = ad.read_h5ad(REPO / SOURCE)
        labels = fine_labels(adata)
        adata = adata[labels.notna().to_numpy()].copy()
        adata.obs["celltype_fine"] = labels.dropna().astype("category")
        OUT.mkdir(parents=True, exist_ok=True)
        adata.write_h5ad(h5ad)
        print(f"{h5ad}: {adata.n_obs} cells, {adata.obs['celltype_fine'].nunique()} fine types")
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["tissues"] = {"kang_fine": {
        "inputs": [str(h5ad.relative_to(REPO))], "label": "celltype_fine", "parent_label": "celltype",
        "batch": "donor", "split": {"by": "fraction", "test_fraction": 0.3, "seed": 0}, "qc": {"min_genes": 100}}}
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return cfg_path


def main() -> None:
    cfg_path = build()
    args = sys.argv[1:] or ["--label-fractions", "1", "0.1"]
    subprocess.run([sys.executable, str(REPO / "benchmarks/accuracy.py"), "--configfile", str(cfg_path),
                    "--title", "Many-class benchmark (Kang fine subtypes, benchmarks/many_classes.py)", *args],
                   check=True)


if __name__ == "__main__":
    main()
