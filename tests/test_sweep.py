"""Sweeps on the shipped sample: one results line per job, restart after a kill, failed jobs recorded."""

import json
from pathlib import Path

import pytest
import yaml

from conftest import TINY_SETTINGS

from crosssite import cli
from crosssite import train as train_module
from crosssite.config import EXECUTION_SETTINGS, TrainConfig
from crosssite.data.sites import SAMPLE_DATA
from crosssite.errors import CrossSiteError, CrossSiteWarning
from crosssite.presets import PRESETS
from crosssite.io import read_jsonl
from crosssite.paper import ROW_BY_NAME, ROWS, Row, select_rows
from crosssite.sweep import read_results, run_sweep

TINY = {**TINY_SETTINGS, "epochs": 1, "folds": 2}
TWO_ROWS = [ROW_BY_NAME["joint-redesign"], ROW_BY_NAME["contrastive"]]
JOBS = [f"{row}-fold{fold}-seed0" for row in ("joint-redesign", "contrastive") for fold in (0, 1)]


def count_trainings(monkeypatch, fail=None):
    """Wrap train(): record (job, resume) per call; `fail(job, calls)` may raise instead of training."""
    calls = []
    real_train = train_module.train

    def counted(config, resume=False, progress=True, device="auto"):
        job = Path(config.out).name
        calls.append((job, resume))
        if fail:
            fail(job, calls)
        return real_train(config, resume=resume, progress=progress, device=device)

    monkeypatch.setattr(train_module, "train", counted)
    return calls


def test_sweep_runs_every_job_once_and_writes_one_line_each(tmp_path, monkeypatch):
    calls = count_trainings(monkeypatch)
    written = run_sweep(TrainConfig(**TINY), TWO_ROWS, seeds=1, out=tmp_path, progress=False)
    lines = read_jsonl(tmp_path / "results.jsonl")
    assert [r["job"] for r in lines] == JOBS == [job for job, _ in calls]
    assert lines == written
    for r in lines:
        assert r["status"] == "ok" and r["seconds"] > 0
        assert set(r["sites"]) == {"sars-cov-2-ct", "covid-ct"}
        folder = tmp_path / r["folder"]
        assert json.loads((folder / "metrics.json").read_text())["sites"] == r["sites"]
        assert (folder / "predictions.csv").exists() and (folder / "best.pt").exists()
        assert not (folder / "last.pt").exists()  # resume state dropped once the job is recorded
        assert yaml.safe_load((folder / "config.yaml").read_text())["fold"] == r["fold"]
    assert run_sweep(TrainConfig(**TINY), TWO_ROWS, seeds=1, out=tmp_path, progress=False) == []
    assert len(calls) == 4


