"""Flower (the [fed] extra) as the transport of crosssite's federated core: a ClientApp and a ServerApp.

The core does the work (`site.SiteTrainer`, `coordinator.run_federation`); this module only turns its
messages (crosssite.federated.messages) into Flower Messages and back. A SuperNode serves one site: its
node config names the site's folder and run folder (`--node-config "site='NAME' path='FOLDER' out='DIR'"`),
and the ClientApp builds that site's `SiteTrainer` from the run config's training settings. Every process
crosssite starts sets FLWR_TELEMETRY_ENABLED=0 and FLWR_DISABLE_UPDATE_CHECK=1 (Flower phones home otherwise).
"""

from __future__ import annotations

import math
import numbers
import os

from ..errors import require_extra

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
require_extra("flwr", "federated training over Flower", "fed")
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402

from pathlib import Path

from .messages import EvaluateIns, EvaluateRes, FitIns, FitRes

#: the kind of a message, beside Flower's type (train / evaluate): evaluate and finish share `evaluate`
KIND = "kind"
#: prefix of the test metrics that the last round's validation reply carries besides its own
TESTED = "test/"


def _packed(name: str, tensors: dict) -> dict:
    """Named tensors as RecordDict entries: `name`, an ArrayRecord of one flat array per dtype, and
    `name_layout`, a ConfigRecord of their names, shapes and dtypes. Flower moves every array as objects of
    its own (one request each between ClientApp, SuperNode, SuperLink and ServerApp); a state dict of ~180
    tensors packed this way travels as 2 or 3 arrays, which is most of a deployed round's transport cost."""
    if not tensors:
        return {name: ArrayRecord()}
    import torch

    dtypes = [str(v.dtype).removeprefix("torch.") for v in tensors.values()]
    flat = {d: torch.cat([v.detach().reshape(-1) for v, dv in zip(tensors.values(), dtypes) if dv == d])
            for d in sorted(set(dtypes))}
    layout = ConfigRecord({"keys": list(tensors), "dtypes": dtypes,
                           "shapes": [",".join(map(str, v.shape)) for v in tensors.values()]})
    return {name: ArrayRecord(torch_state_dict=flat), f"{name}_layout": layout}


def _unpacked(content: RecordDict, name: str) -> dict:
    if f"{name}_layout" not in content:
        return {}
    layout, flat = content[f"{name}_layout"], content[name].to_torch_state_dict()
    taken = dict.fromkeys(flat, 0)
    tensors = {}
    for key, dtype, shape in zip(layout["keys"], layout["dtypes"], layout["shapes"]):
        size = [int(n) for n in shape.split(",")] if shape else []
        count = math.prod(size)
        tensors[key] = flat[dtype][taken[dtype]:taken[dtype] + count].reshape(size).clone()
        taken[dtype] += count
    return tensors


def encode(message) -> RecordDict:
    """A core message as Flower's RecordDict: tensors in ArrayRecords, numbers in MetricRecords, the rest in
    a ConfigRecord. The decoded message equals the encoded one (tests/federated/test_flower.py)."""
    if isinstance(message, FitIns):
        return RecordDict({**_packed("shared", message.shared), **_packed("peers", message.peers),
                           "config": ConfigRecord({KIND: "fit", "round": message.round})})
    if isinstance(message, EvaluateIns):
        return RecordDict({**_packed("shared", message.shared),
                           "config": ConfigRecord({KIND: "evaluate", "round": message.round})})
    if isinstance(message, FitRes):
        return RecordDict({**_packed("shared", message.shared), **_packed("extras", message.extras),
                           "stats": _metric_record(message.stats),
                           "config": ConfigRecord({KIND: "fit", "site": message.site, "round": message.round,
                                                   "num_examples": message.num_examples})})
    if isinstance(message, EvaluateRes):
        return RecordDict({"metrics": _metric_record(message.metrics),
                           "config": ConfigRecord({KIND: "evaluate", "site": message.site, "round": message.round})})
    raise TypeError(f"not a federated message: {type(message).__name__}")


def _metric_record(values: dict) -> MetricRecord:
    """Counts stay integers (a test part's n and confusion counts), everything else is a float."""
    return MetricRecord({k: int(v) if isinstance(v, numbers.Integral) else float(v) for k, v in values.items()})


def decode_instruction(content: RecordDict) -> FitIns | EvaluateIns | None:
    """FitIns or EvaluateIns; None for the finish instruction (evaluate without weights)."""
    config = content["config"]
    if config[KIND] == "fit":
        return FitIns(int(config["round"]), _unpacked(content, "shared"), _unpacked(content, "peers"))
    if config[KIND] == "evaluate":
        return EvaluateIns(int(config["round"]), _unpacked(content, "shared"))
    return None


def decode_reply(content: RecordDict) -> FitRes | EvaluateRes:
    config = content["config"]
    if config[KIND] == "fit":
        return FitRes(str(config["site"]), int(config["round"]), _unpacked(content, "shared"),
                      int(config["num_examples"]), dict(content["stats"]), _unpacked(content, "extras"))
    return EvaluateRes(str(config["site"]), int(config["round"]), dict(content["metrics"]))


