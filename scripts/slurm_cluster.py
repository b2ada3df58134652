#!/usr/bin/env python3
"""A one-node Slurm cluster on 127.0.0.1 for tests and trials: munged, slurmctld and slurmd, all in one folder.

    python scripts/slurm_cluster.py start DIR    # prints `export SLURM_CONF=DIR/slurm.conf`
    python scripts/slurm_cluster.py stop DIR     # cancels its jobs, stops the three daemons by PID

Needs the Debian packages slurm-wlm and munge, and root (slurmd starts jobs as their users). Everything the
daemons write lives in DIR: a generated munge key, slurm.conf with this machine's CPUs and memory, state,
spool, logs and PIDs. The ports are free ones picked at start. No cgroups (proctrack/linuxproc, task/none)
and no accounting storage (`sacct` does not work; `squeue` and `scontrol show job` do). Slurm's client
commands and submitit find the cluster through SLURM_CONF.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
PARTITION = "debug"


def missing_programs() -> list[str]:
    """The programs a cluster needs that this machine lacks (install slurm-wlm and munge)."""
    return [p for p in (*DAEMONS, "mungekey", "sbatch", "squeue", "scontrol", "scancel", "srun") if not shutil.which(p)]


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def memory_mb() -> int:
    """Memory to offer jobs: a little under MemTotal, so slurmd never finds less than slurm.conf says."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024 * 9 // 10
    raise RuntimeError("no MemTotal in /proc/meminfo")


def slurm_conf(folder: Path, node: str, ports: list[int]) -> str:
    return f"""\
# one-node test cluster written by scripts/slurm_cluster.py
ClusterName=crosssite
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
SrunPortRange={ports[2]}-{ports[2] + 20}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge/munge.socket,cred_expire=5
SlurmUser=root
SlurmdUser=root
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
PlugStackConfig={folder}/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
MpiDefault=none
ReturnToService=2
MailProg=/bin/true
KillWait=5
MinJobAge=600
DefMemPerCPU={memory_mb() // os.cpu_count()}
NodeName={node} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={memory_mb()} State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def environment(folder: Path) -> dict[str, str]:
    """os.environ with this cluster's SLURM_CONF: what Slurm's commands (and submitit) need to find it."""
    return {**os.environ, "SLURM_CONF": str(Path(folder).resolve() / "slurm.conf")}


def start(folder: Path, timeout: float = 60.0) -> dict[str, str]:
    """Start the cluster in `folder` (created) and return the environment that reaches it, once its node
    takes jobs."""
    if problems := missing_programs():
        raise RuntimeError(f"not installed: {', '.join(problems)} (apt-get install slurm-wlm munge)")
    folder = Path(folder).resolve()
    for sub in ("munge", "state", "spool"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    (folder / "munge").chmod(0o700)
    key = folder / "munge" / "munge.key"
    if not key.exists():
        subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True)
    key.chmod(0o600)
    node = socket.gethostname().split(".")[0]
    (folder / "plugstack.conf").write_text("")
    (folder / "slurm.conf").write_text(slurm_conf(folder, node, free_ports(3)))
    env = environment(folder)
    commands = {
        "munged": ["munged", "--foreground", "--force", f"--socket={folder}/munge/munge.socket",
                   f"--key-file={key}", f"--log-file={folder}/munge/munged.log",
                   f"--pid-file={folder}/munge/munged.pid", f"--seed-file={folder}/munge/munged.seed"],
        "slurmctld": ["slurmctld", "-D", "-i", "-f", env["SLURM_CONF"]],
        "slurmd": ["slurmd", "-D", "-f", env["SLURM_CONF"], "-N", node],
    }
    pids = {}
    try:
        for name in DAEMONS:
            log = open(folder / f"{name}.out", "w")
            pids[name] = subprocess.Popen(commands[name], env=env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True).pid
            (folder / "pids.json").write_text(json.dumps(pids))
            if name == "munged":
                _wait_for(lambda: (folder / "munge" / "munge.socket").exists(), timeout, "munged's socket", folder)
        _wait_for(lambda: _node_state(env) in ("idle", "mixed", "allocated"), timeout, "an idle node", folder)
    except BaseException:
        stop(folder)
        raise
    return env


def _node_state(env: dict[str, str]) -> str:
    done = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True)
    return done.stdout.strip().rstrip("*~#") if done.returncode == 0 else ""


def _wait_for(ready, timeout: float, what: str, folder: Path) -> None:
    end = time.time() + timeout
    while not ready():
        if time.time() > end:
            raise RuntimeError(f"{folder}: no {what} after {timeout:.0f} s (see the logs there)")
        time.sleep(0.5)


def stop(folder: Path) -> None:
    """Cancel the cluster's jobs, then stop its daemons by the PIDs `start` recorded."""
    folder = Path(folder).resolve()
    pids_file = folder / "pids.json"
    if not pids_file.exists():
        return
    pids = json.loads(pids_file.read_text())
    if "slurmctld" in pids:
        subprocess.run(["scancel", "--full", f"--partition={PARTITION}"], env=environment(folder), capture_output=True)
        time.sleep(1)
    for name in reversed(DAEMONS):
        if name in pids:
            _terminate(pids[name])
    pids_file.unlink()


def _terminate(pid: int, grace: float = 10.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    end = time.time() + grace
    while time.time() < end:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:  # not our child (started by another `start` process): poll its existence
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.2)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print(__doc__, file=sys.stderr)
        return 2
    action, folder = argv
    if action == "start":
        env = start(Path(folder))
        print(f"export SLURM_CONF={env['SLURM_CONF']}")
    else:
        stop(Path(folder))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