def test_interrupted_sweep_resumes_the_cut_job_and_runs_nothing_twice(tmp_path, monkeypatch):
    config = TrainConfig(**{**TINY, "epochs": 2})
    real_evaluate = train_module.evaluate_part
    state = {"validations": 0}

    def evaluate_then_die(method, data, part, batch_size):
        if part == "val" and len(calls) == 3:  # the 3rd job: die in epoch 2, after epoch 1's last.pt
            state["validations"] += 1
            if state["validations"] == 2:
                raise KeyboardInterrupt
        return real_evaluate(method, data, part, batch_size)

    calls = count_trainings(monkeypatch)
    monkeypatch.setattr(train_module, "evaluate_part", evaluate_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(config, TWO_ROWS, seeds=1, out=tmp_path, progress=False)
    assert len(read_jsonl(tmp_path / "results.jsonl")) == 2
    cut = tmp_path / "jobs" / JOBS[2]
    assert (cut / "last.pt").exists() and not (cut / "metrics.json").exists()

    run_sweep(config, TWO_ROWS, seeds=1, out=tmp_path, progress=False)
    assert calls == [(JOBS[0], False), (JOBS[1], False), (JOBS[2], False), (JOBS[2], True), (JOBS[3], False)]
    assert [r["job"] for r in read_jsonl(tmp_path / "results.jsonl")] == JOBS
    epochs = [json.loads(line)["epoch"] for line in (cut / "train_log.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]  # epoch 1 was not trained again


def test_failed_job_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    def fail(job, calls):
        if job == JOBS[1]:
            raise CrossSiteError("the data went away")
        if job == JOBS[2]:
            raise RuntimeError("a bug")

    count_trainings(monkeypatch, fail)
    run_sweep(TrainConfig(**TINY), TWO_ROWS, seeds=1, out=tmp_path, progress=False)
    lines = {r["job"]: r for r in read_jsonl(tmp_path / "results.jsonl")}
    assert list(lines) == JOBS
    assert [lines[j]["status"] for j in JOBS] == ["ok", "failed", "failed", "ok"]
    assert lines[JOBS[1]]["error"] == "CrossSiteError: the data went away"
    assert lines[JOBS[2]]["error"] == "RuntimeError: a bug"

    calls = count_trainings(monkeypatch)  # a restart retries the failed jobs only
    run_sweep(TrainConfig(**TINY), TWO_ROWS, seeds=1, out=tmp_path, progress=False)
    assert [job for job, _ in calls] == JOBS[1:3]


def test_restart_with_other_settings_is_refused(tmp_path):
    run_sweep(TrainConfig(**TINY), TWO_ROWS[:1], seeds=1, out=tmp_path, progress=False)
    with pytest.raises(CrossSiteError, match="config.epochs"):
        run_sweep(TrainConfig(**{**TINY, "epochs": 3}), TWO_ROWS[:1], seeds=1, out=tmp_path, progress=False)


def test_a_restart_that_adds_seeds_or_rows_extends_the_sweep_and_one_that_drops_jobs_is_refused(tmp_path):
    from crosssite.sweep import check_settings, seeds_per_row, sweep_settings

    one_row = sweep_settings(TrainConfig(**TINY), TWO_ROWS[:1], seeds=1)
    check_settings(tmp_path, one_row, "crosssite sweep A")
    grown = sweep_settings(TrainConfig(**TINY), TWO_ROWS, seeds=2, row_seeds={"contrastive": 1})
    check_settings(tmp_path, grown, "crosssite sweep B")
    check_settings(tmp_path, grown, "crosssite sweep B again")  # the same plan: nothing to record
    saved = yaml.safe_load((tmp_path / "sweep.yaml").read_text())
    assert seeds_per_row(saved) == {"joint-redesign": 2, "contrastive": 1}
    assert saved["started_by"]["command"] == "crosssite sweep A"
    assert [e["command"] for e in saved["extended_by"]] == ["crosssite sweep B"] and saved["extended_by"][0]["commit"]

    with pytest.raises(CrossSiteError, match="rows, seeds, row_seeds"):  # would leave finished jobs out
        check_settings(tmp_path, one_row, "crosssite sweep C")
    more_epochs = sweep_settings(TrainConfig(**{**TINY, "epochs": 3}), TWO_ROWS, seeds=3)
    with pytest.raises(CrossSiteError, match="config.epochs"):  # more seeds, but of other jobs
        check_settings(tmp_path, more_epochs, "crosssite sweep D")


def test_a_setting_added_after_the_sweep_started_is_taken_at_its_default(tmp_path):
    run_sweep(TrainConfig(**TINY), TWO_ROWS[:1], seeds=1, out=tmp_path, progress=False)
    saved = yaml.safe_load((tmp_path / "sweep.yaml").read_text())
    del saved["config"]["window"]  # as if written before --window existed
    saved["config"]["save_every"] = 1  # an execution setting, as older sweeps recorded them
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    run_sweep(TrainConfig(**TINY, save_every=3), TWO_ROWS[:1], seeds=1, out=tmp_path, progress=False)
    with pytest.raises(CrossSiteError, match="config.window"):
        run_sweep(TrainConfig(**{**TINY, "window": [400.0, 40.0]}), TWO_ROWS[:1], seeds=1, out=tmp_path, progress=False)


def test_rows_are_selected_by_name_and_unknown_ones_are_named():
    assert select_rows(["all"]) + select_rows(["federated"]) == ROWS  # all: every centralised row
    assert select_rows(["contrastive,joint-covidnet", "sepnorm", "contrastive"]) == [
        ROW_BY_NAME["joint-covidnet"], ROW_BY_NAME["sepnorm"], ROW_BY_NAME["contrastive"]
    ]
    with pytest.raises(CrossSiteError, match="nope"):
        select_rows(["contrastive", "nope"])


def test_a_row_whose_method_is_not_registered_is_a_clear_error(tmp_path):
    with pytest.raises(CrossSiteError, match="no-such-method"):
        run_sweep(TrainConfig(**TINY), [Row("x", "X", "no-such-method")], seeds=1, out=tmp_path, progress=False)


def test_cli_sweep_flags_override_the_preset(tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["sweep", "--preset", "cpu", "--data", str(SAMPLE_DATA), "--methods", "joint-redesign", "--folds", "2",
            "--epochs", "1", "--image-size", "32", "--width", "0.125", "--batch-per-site", "8", "--out", str(out),
            "--quiet"]
    assert cli.main(argv) == 0
    settings = yaml.safe_load((out / "sweep.yaml").read_text())
    assert settings["rows"] == ["joint-redesign"] and settings["folds"] == 2 and settings["seeds"] == 1
    flags = dict(data=str(SAMPLE_DATA), folds=2, epochs=1, image_size=32, width=0.125, batch_per_site=8)
    expected = PRESETS["cpu"].config.replace(**flags).to_dict()
    per_job = ("method", "backbone", "fold", "seed", "out", *EXECUTION_SETTINGS)
    assert settings["config"] == {k: v for k, v in expected.items() if k not in per_job}
    assert len(read_jsonl(out / "results.jsonl")) == 2
    assert "2 job(s) run, 0 failed" in capsys.readouterr().out


def test_parallel_workers_run_every_job_once_in_its_own_folder(tmp_path):
    """--jobs 2: two worker processes; every job ends once, in its own folder, one results line each."""
    config = TrainConfig(**TINY)
    # two devices and no --jobs: one worker per device
    records = run_sweep(config, select_rows(["joint-redesign,sepnorm"]), 1, tmp_path, progress=False,
                        devices=["cpu", "cpu"])
    assert all(r["device"] == "cpu" for r in records)
    assert sorted(r["job"] for r in records) == sorted(
        f"{row}-fold{f}-seed0" for row in ("joint-redesign", "sepnorm") for f in range(2)
    )
    assert all(r["status"] == "ok" for r in records)
    assert len(read_jsonl(tmp_path / "results.jsonl")) == 4
    assert all((tmp_path / r["folder"] / "metrics.json").exists() for r in records)


def _warn(text):
    import warnings

    warnings.warn(text, CrossSiteWarning)


def test_warnings_in_worker_processes_are_one_line_as_in_the_cli(capfd):
    """A spawned worker starts with Python's two-line warning format; _init_worker gives it the CLI's."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from crosssite.sweep import _init_worker

    context = get_context("spawn")
    devices = context.Queue()
    devices.put("cpu")
    with ProcessPoolExecutor(1, context, initializer=_init_worker, initargs=(1, devices)) as pool:
        pool.submit(_warn, "a repaired file").result()
    assert capfd.readouterr().err.splitlines() == ["crosssite: warning: a repaired file"]


def test_unknown_device_fails_before_any_job(tmp_path):
    with pytest.raises(CrossSiteError, match="device"):
        run_sweep(TrainConfig(**TINY), TWO_ROWS, seeds=1, out=tmp_path, progress=False, devices=["cpu", "tpu:3"])
    assert not (tmp_path / "results.jsonl").exists()


def test_rows_with_fewer_seeds_run_last_and_rows_apply_their_own_settings(tmp_path):
    from crosssite.sweep import parse_row_seeds, plan

    rows = select_rows(["sepnorm,contrastive,contrastive-alpha0.1,sepnorm-grouped"])
    row_seeds = parse_row_seeds(["grouped=1"], rows, seeds=2)
    assert row_seeds == {"sepnorm-grouped": 1}
    jobs = plan(TrainConfig(**{**TINY, "folds": 2}), rows, 2, tmp_path, row_seeds)
    assert [j.name for j in jobs] == [  # the paper's rows at every seed, then ablations, then fewer seeds
        "sepnorm-fold0-seed0", "sepnorm-fold1-seed0", "contrastive-fold0-seed0", "contrastive-fold1-seed0",
        "sepnorm-fold0-seed1", "sepnorm-fold1-seed1", "contrastive-fold0-seed1", "contrastive-fold1-seed1",
        "contrastive-alpha0.1-fold0-seed0", "contrastive-alpha0.1-fold1-seed0",
        "contrastive-alpha0.1-fold0-seed1", "contrastive-alpha0.1-fold1-seed1",
        "sepnorm-grouped-fold0-seed0", "sepnorm-grouped-fold1-seed0",
    ]
    by_name = {j.name: j.config for j in jobs}
    assert by_name["contrastive-alpha0.1-fold0-seed1"].alpha == 0.1 and by_name["contrastive-fold0-seed1"].alpha == 1.0
    assert by_name["sepnorm-grouped-fold1-seed0"].group_duplicates == 0.95
    with pytest.raises(CrossSiteError, match="not in this sweep"):
        parse_row_seeds(["joint-redesign=1"], rows, seeds=2)
    with pytest.raises(CrossSiteError, match="1..2"):
        parse_row_seeds(["grouped=5"], rows, seeds=2)


def test_sweep_yaml_records_command_and_commit_without_comparing_them(tmp_path):
    run_sweep(TrainConfig(**TINY), TWO_ROWS[:1], seeds=1, out=tmp_path, progress=False, command="crosssite sweep X")
    saved = yaml.safe_load((tmp_path / "sweep.yaml").read_text())
    assert saved["started_by"]["command"] == "crosssite sweep X" and saved["started_by"]["commit"]
    assert run_sweep(TrainConfig(**TINY), TWO_ROWS[:1], seeds=1, out=tmp_path, progress=False, command="other") == []
    record = read_jsonl(tmp_path / "results.jsonl")[0]
    assert record["commit"] and set(record["tail_auc"]) == {"sars-cov-2-ct", "covid-ct"}


def test_torn_results_line_is_dropped_and_its_finished_job_not_trained_again(tmp_path, monkeypatch):
    rows = TWO_ROWS[:1]
    run_sweep(TrainConfig(**TINY), rows, seeds=1, out=tmp_path, progress=False)
    results = tmp_path / "results.jsonl"
    text = results.read_text()
    results.write_text(text[: len(text) - 40])  # killed while appending the last job's line
    last_job = tmp_path / "jobs" / JOBS[1]
    metrics = (last_job / "metrics.json").read_bytes()

    calls = count_trainings(monkeypatch)
    with pytest.warns(CrossSiteWarning, match="torn"):
        run_sweep(TrainConfig(**TINY), rows, seeds=1, out=tmp_path, progress=False)
    assert calls == [(JOBS[1], True)]  # resumed: train finds it finished and returns its metrics.json
    records = read_results(results)
    assert [r["job"] for r in records] == JOBS[:2] and all(r["status"] == "ok" for r in records)
    assert (last_job / "metrics.json").read_bytes() == metrics
    assert len(read_jsonl(last_job / "train_log.jsonl")) == 1


def test_job_cut_before_its_first_last_pt_restarts_cleanly(tmp_path, monkeypatch):
    config = TrainConfig(**{**TINY, "epochs": 2})
    real_save = train_module.save_checkpoint

    def die_at_first_last_pt(path, *args, **kwargs):
        if path.name == "last.pt" and not (tmp_path / "results.jsonl").exists():
            raise KeyboardInterrupt  # job 1, after epoch 1's log line, before its last.pt
        return real_save(path, *args, **kwargs)

    calls = count_trainings(monkeypatch)
    monkeypatch.setattr(train_module, "save_checkpoint", die_at_first_last_pt)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(config, TWO_ROWS[:1], seeds=1, out=tmp_path, progress=False)
    cut = tmp_path / "jobs" / JOBS[0]
    assert len(read_jsonl(cut / "train_log.jsonl")) == 1 and not (cut / "last.pt").exists()

    monkeypatch.setattr(train_module, "save_checkpoint", real_save)
    run_sweep(config, TWO_ROWS[:1], seeds=1, out=tmp_path, progress=False)
    assert calls == [(JOBS[0], False), (JOBS[0], True), (JOBS[1], False)]
    assert [r["epoch"] for r in read_jsonl(cut / "train_log.jsonl")] == [1, 2]
    assert all(r["status"] == "ok" for r in read_results(tmp_path / "results.jsonl"))
