"""Wall time of the README's two commands on a fresh clone: the demo workflow and the test suite.

    python benchmarks/demo_time.py            # clone, install, demo, tests; appends to benchmarks/RESULTS.md
    python benchmarks/demo_time.py --dry      # print what it would run, run nothing
    python benchmarks/demo_time.py --steps tests

The commands are read from the README's first code block (the lines ending in ``# demo workflow ...`` and
``# tests``), so what is timed is what the README says. Each line is "make and fill .venv && run": the part
before the last ``&&`` (the install) is run and timed once, then each run part (``snakemake -c2``, ``python -m
pytest -q``) separately, with .venv activated. The clone is of the committed ``--ref`` of ``--source`` (by
default this repository's HEAD: commit first), into a temporary folder that is deleted afterwards unless
``--keep``. Reported: each step's wall time, the number of Snakemake jobs, the test counts, and the machine
(cores, memory, the 1-minute load average before and after, which shows whether other work shared the cores).
Measure on a quiet machine: the README's figures come from here.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import append_results  # noqa: E402

MARKERS = {"demo": "# demo workflow", "tests": "# tests"}  # how the README's lines end


def readme_commands(readme: Path) -> tuple[str, dict[str, str]]:
    """(install, {step: run command}) from the README's demo and test lines; both must share the install."""
    lines = readme.read_text().splitlines()
    installs, runs = set(), {}
    for step, marker in MARKERS.items():
        found = [ln for ln in lines if marker in ln and "&&" in ln]
        if len(found) != 1:
            sys.exit(f"demo_time: expected one README line with '{marker}', found {len(found)}")
        command = found[0].split(marker)[0].strip()
        install, run = command.rsplit("&&", 1)
        installs.add(install.strip())
        runs[step] = run.strip()
    if len(installs) != 1:
        sys.exit("demo_time: the README's demo and test lines install differently; time them by hand")
    return installs.pop(), runs


def timed(command: str, cwd: Path, log: Path) -> tuple[float, str]:
    """Run ``command`` in bash in ``cwd``; (seconds, combined output); exit with the log's tail on failure."""
    t0 = time.perf_counter()
    proc = subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    output = proc.stdout + proc.stderr
    log.write_text(output)
    if proc.returncode != 0:
        sys.exit(f"demo_time: `{command}` exited {proc.returncode} after {seconds:.0f} s; "
                 f"log {log}:\n{output[-3000:]}")
    return seconds, output


def job_count(output: str) -> str:
    done = re.findall(r"(\d+) of (\d+) steps \(100%\) done", output)
    return f"{done[-1][1]} jobs" if done else "job count not found"


def test_counts(output: str) -> str:
    summary = re.findall(r"^=*\s*(\d+ passed.*?) in [\d.]+s", output, re.M)
    return summary[-1] if summary else "test summary not found"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--source", default=str(ROOT), help="repository to clone (default: this one)")
    p.add_argument("--ref", default="HEAD", help="commit or branch to measure (default: HEAD)")
    p.add_argument("--steps", nargs="+", choices=list(MARKERS), default=list(MARKERS), help="what to time")
    p.add_argument("--dry", action="store_true", help="print the commands and run nothing")
    p.add_argument("--keep", action="store_true", help="keep the clone (its path is printed)")
    args = p.parse_args()

    install, runs = readme_commands(ROOT / "README.md")
    activate = ". .venv/bin/activate && "
    plan = [("install", install)] + [(step, activate + runs[step]) for step in args.steps]
    if args.dry:
        print(f"git clone --quiet {args.source} CLONE && git -C CLONE checkout --quiet {args.ref}")
        for step, command in plan:
            print(f"[{step}] (cd CLONE && {command})")
        return

    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="celler-demo-time-"))
    clone = work / "celler"
    subprocess.run(["git", "clone", "--quiet", args.source, str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "checkout", "--quiet", args.ref], check=True)
    commit = subprocess.run(["git", "-C", str(clone), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()
    rows = []
    for step, command in plan:
        print(f"demo_time: [{step}] {command}", flush=True)
        seconds, output = timed(command, clone, work / f"{step}.log")
        result = {"install": "", "demo": job_count(output), "tests": test_counts(output)}[step]
        rows.append(f"| {step} | `{command.removeprefix(activate)}` | {seconds / 60:.1f} min | {result} |")
    load_after = os.getloadavg()[0]
    table = "| step | command | wall time | result |\n|---|---|---|---|\n" + "\n".join(rows)
    notes = (f"Fresh clone of {args.source} at {commit}; nproc {os.cpu_count()}; 1-minute load average "
             f"{load_before:.1f} before, {load_after:.1f} after"
             + (" (above the core count: other work shared the cores)." if max(load_before, load_after)
                > (os.cpu_count() or 1) else " (at most the core count: nothing else competed for long)."))
    append_results("README commands from a fresh clone (benchmarks/demo_time.py)", table, notes)
    if args.keep:
        print(f"demo_time: clone kept in {clone}")
    else:
        subprocess.run(["rm", "-rf", str(work)], check=True)


if __name__ == "__main__":
    main()
