"""The workflow on a real SLURM scheduler, submitted with `snakemake --profile slurm` (marker: slurm).

The test configures nothing: it uses the SLURM cluster that answers on this host (``sinfo`` shows an idle node).
``.ci/run`` installs Debian's ``slurm-wlm`` and ``munge`` and starts a throwaway single-node cluster with
``.ci/slurm_cluster.py start DIR``; on a developer machine run that (as root) first, or the test skips. It runs
the test config's preprocessing plus one fine-tuning (with its pretraining) twice: through the repository's
slurm profile, typed as a user would from the repository root, and locally; it checks that every job was a
SLURM job and that the outputs are the same.

Skipped where no cluster answers, and a failure under CI=true. About 3 minutes on 2 cores.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import TIMEOUT, skip_or_fail

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / ".test/config.yaml"
DATASETS = ("pancreas", "pbmc68k")
TARGETS = [f"results/{d}/tokens" for d in DATASETS] + ["results/pbmc68k/celler/metrics.tsv"]

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kw, timeout=TIMEOUT)


class Cluster:
    """The SLURM cluster this host's commands reach (``SLURM_CONF`` unset: the plugin's job step clears it)."""

    def __init__(self):
        self.env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}

    def logs(self) -> str:
        return _run(["sinfo", "-N", "-l"], env=self.env).stdout + _run(["squeue", "-a"], env=self.env).stdout


@pytest.fixture(scope="module")
def cluster():
    if shutil.which("snakemake") is None:
        skip_or_fail("snakemake not installed")
    if shutil.which("sinfo") is None:
        skip_or_fail("SLURM not installed (apt-get install slurm-wlm munge; then .ci/slurm_cluster.py start DIR)")
    c = Cluster()
    states = _run(["sinfo", "-h", "-o", "%T"], env=c.env)
    if states.returncode != 0 or "idle" not in states.stdout.split():
        skip_or_fail("no SLURM cluster with an idle node answers (as root: python3 .ci/slurm_cluster.py start DIR)")
    return c


# --- the runs -----------------------------------------------------------------------------------------------


def _workdir(path: Path) -> Path:
    (path / "resources").symlink_to(REPO / "resources")
    return path


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory):
    """(local workdir, slurm workdir, slurm run's log): the same targets, run locally and through SLURM."""
    local = _workdir(tmp_path_factory.mktemp("local"))
    remote = _workdir(tmp_path_factory.mktemp("remote"))
    # `snakemake --profile slurm` as a user types it in the repository root (the profile is ./slurm); the
    # test's only additions: its config, a scratch directory, fast status polling (squeue: there is no
    # accounting database here, so sacct cannot answer) and keeping the SLURM logs of successful jobs.
    cmd = [
        "snakemake",
        "--profile",
        "slurm",
        "--configfile",
        str(CONFIG),
        "-d",
        str(remote),
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "1",
        "--slurm-keep-successful-logs",
        *TARGETS,
    ]
    t0 = time.monotonic()
    log_path = remote.parent / f"{remote.name}.log"
    with log_path.open("w") as log:
        slurm = subprocess.Popen(cmd, cwd=REPO, env=cluster.env, stdout=log, stderr=subprocess.STDOUT)
        try:
            # the local reference run meanwhile (the SLURM run mostly waits on the scheduler)
            snakefile = str(REPO / "Snakefile")
            proc = _run(
                [
                    "snakemake",
                    "-s",
                    snakefile,
                    "-d",
                    str(local),
                    "--configfile",
                    str(CONFIG),
                    "-c2",
                    *TARGETS,
                ],
                cwd=local,
            )
            assert proc.returncode == 0, proc.stderr[-3000:]
            slurm.wait(timeout=600)
        finally:
            if slurm.poll() is None:  # failed or timed out: stop it (it cancels its SLURM jobs)
                slurm.terminate()
                slurm.wait(timeout=60)
    out = log_path.read_text()
    print(f"SLURM run: {time.monotonic() - t0:.0f} s")
    assert slurm.returncode == 0, out[-4000:] + "\n" + cluster.logs()
    return local, remote, out


def test_profile_is_found_from_the_repo_root(runs):
    _, _, log = runs
    assert re.search(r"Using profiles? slurm\b", log), log[:2000]


def test_every_job_was_submitted_with_sbatch(runs, cluster):
    _, remote, log = runs
    submitted = dict(re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", log))
    total = re.search(r"^total\s+(\d+)", log, re.MULTILINE)
    assert total, log[-3000:]
    # qc, map_genes, tokenize for 2 datasets + pretrain + pretrain_tissue (the test config continues pretraining
    # per tissue) + finetune: every one a SLURM job, none run locally
    assert len(submitted) == int(total.group(1)) == 9, log[-3000:]
    jobs = {}
    for slurm_id in submitted.values():
        info = _run(["scontrol", "show", "job", slurm_id], env=cluster.env).stdout
        assert "JobState=COMPLETED" in info, info
        assert list((remote / ".snakemake/slurm_logs").rglob(f"{slurm_id}.log")), slurm_id
        jobs[re.search(r"Comment=rule_(\w+?)(_wildcards_\S*)?\s", info).group(1)] = info
    assert set(jobs) == {"qc", "map_genes", "tokenize", "pretrain", "pretrain_tissue", "finetune"}
    # per-rule resources from the rules, the default time limit from the profile
    assert "TimeLimit=1-00:00:00" in jobs["pretrain"]
    assert "MinMemoryNode=16000M" in jobs["pretrain"]
    assert "NumNodes=1" in jobs["pretrain"]
    assert "TimeLimit=02:00:00" in jobs["qc"]
    assert all("gres/gpu" not in info for info in jobs.values())  # gpus: 0 in the test config


def _gunzip(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes())


def test_outputs_equal_a_local_run(runs):
    local, remote, _ = runs
    for d in DATASETS:
        for rel in ("qc/cells.tsv.gz", "qc/genes.tsv.gz", "vocab/mapping.tsv.gz", "tokens/cells.tsv.gz"):
            assert _gunzip(local / f"results/{d}/{rel}") == _gunzip(remote / f"results/{d}/{rel}"), (d, rel)
        for rel in (
            "qc/summary.tsv",
            "vocab/report.tsv",
            "vocab/vocab.json",
            "tokens/genes.bin",
            "tokens/bins.bin",
            "tokens/offsets.bin",
            "tokens/bin_edges.json",
            "tokens/meta.json",
            "tokens/vocab.json",
        ):
            assert (local / f"results/{d}/{rel}").read_bytes() == (
                remote / f"results/{d}/{rel}"
            ).read_bytes(), (d, rel)
    # seeded CPU training: the fine-tuned model's predictions and scores are the same
    for rel in ("celler/predictions.tsv", "celler/metrics.tsv"):
        a, b = (local / f"results/pbmc68k/{rel}").read_text(), (remote / f"results/pbmc68k/{rel}").read_text()
        assert a == b, rel
