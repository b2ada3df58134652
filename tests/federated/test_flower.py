"""Flower as the transport: core messages through Flower's records, and the ClientApp's handlers."""

import importlib
import sys

import numpy as np
import pytest
import torch

from crosssite.data.sites import SAMPLE_DATA
from crosssite.errors import CrossSiteError
from crosssite.federated.messages import EvaluateIns, EvaluateRes, FitIns, FitRes

from conftest import TINY_TRAIN_FLAGS


def test_without_the_fed_extra_one_line_names_it(monkeypatch):
    for name in ("flwr", "flwr.app", "flwr.clientapp", "flwr.serverapp"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as where Flower is not installed
    monkeypatch.delitem(sys.modules, "crosssite.federated.flower", raising=False)
    with pytest.raises(CrossSiteError, match=r"needs the \[fed\] extra: pip install 'crosssite\[fed\]'") as e:
        importlib.import_module("crosssite.federated.flower")
    assert "\n" not in str(e.value)


def test_every_message_survives_flowers_records():
    pytest.importorskip("flwr", reason="the Flower transport needs the [fed] extra")
    from crosssite.federated.flower import decode_instruction, decode_reply, encode

    shared = {"net.a.weight": torch.randn(3, 2), "net.bn.num_batches_tracked": torch.tensor(4),
              "net.b.weight": torch.randn(5), "net.c.weight": torch.randn(2, 2).half()}
    peers = {"other/class_0": torch.randn(128), "other/class_1": torch.randn(128)}
    fit = decode_instruction(encode(FitIns(3, shared, peers)))
    assert fit.round == 3 and list(fit.shared) == list(shared)
    assert all(torch.equal(fit.shared[k], v) and fit.shared[k].dtype == v.dtype for k, v in shared.items())
    # one flat array per dtype travels, not one per tensor (Flower moves each array as objects of its own)
    assert sorted(encode(FitIns(3, shared, peers))["shared"]) == ["float16", "float32", "int64"]
    assert all(torch.equal(fit.peers[k], v) for k, v in peers.items())
    ev = decode_instruction(encode(EvaluateIns(2, shared)))
    assert isinstance(ev, EvaluateIns) and set(ev.shared) == set(shared)
    res = decode_reply(encode(FitRes("covid-ct", 3, shared, 96, {"loss": 0.5}, {"class_0": peers["other/class_0"]})))
    assert (res.site, res.round, res.num_examples, res.stats) == ("covid-ct", 3, 96, {"loss": 0.5})
    assert torch.equal(res.extras["class_0"], peers["other/class_0"])
    assert decode_reply(encode(EvaluateRes("covid-ct", 2, {"val_auc": 0.75}))) == EvaluateRes("covid-ct", 2, {"val_auc": 0.75})
    counted = decode_reply(encode(EvaluateRes("covid-ct", 8, {"auc": 0.5, "n": np.int64(40), "tp": 3})))
    assert counted.metrics == {"auc": 0.5, "n": 40, "tp": 3} and isinstance(counted.metrics["n"], int)  # as in-machine


@pytest.mark.parametrize("flag", ["--flower", "--flower-app"])
def test_a_flower_deployment_without_the_fed_extra_stops_with_one_line_naming_it(flag, monkeypatch, tmp_path, capsys):
    from crosssite.cli import main

    monkeypatch.setitem(sys.modules, "flwr", None)  # import fails as where Flower is not installed
    app = [str(tmp_path / "app")] if flag == "--flower-app" else []
    assert main(["federate", flag, *app, "--data", str(SAMPLE_DATA), "--out", str(tmp_path / "fed"), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert r"needs the [fed] extra: pip install 'crosssite[fed]'" in error and error.count("\n") == 1
    assert not (tmp_path / "fed").exists() and not (tmp_path / "app").exists()


def test_insecure_means_nothing_without_flower(tmp_path, capsys):
    from crosssite.cli import main

    assert main(["federate", "--insecure", "--data", str(SAMPLE_DATA), "--out", str(tmp_path / "fed")]) == 2
    assert "--insecure" in capsys.readouterr().err and not (tmp_path / "fed").exists()


def test_the_flower_app_carries_the_federation_settings_the_server_app_reads_back(tmp_path):
    """`crosssite federate --flower-app DIR` for a real coordinator: the ServerApp gets every training and
    federation setting from the app's run config, and no site's folder."""
    pytest.importorskip("flwr", reason="the Flower transport needs the [fed] extra")
    import tomllib

    from crosssite.cli import main
    from crosssite.config import TrainConfig
    from crosssite.federated.flower import _settings
    from crosssite.federated.settings import FedSettings

    out = tmp_path / "fed"
    assert main(["federate", "--flower-app", str(tmp_path / "app"), "--data", str(SAMPLE_DATA), "--out", str(out),
                 "--method", "contrastive", "--rounds", "3", "--steps-per-round", "5", "--transfer", "float16",
                 *TINY_TRAIN_FLAGS]) == 0
    app = tomllib.loads((tmp_path / "app" / "pyproject.toml").read_text())["tool"]["flwr"]
    assert app["app"]["components"]["serverapp"] == "crosssite.federated.flower:server_app"
    run = app["app"]["config"]
    config = TrainConfig.from_dict(_settings(run, "train."), "run config")
    settings = FedSettings.from_dict(_settings(run, "fed."), "run config")
    assert run["out"] == str(out) and not out.exists()  # written by the coordinator when it runs
    assert (config.method, config.image_size, config.data, config.sites, config.epochs) == ("contrastive", 32, None, [], 3)
    assert (settings.rounds, settings.steps_per_round, settings.transfer) == (3, 5, "float16")
