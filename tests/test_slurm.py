"""Sweeps through a real one-node Slurm on 127.0.0.1 (scripts/slurm_cluster.py): every job once, a preempted
job requeued and resumed from its last.pt with the result of an uninterrupted run, restarts that gather."""

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY_SETTINGS

from crosssite import cli
from crosssite.checkpoint import load_checkpoint
from crosssite.config import TrainConfig
from crosssite.errors import CrossSiteError
from crosssite.io import read_jsonl
from crosssite.paper import ROW_BY_NAME
from crosssite.sweep import plan, run_sweep

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
import slurm_cluster  # noqa: E402

ROWS = [ROW_BY_NAME["joint-redesign"], ROW_BY_NAME["contrastive"]]
# last.pt after epoch 1: a resume point; TensorBoard events: one run per job
CONFIG = TrainConfig(**TINY_SETTINGS, epochs=2, folds=2, save_every=1, tensorboard=True)
INTERRUPTED = "contrastive-fold0-seed0"
TINY_FLAGS = ["--rows", "joint-redesign,contrastive", "--seeds", "1", "--folds", "2", "--epochs", "2",
              "--data", TINY_SETTINGS["data"], "--image-size", "32", "--width", "0.125", "--batch-per-site", "8",
              "--lr", "1e-3", "--quiet"]


def test_launcher_flags_build_the_launcher_and_another_launchers_flags_are_refused(tmp_path, capsys):
    from crosssite.cli import build_parser, launcher_from_args
    from crosssite.slurm import SlurmLauncher
    from crosssite.sweep import LocalLauncher

    def launcher(*flags):
        return launcher_from_args(build_parser().parse_args(["sweep", "--out", str(tmp_path), *flags]))

    assert launcher() == LocalLauncher() and launcher("--jobs", "2") == LocalLauncher(jobs=2)
    slurm = launcher("--launcher", "slurm", "--slurm-partition", "gpu", "--slurm-gpus", "1", "--slurm-time", "90",
                     "--slurm-option", "constraint=a100", "--slurm-option", "exclusive")
    assert slurm == SlurmLauncher(partition="gpu", gpus=1, time=90, options={"constraint": "a100", "exclusive": True})
    assert slurm.parameters("x") == {"job_name": "x", "time": 90, "array_parallelism": 256, "partition": "gpu",
                                     "gpus_per_node": 1, "additional_parameters": {"constraint": "a100", "exclusive": True}}
    with pytest.raises(CrossSiteError, match="--slurm-partition does not apply to --launcher local"):
        launcher("--slurm-partition", "gpu")
    with pytest.raises(CrossSiteError, match="--jobs does not apply to --launcher slurm"):
        launcher("--launcher", "slurm", "--jobs", "2")


