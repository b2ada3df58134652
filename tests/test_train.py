"""Training end to end on the shipped sample: outputs, resume after a kill, divergence."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from conftest import TINY_SETTINGS

from crosssite import train as train_module
from crosssite.cli import SAMPLE_DATA, main
from crosssite.config import TrainConfig
from crosssite.errors import CrossSiteError, DivergedError
from crosssite.io import read_jsonl

TINY = {**TINY_SETTINGS, "epochs": 2}


def tiny_config(tmp_path, name="run", **overrides):
    return TrainConfig(**{**TINY, "out": str(tmp_path / name), **overrides})


@pytest.mark.parametrize("method", ["single", "joint", "sepnorm", "contrastive"])
def test_train_writes_metrics_of_the_documented_shape(tmp_path, method):
    config = tiny_config(tmp_path, method=method)
    metrics = train_module.train(config, progress=False)
    out = tmp_path / "run"
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == metrics
    assert {"method", "backbone", "fold", "seed", "sites"} <= set(on_disk)
    assert list(on_disk["sites"]) == ["sars-cov-2-ct", "covid-ct"]
    for site in on_disk["sites"].values():
        assert set(site) >= {"accuracy", "f1", "recall", "precision", "auc", "specificity", "n"}
        assert all(0.0 <= site[k] <= 1.0 for k in site if k != "n")
        assert site["n"] > 0
    assert yaml.safe_load((out / "config.yaml").read_text())["method"] == method
    assert len(read_jsonl(out / "train_log.jsonl")) == 2
    assert (out / "best.pt").exists() and (out / "last.pt").exists()
    split = json.loads((out / "split.json").read_text())
    assert "covid-ct" in json.dumps(split)
    rows = (out / "predictions.csv").read_text().splitlines()
    assert rows[0] == "site,path,patient,label,p_covid"
    assert len(rows) - 1 == sum(s["n"] for s in on_disk["sites"].values())
    # both epochs are within the last tail_epochs (3): their test predictions are kept for the report
    tail = (out / "tail_predictions.csv").read_text().splitlines()
    assert tail[0] == "epoch,site,path,patient,label,p_covid" and len(tail) - 1 == 2 * (len(rows) - 1)
    assert set(on_disk["tail_auc"]["covid-ct"]) == {"1", "2"}
    assert any(r.split(",")[2] for r in rows[1:] if r.startswith("covid-ct"))  # covid-ct has patient ids
    # patient level where ids exist (covid-ct only); no scans in the sample
    patients = {r.split(",")[2] for r in rows[1:] if r.startswith("covid-ct")}
    assert list(on_disk["patients"]) == ["covid-ct"] and on_disk["patients"]["covid-ct"]["n"] == len(patients)
    assert on_disk["scans"] == {} and on_disk["aggregate"] == "mean of the top 5 slices"


def final_weights(out):
    return torch.load(out / "last.pt", weights_only=True)["model"]


def cut_after(monkeypatch, epoch):
    """Kill training after epoch `epoch` has written its log line but before its last.pt."""
    real_save = train_module.save_checkpoint

    def save_or_die(path, *args, **kwargs):
        if path.name == "last.pt" and kwargs["epoch"] == epoch:
            raise KeyboardInterrupt
        return real_save(path, *args, **kwargs)

    monkeypatch.setattr(train_module, "save_checkpoint", save_or_die)


def kill_at_validation(monkeypatch, epoch):
    """Kill training in epoch `epoch` after its training steps, as it starts validating (before it saves
    anything); monkeypatch.undo() brings the real validation back."""
    real_evaluate = train_module.evaluate_part
    calls = {"val": 0}

    def evaluate_then_die(method, data, part, *args, **kwargs):
        calls["val"] += part == "val"
        if calls["val"] == epoch:
            raise KeyboardInterrupt
        return real_evaluate(method, data, part, *args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate_part", evaluate_then_die)


def test_killed_and_resumed_run_ends_with_the_same_weights(tmp_path, monkeypatch):
    config = tiny_config(tmp_path, "whole", method="contrastive", epochs=3)
    train_module.train(config, progress=False)

    interrupted = tiny_config(tmp_path, "killed", method="contrastive", epochs=3)
    kill_at_validation(monkeypatch, epoch=2)  # after epoch 2's training steps, before its checkpoint
    with pytest.raises(KeyboardInterrupt):
        train_module.train(interrupted, progress=False)
    monkeypatch.undo()
    assert torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["epoch"] == 1

    train_module.train(interrupted, resume=True, progress=False)
    whole, resumed = final_weights(tmp_path / "whole"), final_weights(tmp_path / "killed")
    assert whole.keys() == resumed.keys()
    for k in whole:
        torch.testing.assert_close(whole[k], resumed[k], rtol=0, atol=0, msg=k)
    log = read_jsonl(tmp_path / "killed" / "train_log.jsonl")
    assert [r["epoch"] for r in log] == [1, 2, 3]
    tail = [(tmp_path / name / "tail_predictions.csv").read_text() for name in ("whole", "killed")]
    assert tail[0] == tail[1]


def test_single_takes_each_sites_network_from_its_own_best_epoch(tmp_path, monkeypatch):
    config = tiny_config(tmp_path, method="single", epochs=3)
    real_evaluate = train_module.evaluate_part
    val_aucs = {"sars-cov-2-ct": [0.6, 0.9, 0.7], "covid-ct": [0.8, 0.5, 0.6]}  # best epochs 2 and 1
    weights = []

    def scripted_validation(method, data, part, *args, **kwargs):
        per_site, rows = real_evaluate(method, data, part, *args, **kwargs)
        if part == "val":
            weights.append({k: v.clone() for k, v in method.state_dict().items()})
            per_site = {s: {**m, "auc": val_aucs[s][len(weights) - 1]} for s, m in per_site.items()}
        return per_site, rows

    monkeypatch.setattr(train_module, "evaluate_part", scripted_validation)
    metrics = train_module.train(config, progress=False)
    assert metrics["site_best_epochs"] == {"sars-cov-2-ct": 2, "covid-ct": 1}
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["model"]
    for key, value in best.items():
        epoch = 2 if key.startswith("nets.0.") else 1
        torch.testing.assert_close(value, weights[epoch - 1][key], rtol=0, atol=0, msg=key)
    assert not torch.equal(weights[0]["nets.0.classifier.0.weight"], weights[1]["nets.0.classifier.0.weight"])


def test_resume_refuses_changed_settings(tmp_path):
    config = tiny_config(tmp_path, epochs=1, method="joint")
    train_module.train(config, progress=False)
    with pytest.raises(CrossSiteError, match="different settings.*method"):
        train_module.train(config.replace(method="sepnorm"), resume=True, progress=False)


def test_existing_run_is_not_overwritten(tmp_path):
    config = tiny_config(tmp_path, epochs=1, method="joint")
    train_module.train(config, progress=False)
    with pytest.raises(CrossSiteError, match="--resume"):
        train_module.train(config, progress=False)


def test_diverging_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    config = tiny_config(tmp_path, epochs=3, method="joint")
    from crosssite.methods import joint

    real_ce, real_evaluate = joint.F.cross_entropy, train_module.evaluate_part
    epochs_done = []

    def evaluate_and_count(*args, **kwargs):
        epochs_done.append(1)
        return real_evaluate(*args, **kwargs)

    def ce_goes_nan_after_epoch_1(*args, **kwargs):
        loss = real_ce(*args, **kwargs)
        return loss * float("nan") if epochs_done else loss

    monkeypatch.setattr(train_module, "evaluate_part", evaluate_and_count)
    monkeypatch.setattr(joint.F, "cross_entropy", ce_goes_nan_after_epoch_1)
    with pytest.raises(DivergedError, match=r"loss became nan at epoch 2.*last good checkpoint: .*last\.pt"):
        train_module.train(config, progress=False)
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] == 1
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_resume_with_a_checkpoint_of_another_method_is_refused(tmp_path):
    joint_run = tiny_config(tmp_path, "joint", epochs=1, method="joint")
    train_module.train(joint_run, progress=False)
    mine = tiny_config(tmp_path, "mine", epochs=2, method="contrastive")
    (tmp_path / "mine").mkdir()
    from crosssite.config import save_config

    save_config(mine, tmp_path / "mine" / "config.yaml")
    (tmp_path / "mine" / "last.pt").write_bytes((tmp_path / "joint" / "last.pt").read_bytes())
    with pytest.raises(CrossSiteError, match=r"last\.pt: checkpoint of method 'joint', expected 'contrastive'"):
        train_module.train(mine, resume=True, progress=False)


def test_resume_before_anything_was_saved_starts_afresh(tmp_path):
    metrics = train_module.train(tiny_config(tmp_path, epochs=1, method="joint"), resume=True, progress=False)
    assert metrics["best_epoch"] == 1


def snapshot(folder):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished one-epoch run whose last.pt was dropped, as a finished sweep job's is."""
    out = tmp_path_factory.mktemp("finished") / "run"
    config = TrainConfig(**{**TINY, "epochs": 1, "method": "joint", "out": str(out)})
    train_module.train(config, progress=False)
    (out / "last.pt").unlink()
    return config


