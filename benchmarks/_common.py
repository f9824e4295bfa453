"""Shared by the benchmark scripts: machine description and appending a section to RESULTS.md."""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    try:
        import torch

        dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    except ImportError:
        dev = "torch not installed"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.machine()}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {dev}, Python {platform.python_version()}"


def append_results(title: str, table: str, notes: str = "") -> None:
    """Append one dated section (machine, command, table, notes) to benchmarks/RESULTS.md and print it."""
    section = (
        f"\n## {title} — {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}\n\n"
        f"- machine: {machine()}\n- command: `{' '.join(['python', *sys.argv])}`\n\n{table}\n"
        + (f"\n{notes}\n" if notes else "")
    )
    print(section)
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nAppended by the scripts in this folder; newest last.\n")
    with RESULTS.open("a") as fh:
        fh.write(section)
