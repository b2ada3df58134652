"""Flower as the transport: core messages through Flower's records, and the ClientApp's handlers."""

import importlib
import sys

import pytest
import torch

from crosssite.errors import CrossSiteError
from crosssite.federated.messages import EvaluateIns, EvaluateRes, FitIns, FitRes


def test_without_the_fed_extra_one_line_names_it(monkeypatch):
    for name in ("flwr", "flwr.app", "flwr.clientapp", "flwr.serverapp"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as where Flower is not installed
    monkeypatch.delitem(sys.modules, "crosssite.federated.flower", raising=False)
    with pytest.raises(CrossSiteError, match=r"needs the \[fed\] extra \(pip install 'crosssite\[fed\]'\)") as e:
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