def test_a_finished_run_is_never_overwritten(finished_run):
    out = Path(finished_run.out)
    before = snapshot(out)
    with pytest.raises(CrossSiteError, match=r"holds a run already \(config\.yaml, .*metrics\.json.*--resume"):
        train_module.train(finished_run, progress=False)
    assert snapshot(out) == before


def test_resume_of_a_finished_run_says_so_and_changes_nothing(finished_run, capsys):
    out = Path(finished_run.out)
    before = snapshot(out)
    assert train_module.train(finished_run, resume=True, progress=False) == json.loads((out / "metrics.json").read_text())
    assert main(["train", "--config", str(out / "config.yaml"), "--resume", "--quiet"]) == 0
    assert "this run is finished; --resume changed nothing" in capsys.readouterr().out
    assert snapshot(out) == before


def test_file_names_that_are_not_utf8_train_and_reach_the_outputs(tmp_path, capsys):
    """Every COVID image of one site renamed to a Latin-1 name: split.json, predictions.csv and the printed
    predictions name the files, and each name read back opens the same file."""
    import csv
    import os

    shutil.copytree(SAMPLE_DATA, tmp_path / "data")
    folder = tmp_path / "data" / "sars-cov-2-ct" / "COVID"
    for image in folder.iterdir():
        image.rename(folder / os.fsdecode(b"caf\xe9-" + image.name.encode()))
    out = tmp_path / "run"
    train_module.train(TrainConfig(**{**TINY, "data": str(tmp_path / "data"), "epochs": 1, "method": "joint",
                                      "out": str(out)}), progress=False)
    with open(out / "predictions.csv", newline="", encoding="utf-8", errors="surrogateescape") as f:
        named = [r["path"] for r in csv.DictReader(f) if "\udce9" in r["path"]]
    assert named and all(Path(p).is_file() for p in named)
    split = json.loads((out / "split.json").read_text(encoding="ascii"))  # JSON escapes them: still ASCII
    assert set(named) <= {p for part in split["sites"]["sars-cov-2-ct"].values() for p in part}
    capsys.readouterr()
    assert main(["predict", str(out / "best.pt"), "--site", "sars-cov-2-ct", named[0]]) == 0
    printed = capsys.readouterr().out  # escaped where the terminal is strict UTF-8, as here
    assert named[0].encode("utf-8", "backslashreplace").decode() in printed


