"""Provenance of a tissue report: package versions, the configuration that ran, model size, loss, seeds, and
the wall time of each workflow stage (from Snakemake's benchmark files)."""

from __future__ import annotations

import html
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

import pandas as pd

from celler.report.inputs import TissueInputs
from celler.report.page import details, note, table

PACKAGES = (
    "celler",
    "torch",
    "numpy",
    "pandas",
    "scipy",
    "anndata",
    "scanpy",
    "scikit-learn",
    "celltypist",
    "matplotlib",
    "seaborn",
    "snakemake",
)


def package_versions(packages=PACKAGES) -> pd.DataFrame:
    """Installed version of each package (when the report was built)."""
    rows = []
    for name in packages:
        try:
            rows.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            rows.append((name, "not installed"))
    return pd.DataFrame(rows, columns=["package", "version"])


def parameter_count(model_pt: Path) -> int | None:
    """Number of weights in a classifier's ``model.pt`` (None when it cannot be read)."""
    import torch

    try:
        blob = torch.load(model_pt, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError):
        return None
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else {}
    return int(sum(v.numel() for v in state.values() if hasattr(v, "numel")))


def stage_times(results_dir: Path, tissue: str, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Wall time per workflow rule for ``tissue`` (its jobs summed) and the shared pretraining, from
    ``results/benchmarks/{rule}/*.tsv``; empty when the run kept no benchmarks.

    Per-run rules (``baseline``, ``celler_run``: ``{tissue}-{imbalance}-{method}-{seed}``) count only the
    evaluation's runs, at natural class sizes (``runs``: its ``method, seed`` rows): not the loss ablation's.
    """
    plan = set()
    if runs is not None:
        plan = {
            f"{tissue}-natural-{'default' if m == 'celler' else m}-{s}"
            for m, s in zip(runs["method"], runs["seed"], strict=True)
        }
    rows = []
    for d in sorted(p for p in (results_dir / "benchmarks").glob("*") if p.is_dir()):
        shared = d.name == "pretrain"
        files = [f for f in d.glob("*.tsv") if shared or f.stem == tissue or f.stem in plan]
        seconds = []
        for f in files:
            try:
                seconds.append(float(pd.read_csv(f, sep="\t")["s"].iloc[0]))
            except (KeyError, IndexError, ValueError, pd.errors.ParserError):
                continue
        if seconds:
            rows.append((d.name + (" (shared by all tissues)" if shared else ""), len(seconds), sum(seconds)))
    out = pd.DataFrame(rows, columns=["stage", "jobs", "wall time (s)"])
    return out.sort_values("wall time (s)", ascending=False, kind="stable").reset_index(drop=True)


def run_settings(inp: TissueInputs) -> pd.DataFrame:
    """Model, loss, seeds and sizes of this tissue's run, one row per fact."""
    cfg = inp.model_config or {}
    ft, chosen = cfg.get("finetune", {}), cfg.get("chosen", {})
    pre = inp.pretrain_config or {}
    model = pre.get("model") or {}
    n_params = parameter_count(inp.tissue_dir / "model" / "model.pt")
    seeds = (
        sorted(inp.eval_metrics["seed"].unique().tolist())
        if inp.eval_metrics is not None
        else [ft.get("seed")]
    )
    facts = [
        (
            "encoder",
            f"{ft.get('preset', pre.get('pretrain', {}).get('preset', '?'))}: "
            f"{model.get('n_layers', '?')} layers x d_model {model.get('d_model', '?')}",
        ),
        ("classifier weights", f"{n_params:,}" if n_params else "–"),
        ("start point", str(cfg.get("pretrained") or ft.get("init", "–"))),
        ("readout / gene selection", f"{ft.get('readout', '–')} / {ft.get('gene_selection', '–')}"),
        ("loss", f"{chosen.get('loss', ft.get('loss', '–'))} {chosen.get('loss_params', '')}"),
        ("training / validation cells", f"{chosen.get('n_train', '–')} / {chosen.get('n_val', '–')}"),
        (
            "validation macro-F1 of the kept epoch",
            f"{chosen['val_macro_f1']:.3f}" if "val_macro_f1" in chosen else "–",
        ),
        ("fine-tuning seed; evaluation seeds", f"{ft.get('seed', '–')}; {', '.join(map(str, seeds))}"),
        ("pretraining", _pretraining(pre)),
    ]
    return pd.DataFrame(facts, columns=["what", "value"])


def _pretraining(pre: dict) -> str:
    if "final_loss" not in pre:
        return "–"
    n = pre.get("n_cells")
    return (
        f"{pre.get('steps', '?')} steps on {n:,} cells"
        if isinstance(n, int)
        else f"{pre.get('steps', '?')} steps"
    ) + f", final loss {pre['final_loss']:.3f}"


def _config_text(inp: TissueInputs, run_config: Mapping | None) -> str:
    import yaml

    if run_config:
        shown = {
            k: run_config[k] for k in ("tokenize", "pretrain", "finetune", "evaluate") if k in run_config
        }
        shown = {"tissues": {inp.tissue: run_config.get("tissues", {}).get(inp.tissue)}, **shown}
        return yaml.safe_dump(shown, sort_keys=False, default_flow_style=None, width=110)
    return yaml.safe_dump((inp.model_config or {}).get("finetune", {}), sort_keys=False, width=110)


def provenance_section(inp: TissueInputs, run_config: Mapping | None) -> str:
    times = stage_times(inp.results_dir, inp.tissue, inp.eval_metrics)
    time_html = (
        table(times.assign(**{"wall time (s)": times["wall time (s)"].round(1)}), digits=1)
        if len(times)
        else note("No Snakemake benchmark files under results/benchmarks/.")
    )
    where = (
        "the workflow configuration of this tissue"
        if run_config
        else "the fine-tuning settings (model/config.json)"
    )
    config = details(
        f"The configuration that ran: {where}", f"<pre>{html.escape(_config_text(inp, run_config))}</pre>"
    )
    return (
        '<section id="provenance"><h2>Provenance</h2>'
        f"<h3>This run</h3>{table(run_settings(inp))}"
        f"<h3>Wall time per stage</h3>{time_html}"
        f"<h3>Configuration</h3>{config}"
        f"<h3>Software</h3>{note('Versions installed when this report was built.')}"
        f"{table(package_versions())}"
        "</section>"
    )
