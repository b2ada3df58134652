"""Sweep jobs on a Slurm cluster (`crosssite sweep --launcher slurm`, extra [slurm]: submitit).

submitit pickles each job's call, submits them as one Slurm job array with sbatch and, when Slurm
preempts a job or its time limit nears (SIGUSR2), asks `TrainOnNode.checkpoint` for the call to
requeue: the same job, which resumes from its last.pt as every restarted sweep job does (an epoch's
randomness follows from seed and epoch, so the resumed job ends with the weights of an uninterrupted
one; it repeats the epochs since the last write of last.pt).

Results: each job writes its results line to its own folder (`jobs/NAME/sweep_record.json`, atomically),
and only the process that runs the sweep appends them to results.jsonl: one writer, so no lock on a
shared file system is needed, and a record written while that process was gone is gathered when the
sweep is restarted. `slurm/submitted.json` keeps each job's Slurm id: a restart waits for jobs still
queued or running instead of submitting them twice. The sweep learns that a job ended from its record
file, and that a job vanished without one (cancelled, out of memory) from `squeue`, which works without
Slurm's accounting storage (`sacct`); submitit's logs are in `slurm/ID/`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import CrossSiteError, require_extra
from .io import atomic_write_json

if TYPE_CHECKING:
    from .sweep import Job

RECORD = "sweep_record.json"  # in a job's folder: its results line, written on the node
SUBMITTED = "submitted.json"  # in the sweep's slurm/ folder: job name -> Slurm job id
#: polls in a row a job must be missing from squeue to count as gone (a requeued job leaves it briefly)
MISSING_POLLS = 2


def slurm_option(text: str) -> tuple[str, str | bool]:
    """--slurm-option KEY=VALUE (or a bare KEY, a flag) -> an extra `#SBATCH --KEY=VALUE` line."""
    key, equals, value = text.partition("=")
    if not key.strip() or key.startswith("-"):
        raise ValueError(f"expected KEY=VALUE (an sbatch option without its dashes), got {text!r}")
    return key.strip(), value if equals else True


@dataclass(frozen=True)
class SlurmLauncher:
    """Where and how each job runs on the cluster (sbatch's options): execution settings, not compared
    when a sweep is restarted. The `help` of each field is its --slurm-* flag's (crosssite.cli)."""

    partition: str | None = field(default=None, metadata={"help": "partition (default: the cluster's)"})
    time: int = field(default=240, metadata={
        "help": "time limit per job in minutes (default 240); a job that reaches it is requeued and resumes "
                "from its last.pt, up to 3 times"})
    gpus: int = field(default=0, metadata={"help": "GPUs per job (default 0)"})
    cpus: int | None = field(default=None, metadata={
        "help": "CPU cores per job (default: the cluster's); the job's PyTorch uses this many threads"})
    mem: str | None = field(default=None, metadata={"help": "memory per job, e.g. 32G (default: the cluster's)"})
    account: str | None = field(default=None, metadata={"help": "account to charge"})
    qos: str | None = field(default=None, metadata={"help": "quality of service"})
    options: dict = field(default_factory=dict, metadata={
        "help": "any other sbatch option, e.g. constraint=a100 or exclusive (repeatable)",
        "flag": "--slurm-option", "metavar": "KEY=VALUE", "parse": slurm_option, "action": "append"})
    array_parallelism: int = field(default=256, metadata={
        "help": "jobs of the sweep's job array running at once, at most (default 256)"})
    poll_seconds: float = 5.0  # how often the sweep looks for ended jobs (tests poll faster)

    def check(self) -> None:
        require_extra("submitit", "--launcher slurm", "slurm")
        if missing := [p for p in ("sbatch", "squeue", "srun") if not shutil.which(p)]:
            raise CrossSiteError(f"--launcher slurm: {', '.join(missing)} not found; run the sweep on a machine "
                                 "that submits to Slurm (or set SLURM_CONF)")
        least = {"time": 1, "cpus": 1, "array_parallelism": 1, "gpus": 0}
        small = [f"--slurm-{k.replace('_', '-')} {v}" for k, v in ((k, getattr(self, k)) for k in least)
                 if v is not None and v < least[k]]
        if small:
            raise CrossSiteError(f"{', '.join(small)}: too small (time, cpus and array parallelism at least 1, gpus "
                                 "at least 0)")

    def parameters(self, name: str) -> dict:
        """submitit.SlurmExecutor's parameters for the sweep's job array."""
        given = {"partition": self.partition, "cpus_per_task": self.cpus, "mem": self.mem, "account": self.account,
                 "qos": self.qos, "gpus_per_node": self.gpus or None}
        return {"job_name": name, "time": self.time, "array_parallelism": self.array_parallelism,
                "additional_parameters": dict(self.options), **{k: v for k, v in given.items() if v is not None}}

    def run(self, todo: list[Job], out: Path) -> Iterator[tuple[Job, dict]]:
        """Submit the jobs not queued yet and yield (job, record) as they end; records written while no
        sweep was watching come first."""
        import submitit

        from .sweep import read_results

        folder = out / "slurm"
        submitted = _read_submitted(folder / SUBMITTED)
        queued = _queued()
        if queued is None:
            raise CrossSiteError("--launcher slurm: squeue failed; is the Slurm controller reachable?")
        written = read_results(out / "results.jsonl")
        waiting, to_submit = {}, []
        for job in todo:
            if submitted.get(job.name) in queued:  # submitted by an earlier run of this sweep, not ended yet
                waiting[job.name] = job
                continue
            record = read_record(job.folder)
            if record is not None and record not in written:
                yield job, record  # ended while no sweep was watching
                if record["status"] == "ok":
                    continue
            to_submit.append(job)
        if to_submit:
            for job in to_submit:
                (job.folder / RECORD).unlink(missing_ok=True)
            executor = submitit.SlurmExecutor(folder=folder / "%j")
            executor.update_parameters(**self.parameters(f"crosssite-{out.resolve().name}"))
            array = executor.map_array(TrainOnNode(), to_submit)
            submitted.update({job.name: slurm_job.job_id for job, slurm_job in zip(to_submit, array)})
            atomic_write_json(folder / SUBMITTED, submitted)
            waiting.update({job.name: job for job in to_submit})
        yield from self._wait(waiting, submitted, folder)

    def _wait(self, waiting: dict[str, Job], submitted: dict[str, str], folder: Path) -> Iterator[tuple[Job, dict]]:
        """(job, record) as each waiting job writes its record, or leaves the queue without one."""
        from .sweep import job_record

        missing = {name: 0 for name in waiting}
        while waiting:
            queued = _queued()  # before reading the records: a job that left the queue had written its record
            for name, job in list(waiting.items()):
                record = read_record(job.folder)
                if record is None and queued is not None and submitted[name] not in queued:
                    missing[name] += 1
                    if missing[name] < MISSING_POLLS:
                        continue
                    record = {**job_record(job, "auto"), "slurm_job": submitted[name], "status": "failed", "error":
                              f"Slurm job {submitted[name]} ended without a result (cancelled, out of memory or "
                              f"time?); its log: {folder / submitted[name]}"}
                elif record is None:
                    missing[name] = 0
                    continue
                del waiting[name]
                yield job, record
            if waiting:
                time.sleep(self.poll_seconds)


class TrainOnNode:
    """The call submitit runs on a node: train the job (resuming from its folder) and write its record.
    `checkpoint` is submitit's requeue hook on preemption or time-out."""

    def __call__(self, job: Job) -> dict:
        import submitit
        import torch

        from .sweep import run_job

        if cpus := os.environ.get("SLURM_CPUS_PER_TASK"):
            torch.set_num_threads(int(cpus))  # without cgroups PyTorch would take every core of the node
        environment = submitit.JobEnvironment()
        record = {**run_job(job, "auto"), "slurm_job": environment.job_id, "host": environment.hostname}
        atomic_write_json(job.folder / RECORD, record)
        return record

    def checkpoint(self, job: Job):
        import submitit

        return submitit.helpers.DelayedSubmission(TrainOnNode(), job)  # resumes from the job's last.pt


def read_record(folder: Path) -> dict | None:
    """A job's record written on its node, or None if it has not ended (a damaged file counts as none:
    atomic writes leave none half-written, so it was not written by a job)."""
    try:
        return json.loads((folder / RECORD).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _read_submitted(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    try:
        submitted = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        submitted = None
    if not isinstance(submitted, dict) or not all(isinstance(v, str) for v in submitted.values()):
        raise CrossSiteError(f"{path}: damaged (not a JSON map of job name to Slurm job id); "
                             "delete it once no job of this sweep is queued")
    return submitted


def _queued() -> set[str] | None:
    """Ids of this user's jobs Slurm has not finished (each array task as ID_TASK), or None if squeue failed."""
    done = subprocess.run(["squeue", "--noheader", "--array", "--me", "--format=%i"], capture_output=True, text=True)
    return set(done.stdout.split()) if done.returncode == 0 else None