def test_resume_of_a_finished_run_notices_a_damaged_log_line(finished_run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(finished_run.out, copy)
    log = copy / "train_log.jsonl"
    log.write_text('{"epoch": 0, "loss\n' + log.read_text())  # a damaged line before the intact one
    assert main(["train", "--config", str(copy / "config.yaml"), "--out", str(copy), "--resume", "--quiet"]) == 2
    assert capsys.readouterr().err == f"crosssite: error: {log}: line 1 is not valid JSON\n"


def test_resume_without_config_yaml_is_refused(finished_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(finished_run.out, copy)
    (copy / "config.yaml").unlink()
    before = snapshot(copy)
    with pytest.raises(CrossSiteError, match=r"cannot --resume without its config\.yaml"):
        train_module.train(finished_run.replace(out=str(copy)), resume=True, progress=False)
    assert snapshot(copy) == before


def test_out_naming_a_file_is_refused(tmp_path):
    existing = tmp_path / "notes.txt"
    existing.write_text("mine")
    with pytest.raises(CrossSiteError, match="names a file, not a run folder"):
        train_module.train(tiny_config(tmp_path, "notes.txt"), progress=False)
    assert existing.read_text() == "mine"


def test_a_moved_run_folder_resumes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tiny_config(tmp_path, "before", method="joint")  # absolute path in config.yaml
    cut_after(monkeypatch, epoch=2)
    with pytest.raises(KeyboardInterrupt):
        train_module.train(config, progress=False)
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "before").rename(tmp_path / "after")
    metrics = train_module.train(config.replace(out="after"), resume=True, progress=False)  # relative now
    assert metrics["best_epoch"] in (1, 2)
    assert [r["epoch"] for r in read_jsonl(tmp_path / "after" / "train_log.jsonl")] == [1, 2]


def test_kill_before_the_first_last_pt_resumes_without_training_an_epoch_twice(tmp_path, monkeypatch):
    train_module.train(tiny_config(tmp_path, "whole", method="joint"), progress=False)
    config = tiny_config(tmp_path, "cut", method="joint")
    cut_after(monkeypatch, epoch=1)
    with pytest.raises(KeyboardInterrupt):
        train_module.train(config, progress=False)
    monkeypatch.undo()
    cut = tmp_path / "cut"
    assert [r["epoch"] for r in read_jsonl(cut / "train_log.jsonl")] == [1] and not (cut / "last.pt").exists()
    with pytest.raises(CrossSiteError, match="--resume"):
        train_module.train(config, progress=False)
    train_module.train(config, resume=True, progress=False)
    assert [r["epoch"] for r in read_jsonl(cut / "train_log.jsonl")] == [1, 2]
    whole, resumed = final_weights(tmp_path / "whole"), final_weights(cut)
    for k in whole:
        torch.testing.assert_close(whole[k], resumed[k], rtol=0, atol=0, msg=k)


def duplicate_listing_csv(tmp_path):
    images = sorted((SAMPLE_DATA / "covid-ct" / "CT_COVID").iterdir())[:3]
    csv_path = tmp_path / "site.csv"
    csv_path.write_text("path,label\n" + "".join(f"{p},COVID\n{p},NonCOVID\n" for p in images))
    return csv_path


@pytest.mark.parametrize("change, message", [
    (dict(method="nope"), "unknown method 'nope'"),
    (dict(method="sepnorm", backbone="covidnet"), "runs on backbone"),
    (dict(eval_batch_size=0), "eval_batch_size"),
    (dict(grad_clip=-1.0), "grad_clip"),
    ("duplicates", "already listed on line 2"),
    (dict(sites=[f"again={SAMPLE_DATA / 'covid-ct'}"]), "belongs to both site 'covid-ct' and site 'again'"),
])
def test_bad_settings_and_data_fail_before_anything_is_written(tmp_path, change, message):
    if change == "duplicates":
        change = dict(data=None, sites=[f"mine={duplicate_listing_csv(tmp_path)}"])
    with pytest.raises(CrossSiteError, match=message):
        train_module.train(tiny_config(tmp_path, **change), progress=False)
    assert not (tmp_path / "run").exists()


def test_saving_every_k_epochs_resumes_from_the_last_saved_epoch_to_the_same_end(tmp_path, monkeypatch):
    whole = train_module.train(tiny_config(tmp_path, "whole", method="sepnorm", epochs=3), progress=False)

    sparse = tiny_config(tmp_path, "sparse", method="sepnorm", epochs=3, save_every=2)
    kill_at_validation(monkeypatch, epoch=3)  # after epoch 3's training steps: epoch 2 was the last one saved
    with pytest.raises(KeyboardInterrupt):
        train_module.train(sparse, progress=False)
    monkeypatch.undo()
    assert torch.load(tmp_path / "sparse" / "last.pt", weights_only=True)["epoch"] == 2

    # how often to save is not a setting of what is computed: a resume may change it
    resumed = train_module.train(sparse.replace(save_every=1), resume=True, progress=False)
    assert {k: v for k, v in resumed.items()} == whole
    sparse_weights = final_weights(tmp_path / "sparse")
    for k, v in final_weights(tmp_path / "whole").items():
        torch.testing.assert_close(sparse_weights[k], v, rtol=0, atol=0, msg=k)
    assert [r["epoch"] for r in read_jsonl(tmp_path / "sparse" / "train_log.jsonl")] == [1, 2, 3]


def test_an_epoch_between_saves_writes_no_last_checkpoint(tmp_path, monkeypatch):
    saved = []
    real_save = train_module.save_checkpoint
    monkeypatch.setattr(train_module, "save_checkpoint",
                        lambda path, *a, **k: saved.append((path.name, k["epoch"])) or real_save(path, *a, **k))
    train_module.train(tiny_config(tmp_path, method="joint", epochs=3, save_every=2), progress=False)
    assert [e for name, e in saved if name == "last.pt"] == [2, 3]


def test_paced_saving_keeps_writes_to_a_twentieth_of_the_training_time():
    pacing = train_module.SavePacing(0)
    written = []
    for epoch in range(1, 11):  # an H100 at the paper's width: 6.3 s epochs, 0.92 s writes
        if pacing.due(epoch, 10, 6.3):
            written.append(epoch)
            pacing.written(0.92)
    assert written == [1, 4, 7, 10]  # the first write measures; then every 3 epochs (18.9 s >= 20 x 0.92 s)
    slow = train_module.SavePacing(0)
    slow.written(0.05)
    assert all(slow.due(e, 8, 20.0) for e in range(1, 9))  # CPU epochs dwarf a write: every epoch
    assert [e for e in range(1, 8) if train_module.SavePacing(3).due(e, 7, 1e-3)] == [3, 6, 7]


def test_duplicate_grouping_sees_ct_slices_through_the_runs_window(window_twins_site, tmp_path):
    """--group-duplicates compares CT slices as this run's training reads them: through its --window."""
    from crosssite.data.splits import make_splits

    def splits(window):
        config = TrainConfig(sites=[f"ct={window_twins_site}"], group_duplicates=0.95, window=window, image_size=32)
        return train_module.prepare_data(config, tmp_path, resume=False, progress=False)

    bone = splits([2000.0, 1000.0])
    assert bone.splits == make_splits(bone.sites, "fold", 0, 4, 0, 0.95, window=(2000.0, 1000.0))
    assert bone.splits != splits([1500.0, -600.0]).splits
