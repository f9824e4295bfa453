#!/usr/bin/env python3
"""Start a throwaway single-node SLURM cluster on this host for tests/test_slurm.py (CI sets it up, the test
only uses it).

    python3 .ci/slurm_cluster.py start DIR    # writes /etc/slurm/slurm.conf, starts munged, slurmctld, slurmd
    python3 .ci/slurm_cluster.py stop DIR     # stops what `start` started and removes the file it wrote

Uses Debian's ``slurm-wlm`` and ``munge`` as installed (``.ci/run`` installs them); needs root. State, spool,
pid and log files go under DIR. The configuration has to be at the default path: the Snakemake SLURM plugin's
job step clears ``SLURM_*`` variables (``SLURM_CONF`` too) before its ``srun``. An existing
``/etc/slurm/slurm.conf`` that this script did not write is left alone (exit 1). Standard library only: it runs
before the project's virtual environment exists.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

SLURM_CONF = Path("/etc/slurm/slurm.conf")
MARKER = "# Single-node test cluster written by Celler's .ci/slurm_cluster.py"
DAEMONS = ("munged", "slurmctld", "slurmd")


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def write_conf(root: Path) -> None:
    host = socket.gethostname().split(".")[0]
    # this node's real CPU / memory layout, as slurmd detects it (first line of `slurmd -C`)
    node = re.sub(r"^NodeName=\S+", f"NodeName={host}", run(["slurmd", "-C"]).stdout.splitlines()[0].strip())
    ctld_port, d_port = free_ports(2)
    for d in ("state", "spool"):
        (root / d).mkdir(parents=True, exist_ok=True)
    SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
    SLURM_CONF.write_text("\n".join([
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
        "MinJobAge=900",  # finished jobs stay visible to scontrol for the test's checks
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'slurmd.log'}",
        f"{node} State=UNKNOWN",
        f"PartitionName=celler Nodes={host} Default=YES MaxTime=INFINITE State=UP",
        "",
    ]))


def launch(root: Path, name: str, cmd: list[str]) -> None:
    """Start a daemon in the foreground of its own session (it outlives this script); its pid in DIR."""
    log = (root / f"{name}.out").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={k: v for k, v in os.environ.items() if k != "SLURM_CONF"})
    (root / f"{name}.started").write_text(str(proc.pid))


def wait(root: Path, name: str, ready, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if ready():
            return
        time.sleep(0.5)
    logs = "\n".join(f"--- {f.name}\n{f.read_text(errors='replace')[-2000:]}"
                     for f in sorted(root.glob("*.out")) + sorted(root.glob("*.log")))
    sys.exit(f"slurm_cluster: {name} not ready after {timeout} s\n{logs}")


def start(root: Path) -> None:
    missing = [b for b in ("slurmctld", "slurmd", "munged", "sbatch", "squeue") if shutil.which(b) is None]
    if missing or os.geteuid() != 0:
        sys.exit(f"slurm_cluster: needs root and slurm-wlm + munge (missing: {', '.join(missing) or 'root'})")
    if SLURM_CONF.exists() and not SLURM_CONF.read_text().startswith(MARKER):
        sys.exit(f"slurm_cluster: {SLURM_CONF} exists and was not written here; leaving that cluster alone")
    stop(root)  # a cluster this script started before in DIR: stop it first
    root.mkdir(parents=True, exist_ok=True)
    write_conf(root)
    if run(["munge", "-n"]).returncode != 0:  # no munged answering: start one as user munge
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        launch(root, "munged", ["setpriv", "--reuid=munge", "--regid=munge", "--init-groups", "munged",
                                "--foreground"])
        wait(root, "munged", lambda: run(["munge", "-n"]).returncode == 0, 20)
    launch(root, "slurmctld", ["slurmctld", "-D", "-f", str(SLURM_CONF)])
    wait(root, "slurmctld", lambda: "UP" in run(["scontrol", "ping"]).stdout, 30)
    launch(root, "slurmd", ["slurmd", "-D", "-f", str(SLURM_CONF)])
    wait(root, "slurmd", lambda: run(["sinfo", "-h", "-o", "%T"]).stdout.strip() == "idle", 60)
    print(f"slurm_cluster: single-node cluster up ({SLURM_CONF}, files in {root})")


def stop(root: Path) -> None:
    for name in reversed(DAEMONS):  # slurmd, slurmctld, then munged: only what `start` started
        pid_file = root / f"{name}.started"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGTERM)
            except ProcessLookupError:
                pass
            pid_file.unlink()
    if SLURM_CONF.exists() and SLURM_CONF.read_text().startswith(MARKER):
        SLURM_CONF.unlink()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("start", "stop"):
        sys.exit(__doc__)
    {"start": start, "stop": stop}[sys.argv[1]](Path(sys.argv[2]).resolve())
