"""The workflow on a real SLURM scheduler, submitted with `snakemake --profile slurm` (marker: slurm).

The fixture uses Debian's ``slurm-wlm`` and ``munge`` as installed (``.ci/run`` installs them), writes a single-node
``/etc/slurm/slurm.conf`` for this host (state, spool and logs in a temporary directory; the file is removed
afterwards, and an existing one that this test did not write makes it skip), starts ``munged`` (unless one
already answers), ``slurmctld`` and ``slurmd``, and stops what it started afterwards. The configuration has to
be at the default path: the plugin's job step clears ``SLURM_*`` variables (``SLURM_CONF`` too) before its
``srun``. The test then runs the test config's preprocessing plus one fine-tuning
(with its pretraining) twice: through the repository's slurm profile, typed as a user would from the
repository root, and locally; it checks that every job was a SLURM job and that the outputs are the same.

Needs root (daemons) and the packages; skipped otherwise, and a failure under CI=true. About 3 minutes on 2
cores.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import TIMEOUT, skip_or_fail

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / ".test/config.yaml"
DATASETS = ("pancreas", "pbmc68k")
SLURM_CONF = Path("/etc/slurm/slurm.conf")
MARKER = "# Single-node test cluster written by Celler's tests/test_slurm.py (removed when the test ends)"
TARGETS = [f"results/{d}/tokens" for d in DATASETS] + ["results/pbmc68k/celler/metrics.tsv"]

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


# --- a throwaway single-node cluster ------------------------------------------------------------------------


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kw, timeout=TIMEOUT)


def _ensure_packages() -> None:
    """Skip when slurm-wlm / munge or root are missing (a failure under CI=true, where .ci/run installs them);
    the test installs nothing itself."""
    if shutil.which("snakemake") is None:
        skip_or_fail("snakemake not installed")
    if os.geteuid() != 0:
        skip_or_fail("needs root to start the SLURM and munge daemons")
    missing = [b for b in ("slurmctld", "slurmd", "munged", "sbatch", "squeue") if shutil.which(b) is None]
    if missing:
        skip_or_fail(f"SLURM / munge not installed ({', '.join(missing)}; apt-get install slurm-wlm munge)")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Cluster:
    """munged (if none answers), slurmctld and slurmd in the foreground, configured under ``root``."""

    def __init__(self, root: Path):
        self.root = root
        self.conf = SLURM_CONF
        self.env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def write_conf(self) -> None:
        host = socket.gethostname().split(".")[0]
        # this node's real CPU / memory layout, as slurmd detects it (first line of `slurmd -C`)
        node = _run(["slurmd", "-C"]).stdout.splitlines()[0].strip()
        node = re.sub(r"^NodeName=\S+", f"NodeName={host}", node)
        ctld_port, d_port = _free_ports(2)
        for d in ("state", "spool"):
            (self.root / d).mkdir(exist_ok=True)
        self.conf.parent.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            "\n".join(
                [
                    MARKER,
                    "ClusterName=cellertest",
                    f"SlurmctldHost={host}",
                    f"SlurmctldPort={ctld_port}",
                    f"SlurmdPort={d_port}",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "ProctrackType=proctrack/linuxproc",  # no cgroups in a container
                    "TaskPlugin=task/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core_Memory",
                    "SchedulerType=sched/backfill",
                    "AccountingStorageType=accounting_storage/none",  # no slurmdbd: squeue, not sacct
                    "JobAcctGatherType=jobacct_gather/none",
                    "JobCompType=jobcomp/none",
                    "MpiDefault=none",
                    "ReturnToService=2",
                    "MinJobAge=900",  # finished jobs stay visible to scontrol for the checks below
                    f"StateSaveLocation={self.root / 'state'}",
                    f"SlurmdSpoolDir={self.root / 'spool'}",
                    f"SlurmctldPidFile={self.root / 'slurmctld.pid'}",
                    f"SlurmdPidFile={self.root / 'slurmd.pid'}",
                    f"SlurmctldLogFile={self.root / 'slurmctld.log'}",
                    f"SlurmdLogFile={self.root / 'slurmd.log'}",
                    f"{node} State=UNKNOWN",
                    f"PartitionName=celler Nodes={host} Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )

    def _start(self, name: str, cmd: list[str]) -> None:
        log = (self.root / f"{name}.out").open("w")
        self.procs.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env)))

    def start(self) -> None:
        self.write_conf()
        if _run(["munge", "-n"]).returncode != 0:  # no munged answering: start one as user munge
            run_dir = Path("/run/munge")
            run_dir.mkdir(parents=True, exist_ok=True)
            shutil.chown(run_dir, "munge", "munge")
            self._start(
                "munged",
                ["setpriv", "--reuid=munge", "--regid=munge", "--init-groups", "munged", "--foreground"],
            )
            self._wait("munged", lambda: _run(["munge", "-n"]).returncode == 0, 20)
        self._start("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        self._wait("slurmctld", lambda: _run(["scontrol", "ping"], env=self.env).stdout.count("UP") > 0, 30)
        self._start("slurmd", ["slurmd", "-D", "-f", str(self.conf)])
        self._wait(
            "slurmd", lambda: _run(["sinfo", "-h", "-o", "%T"], env=self.env).stdout.strip() == "idle", 60
        )

    def _wait(self, name: str, ready, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if ready():
                return
            for n, p in self.procs:
                if p.poll() is not None:
                    pytest.fail(f"{n} exited with {p.returncode}:\n{self.logs()}")
            time.sleep(0.5)
        pytest.fail(f"{name} not ready after {timeout} s:\n{self.logs()}")

    def logs(self) -> str:
        out = []
        for f in sorted(self.root.glob("*.out")) + sorted(self.root.glob("*.log")):
            out.append(f"--- {f.name}\n{f.read_text(errors='replace')[-2000:]}")
        return "\n".join(out)

    def stop(self) -> None:
        for _, p in reversed(self.procs):  # slurmd, slurmctld, then munged: only what this fixture started
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs.clear()
        if self.conf.exists() and self.conf.read_text().startswith(MARKER):
            self.conf.unlink()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    _ensure_packages()
    if SLURM_CONF.exists() and not SLURM_CONF.read_text().startswith(MARKER):
        skip_or_fail(f"{SLURM_CONF} exists (a configured SLURM?); this test only runs where it may write its own")
    c = Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


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
