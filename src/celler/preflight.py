"""Check each tissue's input files against its config block when the workflow is parsed, before any job runs.

The Snakemake catalog workflows validate their sample sheets at parse time; this is the same for the keys that
name things inside the ``.h5ad`` files: ``label``, ``parent_label``, ``batch`` and a ``split: {by: column}``
column must be ``obs`` columns, ``test_values`` must match some cell, ``matrix: raw`` / ``layers/NAME`` must
exist, and ``drop_labels`` must leave a class. Only the ``obs`` table and the names of ``raw`` and the layers
are read (AnnData in backed mode: no matrix), so it costs little per file. A problem is one line naming the config, the
key, the file and what the file has instead (close matches first).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import pandas as pd

from celler.config import DatasetSpec, all_datasets
from celler.errors import CellerError


def _read_obs(path: Path) -> tuple[pd.DataFrame, bool, list[str]]:
    """(obs table, whether ``raw`` exists, layer names) of an .h5ad file, without its matrices."""
    import warnings

    import anndata as ad

    try:
        with warnings.catch_warnings():  # old-format files warn about moved fields: not the user's concern here
            warnings.simplefilter("ignore")
            a = ad.read_h5ad(path, backed="r")  # obs and var in memory, the matrices stay on disk
        try:
            return a.obs, a.raw is not None, list(a.layers.keys())
        finally:
            a.file.close()
    except (OSError, KeyError, ValueError) as e:  # not HDF5, or not AnnData: the data stage reports it in full
        msg = f"{path}: cannot be read as .h5ad ({type(e).__name__}: {str(e)[:80]}); is it an AnnData file?"
        raise CellerError(msg) from e


def _columns_hint(wanted: str, columns) -> str:
    columns = [str(c) for c in columns]
    close = difflib.get_close_matches(wanted, columns, n=3, cutoff=0.5)
    rest = [c for c in columns if c not in close]
    shown = close + rest[: max(0, 8 - len(close))]
    more = f", … ({len(columns) - len(shown)} more)" if len(columns) > len(shown) else ""
    return ", ".join(shown) + more if shown else "none"


def check_tissue_inputs(name: str, spec: DatasetSpec, source: str) -> None:
    """Raise a one-line CellerError when tissue ``name``'s config keys do not fit its input files."""
    where = f"{source}: tissues.{name}"
    split = spec.split or {}
    column_keys = [("label", spec.label), ("parent_label", spec.parent_label), ("batch", spec.batch)]
    if split.get("by") == "column":
        column_keys.append(("split.column", split.get("column")))
    labels, split_values = [], []
    for inp in spec.inputs:
        obs, has_raw, layers = _read_obs(inp.path)
        for key, column in column_keys:
            if column is not None and column not in obs.columns:
                msg = (f"{where}.{key}: {inp.path} has no obs column {column!r}; its columns: "
                       f"{_columns_hint(column, obs.columns)}")
                raise CellerError(msg)
        if spec.matrix == "raw" and not has_raw:
            msg = f"{where}.matrix: {inp.path} has no .raw; use matrix: X or layers/NAME (layers: {layers or 'none'})"
            raise CellerError(msg)
        if spec.matrix.startswith("layers/") and spec.matrix.split("/", 1)[1] not in layers:
            layer = spec.matrix.split("/", 1)[1]
            msg = (f"{where}.matrix: {inp.path} has no layer {layer!r}; its layers: "
                   f"{_columns_hint(layer, layers)} (or use matrix: X / raw)")
            raise CellerError(msg)
        if spec.label is not None:
            labels.append(obs[spec.label].dropna().astype(str))
        if split.get("by") == "column":
            split_values.append(obs[split["column"]].dropna().astype(str))
    if labels:
        present = pd.concat(labels).unique()
        kept = sorted(set(present) - set(map(str, spec.drop_labels)))
        if not kept:
            msg = (f"{where}.drop_labels: removes every class of {spec.label!r} ({', '.join(sorted(present)[:8])}); "
                   "keep at least one")
            raise CellerError(msg)
    if split_values:
        values = pd.concat(split_values).unique()
        wanted = [str(v) for v in split.get("test_values", [])]
        if not set(wanted) & set(values):
            msg = (f"{where}.split.test_values: {wanted} match no cell of column {split['column']!r}; its values: "
                   f"{_columns_hint(wanted[0] if wanted else '', sorted(values))}")
            raise CellerError(msg)


def check_inputs_against_config(config: dict[str, Any], source: str = "config") -> None:
    """:func:`check_tissue_inputs` for every tissue of ``config`` (after :func:`check_input_files`)."""
    datasets = all_datasets(config)
    for name in config.get("tissues", {}):
        check_tissue_inputs(name, datasets[name], source)


__all__ = ["check_inputs_against_config", "check_tissue_inputs"]