def test_slurm_launcher_without_slurm_commands_or_with_bad_numbers_is_one_clear_error(monkeypatch):
    pytest.importorskip("submitit", reason="--launcher slurm needs the slurm extra: pip install -e '.[slurm]'")
    from crosssite.slurm import SlurmLauncher

    with pytest.raises(CrossSiteError, match="--slurm-cpus 0, --slurm-gpus -1: too small"):
        SlurmLauncher(cpus=0, gpus=-1).check()
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(CrossSiteError, match="sbatch, squeue, srun not found"):
        SlurmLauncher().check()


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A one-node Slurm cluster for this module's tests, stopped (by PID) when they end."""
    pytest.importorskip("submitit", reason="--launcher slurm needs the slurm extra: pip install -e '.[slurm]'")
    if missing := slurm_cluster.missing_programs():
        pytest.skip(f"Slurm is not installed ({', '.join(missing)} missing; apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        pytest.skip("the one-node test cluster runs its slurmd as root")
    folder = tmp_path_factory.mktemp("slurm")
    env = slurm_cluster.start(folder)
    yield env
    slurm_cluster.stop(folder)


@pytest.fixture
def on_cluster(slurm, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", slurm["SLURM_CONF"])
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def wait_for(ready, what: str, timeout: float = 120.0, every: float = 0.05):
    end = time.time() + timeout
    while not (found := ready()):
        assert time.time() < end, f"no {what} after {timeout} s"
        time.sleep(every)
    return found


def show_job(job_id: str) -> dict:
    text = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, check=True).stdout
    return dict(item.split("=", 1) for item in text.split() if "=" in item)


def without_seconds(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_sweep_through_slurm_requeues_a_preempted_job_which_ends_as_an_uninterrupted_run(tmp_path, on_cluster):
    from crosssite.slurm import SlurmLauncher
    from crosssite.train import train

    out = tmp_path / "sweep"
    launcher = SlurmLauncher(cpus=1, poll_seconds=0.5)
    finished = []
    sweep = threading.Thread(target=lambda: finished.append(run_sweep(CONFIG, ROWS, 1, out, False, launcher=launcher)))
    sweep.start()

    # preempt the job once it has written last.pt after epoch 1: submitit's USR2, as Slurm sends before preempting
    job_folder = out / "jobs" / INTERRUPTED
    wait_for(lambda: (job_folder / "last.pt").exists(), f"{INTERRUPTED}/last.pt")
    first_epoch = read_jsonl(job_folder / "train_log.jsonl")[0]
    slurm_id = json.loads((out / "slurm" / "submitted.json").read_text())[INTERRUPTED]
    subprocess.run(["scancel", "--signal=USR2", slurm_id], check=True)

    reference = tmp_path / "reference"  # the same job, uninterrupted, while the sweep goes on
    job = next(j for j in plan(CONFIG, ROWS, 1, out) if j.name == INTERRUPTED)
    train(job.config.replace(out=str(reference)), progress=False)
    sweep.join(timeout=180)
    assert not sweep.is_alive() and finished, "the sweep did not end"

    records = read_jsonl(out / "results.jsonl")
    assert finished[0] == records and sorted(r["job"] for r in records) == sorted(j.name for j in plan(CONFIG, ROWS, 1, out))
    assert all(r["status"] == "ok" for r in records)
    submitted = json.loads((out / "slurm" / "submitted.json").read_text())
    assert {r["job"]: r["slurm_job"] for r in records} == submitted
    for name, job_id in submitted.items():  # every job ran through sbatch, and only the preempted one twice
        state = wait_for(lambda: (s := show_job(job_id))["JobState"] not in ("RUNNING", "COMPLETING") and s,
                         f"the end of Slurm job {job_id}", timeout=30)  # it writes its record just before it ends
        assert state["JobState"] == "COMPLETED" and state["Restarts"] == ("1" if name == INTERRUPTED else "0"), state

    # resumed from last.pt (epoch 1 not trained again), and equal to the uninterrupted run
    log = read_jsonl(job_folder / "train_log.jsonl")
    assert log[0] == first_epoch and len(log) == 2
    assert without_seconds(log) == without_seconds(read_jsonl(reference / "train_log.jsonl"))
    assert json.loads((job_folder / "metrics.json").read_text()) == json.loads((reference / "metrics.json").read_text())
    weights, expected = (load_checkpoint(folder / "best.pt")["model"] for folder in (job_folder, reference))
    assert weights.keys() == expected.keys() and all(torch.equal(weights[k], expected[k]) for k in weights)
    assert not (job_folder / "last.pt").exists()
    if importlib.util.find_spec("tensorboard"):  # each job's curves, the requeued one's with each epoch once
        from test_tensorboard import scalars

        assert all(scalars(out / "jobs" / name)["val/mean_auc"].keys() == {1, 2} for name in submitted)

    # a restart gathers a record the sweep did not see (it was stopped) and submits nothing
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    (out / "results.jsonl").write_text("".join(lines[:-1]))
    assert cli.main(["sweep", "--launcher", "slurm", "--out", str(out), *TINY_FLAGS, "--save-every", "1"]) == 0
    assert read_jsonl(out / "results.jsonl") == records
    assert json.loads((out / "slurm" / "submitted.json").read_text()) == submitted
    assert cli.main(["sweep", "--launcher", "slurm", "--out", str(out), *TINY_FLAGS, "--save-every", "1",
                     "--slurm-cpus", "2", "--slurm-time", "10"]) == 0  # launcher settings are not compared
    assert read_jsonl(out / "results.jsonl") == records
    with pytest.raises(CrossSiteError, match="other settings"):
        run_sweep(CONFIG.replace(epochs=3), ROWS, 1, out, False, launcher=launcher)


def cancelled_sweep(out: Path, before: dict) -> tuple[list[dict], dict]:
    """Run a sweep whose jobs are submitted held (they never start) and cancel them: its records and Slurm ids."""
    from crosssite.slurm import SlurmLauncher

    held = SlurmLauncher(cpus=1, poll_seconds=0.5, options={"hold": True})
    records = []
    sweep = threading.Thread(target=lambda: records.extend(run_sweep(CONFIG, ROWS[:1], 1, out, False, launcher=held)))
    sweep.start()
    path = out / "slurm" / "submitted.json"
    submitted = wait_for(lambda: path.exists() and (ids := json.loads(path.read_text())) != before and ids, "submission")
    for job_id in submitted.values():
        subprocess.run(["scancel", job_id], check=True)
    sweep.join(timeout=60)
    assert not sweep.is_alive()
    return records, submitted


def test_a_job_that_leaves_the_queue_without_a_result_is_recorded_as_failed_and_submitted_again(tmp_path, on_cluster):
    out = tmp_path / "sweep"
    records, submitted = cancelled_sweep(out, {})
    assert [r["status"] for r in records] == ["failed", "failed"]
    assert all("ended without a result" in r["error"] and r["slurm_job"] in r["error"] for r in records)
    assert {r["job"]: r["slurm_job"] for r in records} == submitted
    retried, resubmitted = cancelled_sweep(out, submitted)  # a restart submits failed jobs again
    assert set(resubmitted) == set(submitted) and not set(resubmitted.values()) & set(submitted.values())
    assert read_jsonl(out / "results.jsonl") == records + retried
