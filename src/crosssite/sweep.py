"""Cross-validated sweeps: every (Table I row, fold, seed) job, resumable, one line per job.

Sweep folder (`out`):
  sweep.yaml      the sweep's settings (rows, folds, seeds, rows run at fewer seeds, base config); a restart
                  must match them or only add seeds or rows. Also the command and code commit that started
                  it and each that extended it (not compared).
  results.jsonl   one JSON line per job that ended: settings, status ("ok" or "failed"), error,
                  wall time, code commit and per-site test metrics; `crosssite report` reads it
  jobs/NAME/      one folder per job, NAME = ROW-foldF-seedS: a `crosssite train` run folder, or for a
                  federated row a federation's folder (crosssite.federated.job)
  slurm/          --launcher slurm only: Slurm job ids and submitit's scripts and logs (crosssite.slurm)

A restarted sweep skips finished jobs (metrics.json written and an "ok" line in results.jsonl),
resumes an interrupted one from its last.pt and runs failed ones again. A finished job keeps
best.pt (the tested weights) and drops last.pt, its resume state, which is three times larger.

Jobs are planned by `plan` and run by `run_job`, which depends on nothing but its Job and device, on a
launcher (crosssite.launchers.LAUNCHERS): `local` runs them one by one, or with `jobs=N` in N worker processes that share
the CPU cores, `devices` giving each worker its own device (worker i gets devices[i % len(devices)], e.g.
one GPU each); `slurm` submits them to a Slurm cluster (crosssite.slurm). Each job has its own folder,
and only the process that runs `run_sweep` appends to results.jsonl, whatever the launcher. How jobs
execute is not a sweep setting: a restart may change the launcher and its options.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import yaml
from tqdm import tqdm

from . import run_folder
from .config import EXECUTION_SETTINGS, TrainConfig
from .errors import CrossSiteError, print_warning
from .io import append_jsonl, atomic_write_text, read_jsonl, read_yaml
from .paper import ROW_GROUPS, Row, planned_names, select_rows


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def parse_row_seeds(items: list[str] | None, rows: list[Row], seeds: int) -> dict[str, int]:
    """`ROW=N` items (a ROW may be a group or a comma list) -> {row: N} for rows run at fewer seeds."""
    row_seeds = {}
    for item in items or []:
        names, _, number = item.partition("=")
        if not number.strip().isdigit() or not 1 <= int(number) <= seeds:
            raise CrossSiteError(f"--row-seeds {item!r}: expected ROW=N with N in 1..{seeds} (the sweep's --seeds)")
        for name in names.replace(",", " ").split():
            chosen = [r for r in select_rows([name]) if name not in ROW_GROUPS or r in rows]  # a group: its rows here
            if any(r not in rows for r in chosen):
                raise CrossSiteError(f"--row-seeds {item!r}: row {name} is not in this sweep's --rows")
            row_seeds.update({r.name: int(number) for r in chosen})
    return {name: n for name, n in row_seeds.items() if n < seeds}


@dataclass(frozen=True)
class Job:
    row: Row
    fold: int
    seed: int
    config: TrainConfig  # complete: method, backbone, fold, seed and out filled in

    @property
    def name(self) -> str:
        return job_name(self.row.name, self.fold, self.seed)

    @property
    def folder(self) -> Path:
        return Path(self.config.out)


def job_name(row: str, fold: int, seed: int) -> str:
    return f"{row}-fold{fold}-seed{seed}"


def plan(base: TrainConfig, rows: list[Row], seeds: int, out: Path, row_seeds: dict[str, int] | None = None) -> list[Job]:
    """Every job with its complete config (the row's own settings over the sweep's)."""
    jobs = []
    for row, fold, seed in planned_names(rows, base.folds, seeds, row_seeds or {}):
        name = job_name(row.name, fold, seed)
        config = base.replace(**dict(row.settings)).replace(
            method=row.method, backbone=row.backbone, fold=fold, seed=seed, out=str(out / "jobs" / name)
        )
        jobs.append(Job(row, fold, seed, config))
    return jobs


def code_commit() -> str:
    """The git commit of the crosssite code that runs (with '+changes' if the checkout differs from it),
    or 'unknown' outside a git checkout."""
    here = Path(__file__).parent

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        return commit + ("+changes" if git("status", "--porcelain", "--untracked-files=no", "--", ".") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def finished(job: Job, records: list[dict]) -> bool:
    return (job.folder / run_folder.METRICS).exists() and any(
        r["job"] == job.name and r["status"] == "ok" for r in records
    )


def job_record(job: Job, device: str) -> dict:
    """What every results.jsonl line of `job` holds before its outcome."""
    return {
        "job": job.name,
        "row": job.row.name,
        "method": job.row.method,
        "trainer": job.row.trainer,
        "backbone": job.row.backbone,
        "fold": job.fold,
        "seed": job.seed,
        "folder": str(Path("jobs") / job.name),
        "device": device,
        "commit": code_commit(),
    }


def train_job(job: Job, device: str) -> dict:
    """A centralised job: `crosssite train`, resuming whatever the job folder holds (a cut run, with or
    without last.pt yet, or a finished one whose results line was lost: train then returns its metrics.json)."""
    from .train import train

    return train(job.config, resume=(job.folder / run_folder.CONFIG).exists(), progress=False, device=device)


def federated_job(job: Job, device: str) -> dict:
    from .federated.job import run_federated_job

    return run_federated_job(job.config, device, job.row.rounds_per_epoch)


#: how a row's job trains (Row.trainer): job and device -> the job's metrics.json
TRAINERS = {"train": train_job, "federate": federated_job}
#: what a results.jsonl line copies from a job's metrics.json (`communication`: federated jobs only)
RECORDED = ("best_epoch", "sites", "tail_auc", "communication")


def run_job(job: Job, device: str | None = None) -> dict:
    """Run one job in-process (resuming it) on `device` (default: this worker's), as its row's trainer
    says, and return its results.jsonl record."""
    device = device or _worker_device
    record = job_record(job, device)
    started = time.time()
    try:
        metrics = TRAINERS[job.row.trainer](job, device)
    except Exception as e:  # a failed job is recorded and the sweep goes on; Ctrl-C still stops it
        return {**record, "status": "failed", "error": f"{type(e).__name__}: {e}", "seconds": round(time.time() - started, 2)}
    return {**record, "status": "ok", "seconds": round(time.time() - started, 2),
            **{k: metrics[k] for k in RECORDED if k in metrics}}


def sweep_settings(base: TrainConfig, rows: list[Row], seeds: int, row_seeds: dict[str, int] | None = None) -> dict:
    """What sweep.yaml records and a restart must repeat: not the per-job settings, and not how jobs
    execute (CUDA graphs, how often last.pt is written), which leaves results unchanged."""
    skipped = ("method", "backbone", "fold", "seed", "out", *EXECUTION_SETTINGS)
    return {
        "rows": [r.name for r in rows],
        "folds": base.folds,
        "seeds": seeds,
        "row_seeds": dict(row_seeds or {}),
        "config": {k: v for k, v in base.to_dict().items() if k not in skipped},
    }


def _as_written_today(saved: dict, keys) -> dict:
    """A saved sweep.yaml's settings in today's terms (config `keys`): a setting added to crosssite after
    the sweep started ran at what is now its default; execution settings are not compared."""
    defaults = TrainConfig().to_dict()
    config = {k: v for k, v in saved.get("config", {}).items() if k not in EXECUTION_SETTINGS}
    added = {k: defaults[k] for k in keys if k not in config}
    return {**saved, "row_seeds": saved.get("row_seeds", {}), "config": {**added, **config}}


#: sweep.yaml's record of how the sweep was started, and of each restart that added jobs: never compared
PROVENANCE = "started_by"
EXTENSIONS = "extended_by"


def seeds_per_row(settings: dict) -> dict[str, int]:
    """How many seeds each row of a sweep.yaml's settings runs at."""
    return {row: settings["row_seeds"].get(row, settings["seeds"]) for row in settings["rows"]}


def _extends(saved: dict, settings: dict) -> bool:
    """Whether `settings` plan every job of `saved` and more, with the same per-job settings: a finished
    sweep can gain seeds or rows without training anything it holds again."""
    before, after = seeds_per_row(saved), seeds_per_row(settings)
    return (saved["config"] == settings["config"] and saved["folds"] == settings["folds"]
            and all(after.get(row, 0) >= n for row, n in before.items()))


def check_settings(out: Path, settings: dict, command: str | None = None) -> None:
    """Write sweep.yaml, or check that a restarted sweep uses the settings it was started with. A restart
    that only adds seeds or rows extends the sweep: sweep.yaml then records the larger plan and the
    command that extended it."""
    path = out / "sweep.yaml"

    def provenance() -> dict:  # only when sweep.yaml is written: code_commit runs git
        return {"command": command or "(not recorded: started from Python)", "commit": code_commit()}

    if not path.exists():
        atomic_write_text(path, yaml.safe_dump({**settings, PROVENANCE: provenance()}, sort_keys=False))
        return
    written = read_sweep_settings(path)
    saved = _as_written_today(written, settings["config"])
    history = {k: written[k] for k in (PROVENANCE, EXTENSIONS) if k in written}
    for key in history:
        saved.pop(key)
    if saved == settings:
        return
    if _extends(saved, settings):
        history[EXTENSIONS] = [*history.get(EXTENSIONS, []), provenance()]
        atomic_write_text(path, yaml.safe_dump({**settings, **history}, sort_keys=False))
        return
    changed = [k for k in settings if k != "config" and saved.get(k) != settings[k]]
    changed += [f"config.{k}" for k, v in settings["config"].items() if saved.get("config", {}).get(k) != v]
    raise CrossSiteError(
        f"{path}: this sweep was started with other settings ({', '.join(changed)}); "
        "use the same flags (or add seeds or rows), or another --out"
    )


def read_sweep_settings(path: Path) -> dict:
    """A sweep.yaml as `check_settings` writes it; anything else is one clear error."""
    saved = read_yaml(path, "sweep.yaml")
    kinds = {"rows": list, "folds": int, "seeds": int, "config": dict}
    bad = [k for k, kind in kinds.items() if not isinstance(saved, dict) or not isinstance(saved.get(k), kind)]
    if not bad:  # keys absent from older sweep.yaml files, checked where present
        extensions = saved.get(EXTENSIONS, [])
        if not isinstance(saved.get("row_seeds", {}), dict):
            bad.append("row_seeds")
        if not isinstance(extensions, list) or not all(isinstance(e, dict) for e in extensions):
            bad.append(EXTENSIONS)
    if bad or not all(isinstance(r, str) for r in saved["rows"]):
        raise CrossSiteError(f"{path}: not a crosssite sweep.yaml (no valid {', '.join(bad) or 'rows'})")
    return saved


#: what every results.jsonl record holds (a failed job also "error", a finished one "sites")
RECORD_KEYS = {"job": str, "row": str, "fold": int, "seed": int, "folder": str, "status": str}


def read_results(path: Path) -> list[dict]:
    """The records of results.jsonl, each checked (a torn last line is dropped: see io.read_jsonl)."""
    records = read_jsonl(path)
    for number, r in enumerate(records, 1):
        bad = [k for k, kind in RECORD_KEYS.items() if not isinstance(r.get(k), kind)]
        if r.get("status") == "ok" and not (
            isinstance(r.get("sites"), dict) and all(isinstance(m, dict) for m in r["sites"].values())
        ):
            bad.append("sites")
        if bad:
            raise CrossSiteError(f"{path}: record {number} is not a sweep result (no valid {', '.join(bad)})")
    return records


#: the device of this worker process's jobs (set once per worker by `_init_worker`)
_worker_device = "auto"


def _init_worker(threads: int, devices) -> None:
    """A worker's share of the cores and its device; its warnings print as one line, as the CLI's do; on
    Linux it dies with the sweep (a restart never races it)."""
    import torch

    warnings.showwarning = print_warning  # a spawned process starts with Python's two-line format
    global _worker_device
    _worker_device = devices.get()  # each worker takes one entry of the queue
    torch.set_num_threads(threads)
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _run_all(todo: list[Job], workers: int, devices: list[str]) -> Iterator[tuple[Job, dict]]:
    """(job, record) as jobs end: in this process, or in `workers` processes splitting the cores,
    worker i on devices[i % len(devices)]."""
    if workers == 1:
        yield from ((job, run_job(job, devices[0])) for job in todo)
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = get_context("spawn")
    queue = context.Queue()
    for i in range(workers):
        queue.put(devices[i % len(devices)])
    with ProcessPoolExecutor(workers, context, initializer=_init_worker, initargs=(threads, queue)) as pool:
        futures = {pool.submit(run_job, job): job for job in todo}
        try:
            for future in as_completed(futures):
                yield futures[future], future.result()
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise


@dataclass(frozen=True)
class LocalLauncher:
    """Jobs on this machine: `jobs` at a time (default one per device) in worker processes, `devices` one
    per worker, cycled (default: "auto" for every worker)."""

    jobs: int | None = None
    devices: list[str] | None = None

    def check(self) -> None:
        from .distributed import device

        for name in self.devices or []:
            device(name)  # an unknown device, or CUDA where there is none: one clear error before any job starts
        if self.jobs is not None and self.jobs < 1:
            raise CrossSiteError(f"--jobs must be at least 1, got {self.jobs}")

    def run(self, todo: list[Job], out: Path) -> Iterator[tuple[Job, dict]]:
        devices = self.devices or ["auto"]
        yield from _run_all(todo, len(devices) if self.jobs is None else self.jobs, devices)


def run_sweep(
    base: TrainConfig, rows: list[Row], seeds: int, out: Path, progress: bool = True, jobs: int | None = None,
    devices: list[str] | None = None, row_seeds: dict[str, int] | None = None, command: str | None = None,
    launcher=None,
) -> list[dict]:
    """Run every job not finished yet; return the records written in this call. `launcher`: how jobs
    run (default: LocalLauncher(jobs, devices)); `row_seeds`: rows run at fewer than `seeds` seeds;
    `command`: recorded in sweep.yaml."""
    from .methods import METHODS

    missing = sorted({r.method for r in rows} - set(METHODS))
    if missing:
        raise CrossSiteError(f"method(s) {', '.join(missing)} of Table I are not in the registry (known: {', '.join(METHODS)})")
    base.validate()
    for row in rows:
        base.replace(**dict(row.settings)).validate()
    if seeds < 1:
        raise CrossSiteError(f"seeds must be at least 1, got {seeds}")
    launcher = launcher or LocalLauncher(jobs, devices)
    launcher.check()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    check_settings(out, sweep_settings(base, rows, seeds, row_seeds), command)
    results = out / "results.jsonl"
    planned = plan(base, rows, seeds, out, row_seeds)
    done = read_results(results)
    todo = [j for j in planned if not finished(j, done)]
    written = []
    bar = tqdm(total=len(planned), initial=len(planned) - len(todo), desc="sweep", unit="job", disable=not progress)
    with bar:
        for job, record in launcher.run(todo, out):
            bar.set_postfix_str(job.name)
            append_jsonl(results, record)
            written.append(record)
            if record["status"] == "ok":
                for resume_state in job.folder.glob(f"**/{run_folder.LAST}"):  # a federation: one per site
                    resume_state.unlink()
            else:
                bar.write(f"{job.name} failed: {record['error']}")
            bar.update()
    return written