def site_trainer(context: Context):
    """This SuperNode's site, built once per ClientApp process (it resumes from its folder's last.pt).
    Torch and the training code are imported here, not at the module's top: a message that needs no
    trainer (`who`) costs a ClientApp process no more than Flower's own start."""
    from ..config import TrainConfig
    from .settings import FedSettings
    from .site import SiteTrainer, site_config

    key = (context.run_id, context.node_config["out"])
    if _TRAINERS.get("key") != key:
        config = TrainConfig.from_dict(_settings(context.run_config, "train."), "run config")
        settings = FedSettings.from_dict(_settings(context.run_config, "fed."), "run config")
        node = context.node_config
        own = site_config(config, str(node["site"]), Path(str(node["path"])), Path(str(node["out"])))
        # a fresh process for every message: keep the decoded images in the site's folder between them
        _TRAINERS.update(key=key, trainer=SiteTrainer(own, settings, resume=True, keep_decoded=True))
    return _TRAINERS["trainer"]


_TRAINERS: dict = {}


def _settings(run_config, prefix: str) -> dict:
    import json

    return {k[len(prefix):]: json.loads(v) for k, v in run_config.items() if k.startswith(prefix)}


client_app = ClientApp()


@client_app.train()
def train(message: Message, context: Context) -> Message:
    return message.create_reply(encode(site_trainer(context).fit(decode_instruction(message.content))))


@client_app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    trainer = site_trainer(context)
    ins = decode_instruction(message.content)
    if ins is None:
        return message.create_reply(encode(trainer.finish()))
    reply = trainer.evaluate(ins)
    if ins.round == trainer.settings.rounds:  # the last round: its best.pt is final, test it now and spare a
        tested = trainer.finish().metrics     # finish message (a ClientApp process: torch, the site's images)
        reply = EvaluateRes(reply.site, reply.round, {**reply.metrics, **{TESTED + k: v for k, v in tested.items()}})
    return message.create_reply(encode(reply))


class FlowerTransport:
    """The coordinator's `Transport` over a Flower Grid: one message per site's node, replies in parallel.
    Flower starts a fresh ClientApp process per message, so the last round's validation replies bring
    the sites' test metrics along (`TESTED`), and `finish` asks only the sites that have not sent them."""

    def __init__(self, grid: Grid, timeout: float | None = None):
        self.grid, self.timeout = grid, timeout
        self.tested: dict[str, EvaluateRes] = {}
        nodes = list(grid.get_node_ids())
        probe = [Message(RecordDict({"config": ConfigRecord({KIND: "who"})}), n, MessageType.QUERY) for n in nodes]
        self.node_of = {str(r.content["config"]["site"]): r.metadata.src_node_id
                        for r in grid.send_and_receive(probe, timeout=timeout) if not r.has_error()}
        self.sites = sorted(self.node_of)

    def _send(self, kind: str, contents: dict[str, RecordDict]) -> list:
        if not contents:
            return []
        messages = [Message(content, self.node_of[site], kind) for site, content in contents.items()]
        return [decode_reply(r.content) for r in self.grid.send_and_receive(messages, timeout=self.timeout)
                if not r.has_error()]

    def fit(self, instructions: dict[str, FitIns]) -> list[FitRes]:
        return self._send(MessageType.TRAIN, {s: encode(i) for s, i in instructions.items()})

    def evaluate(self, instructions: dict[str, EvaluateIns]) -> list[EvaluateRes]:
        replies = self._send(MessageType.EVALUATE, {s: encode(i) for s, i in instructions.items()})
        for reply in replies:
            tested = {k[len(TESTED):]: reply.metrics.pop(k) for k in list(reply.metrics) if k.startswith(TESTED)}
            if tested:
                self.tested[reply.site] = EvaluateRes(reply.site, reply.round, tested)
        return replies

    def finish(self, sites: list[str]) -> list[EvaluateRes]:
        finish = RecordDict({"config": ConfigRecord({KIND: "finish"})})
        asked = self._send(MessageType.EVALUATE, {s: finish for s in sites if s not in self.tested})
        return [self.tested[s] for s in sites if s in self.tested] + asked


@client_app.query()
def who(message: Message, context: Context) -> Message:
    return message.create_reply(RecordDict({"config": ConfigRecord({"site": str(context.node_config["site"])})}))


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """The coordinator: OUT from the run config (`out`), settings from `train.*` / `fed.*` (JSON values)."""
    from ..config import TrainConfig
    from .coordinator import Coordinator, run_federation
    from .local import prepare_federation
    from .settings import FedSettings
    from .site import build_method
    from .state import shared_state

    config = TrainConfig.from_dict(_settings(context.run_config, "train."), "run config")
    settings = FedSettings.from_dict(_settings(context.run_config, "fed."), "run config")
    config = config.replace(out=str(context.run_config["out"]))
    prepare_federation(config, settings, resume=True)  # a new OUT starts, an existing one continues
    transport = FlowerTransport(grid)
    coordinator = Coordinator(Path(config.out), settings, shared_state(build_method(config)), transport.sites)
    run_federation(coordinator, transport)
