"""TensorBoard events, read back with TensorBoard's own reader, hold what train_log.jsonl and metrics.json hold."""

import json
import shutil

import pytest

from conftest import TINY_TRAIN_FLAGS
from test_train import cut_after

from crosssite import cli
from crosssite.data.sites import SAMPLE_DATA
from crosssite.errors import CrossSiteError
from crosssite.io import read_jsonl

pytest.importorskip("tensorboard", reason="TensorBoard events need the tensorboard extra: pip install -e '.[tensorboard]'")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def scalars(run) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of a run folder's events; a step logged twice is an error."""
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    found = {}
    for tag in events.Tags()["scalars"]:
        steps = [e.step for e in events.Scalars(tag)]
        assert len(steps) == len(set(steps)), f"{tag}: steps {steps}"
        found[tag] = {e.step: e.value for e in events.Scalars(tag)}
    return found


def assert_events_match_the_log(run):
    found = scalars(run)
    log = read_jsonl(run / "train_log.jsonl")
    epochs = [r["epoch"] for r in log]
    expected = {"train/lr": [r["lr"] for r in log], "train/loss": [r["loss"] for r in log],
                "val/mean_auc": [r["val_mean_auc"] for r in log],
                "time/seconds_per_epoch": [r["seconds"] for r in log]}
    for stat in ("ce", "contrastive"):  # the two terms of contrastive's loss, apart
        expected[f"train/{stat}"] = [r[stat] for r in log]
    for site in log[0]["val"]:
        for metric in ("auc", "accuracy", "recall", "specificity"):
            expected[f"val/{site}/{metric}"] = [r["val"][site][metric] for r in log]
    for tag, values in expected.items():
        assert found[tag] == pytest.approx(dict(zip(epochs, values)), rel=1e-6), tag
    metrics = json.loads((run / "metrics.json").read_text())
    for site, per_site in metrics["sites"].items():
        assert found[f"test/{site}/auc"] == pytest.approx({metrics["best_epoch"]: per_site["auc"]}, rel=1e-6)
        tail = {int(e): auc for e, auc in metrics["tail_auc"][site].items()}
        assert found[f"test_tail/{site}/auc"] == pytest.approx(tail, rel=1e-6)
    assert not any(tag.endswith("/n") for tag in found)  # image counts are not curves


def test_train_tensorboard_writes_each_epoch_once_across_a_resume(tmp_path, monkeypatch):
    out = tmp_path / "run"
    flags = ["train", "--method", "contrastive", "--data", str(SAMPLE_DATA), "--epochs", "2", *TINY_TRAIN_FLAGS,
             "--save-every", "1", "--tensorboard", "--out", str(out)]
    cut_after(monkeypatch, epoch=2)  # epoch 2 logged (and its events written), killed before its last.pt
    assert cli.main(flags) == 130  # interrupted
    assert [r["epoch"] for r in read_jsonl(out / "train_log.jsonl")] == [1, 2]
    monkeypatch.undo()
    assert cli.main([*flags, "--resume"]) == 0  # epoch 2 trained again, its events written afresh
    assert_events_match_the_log(out)


def test_tensorboard_command_converts_every_run_of_a_sweep_folder(tmp_path, tiny_run, capsys):
    sweep = tmp_path / "sweep"
    for name in ("a", "b"):
        shutil.copytree(tiny_run, sweep / "jobs" / name, ignore=shutil.ignore_patterns("tensorboard"))
    for _ in range(2):  # a second conversion replaces the first
        assert cli.main(["tensorboard", str(sweep)]) == 0
    assert "2 run folder(s)" in capsys.readouterr().out
    for name in ("a", "b"):
        assert_events_match_the_log(sweep / "jobs" / name)
    with pytest.raises(CrossSiteError, match="no run folder"):
        from crosssite.tensorboard import write_events

        write_events([tmp_path / "nothing"])
