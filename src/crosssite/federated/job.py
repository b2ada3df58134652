"""A sweep job that runs a federation instead of `train` (the rows fedavg, fedbn, fed-contrastive of crosssite.paper).

The budget matches the centralised job of the same row settings image for image. A centralised epoch lasts
until the larger site has been seen once: ceil(N_max / batch) steps of `batch_per_site` images from every
site, the smaller site repeated (crosssite.data.sampling). So the federation runs `epochs` rounds of exactly
that many local steps at every site (`steps_per_round`): each site sees epochs x ceil(N_max / batch) x batch
images, as centralised, and the larger site one pass over its images per round. The learning rate follows
the same cosine over rounds as over epochs; averaging is weighted by training images (FedAvg). A row's
`rounds_per_epoch` k splits each epoch's steps over k rounds (ceil(steps / k) each): the same images, averaged
k times as often.

The job folder is the federation's OUT (config.yaml, federation.yaml, federation_log.jsonl, summary.json,
one run folder per site) and, so that the sweep and the report read it as they read a centralised job:
  metrics.json           each site's test metrics and tail AUCs (from OUT/SITE/metrics.json); written last
  predictions.csv        the sites' predictions.csv rows together (each row names its site)
  tail_predictions.csv   likewise
  communication.jsonl    one line per message with tensors: kind, round, site, bytes down (to the site) and
                         up (from it); a resumed job adds what it sends again, as a real network would carry it
"""

from __future__ import annotations

import math
from pathlib import Path

from .. import distributed, run_folder
from ..config import TrainConfig
from ..data.sites import load_sites
from ..data.splits import make_splits
from ..io import append_jsonl, read_jsonl
from .local import federate
from .messages import EvaluateIns, FitIns
from .settings import FedSettings

COMMUNICATION = "communication.jsonl"


def matched_settings(config: TrainConfig, rounds_per_epoch: int = 1) -> FedSettings:
    """The federation whose every site sees as many training images as in `config`'s centralised run:
    `rounds_per_epoch` rounds per centralised epoch, each of that share of its steps (rounded up)."""
    sites = load_sites(Path(config.data) if config.data else None, config.sites, config.slices)
    splits = make_splits(sites, config.split, config.fold, config.folds, config.seed, config.group_duplicates,
                         config.window)
    epoch_steps = math.ceil(max(len(parts["train"]) for parts in splits.values()) / config.batch_per_site)
    return FedSettings(rounds=config.epochs * rounds_per_epoch, epochs_per_round=1,
                       steps_per_round=math.ceil(epoch_steps / rounds_per_epoch))


def message_bytes(message) -> int:
    return sum(t.numel() * t.element_size() for t in message.tensors().values())


class CountedTransport:
    """A transport that writes the size of every message's tensors to communication.jsonl as it passes."""

    def __init__(self, inner, path: Path):
        self.inner, self.path, self.sites = inner, Path(path), inner.sites

    def fit(self, instructions: dict[str, FitIns]):
        replies = self.inner.fit(instructions)
        up = {r.site: message_bytes(r) for r in replies}
        for site, ins in instructions.items():
            append_jsonl(self.path, {"kind": "fit", "round": ins.round, "site": site, "down": message_bytes(ins),
                                     "up": up.get(site, 0)})
        return replies

    def evaluate(self, instructions: dict[str, EvaluateIns]):
        replies = self.inner.evaluate(instructions)  # the replies are metrics only: no tensor
        for site, ins in instructions.items():
            append_jsonl(self.path, {"kind": "evaluate", "round": ins.round, "site": site,
                                     "down": message_bytes(ins), "up": 0})
        return replies

    def finish(self, sites: list[str]):
        return self.inner.finish(sites)  # no tensor either way


def communication(folder: Path) -> dict[str, dict[str, int]]:
    """Per site, the bytes of tensors sent to it (down) and from it (up) over the job."""
    totals: dict[str, dict[str, int]] = {}
    path = Path(folder) / COMMUNICATION
    for line in read_jsonl(path) if path.exists() else []:
        site = totals.setdefault(line["site"], {"down": 0, "up": 0})
        site["down"] += line["down"]
        site["up"] += line["up"]
    return totals


def _joined_rows(out: Path, sites: list[str], name: str) -> list[dict]:
    return [row for site in sites if (out / site / name).exists()
            for row in run_folder.read_predictions(out / site / name)]


def run_federated_job(config: TrainConfig, device: str, rounds_per_epoch: int = 1) -> dict:
    """Run (or resume) the federation of `config` at the matched budget; return the job's metrics.json."""
    out = Path(config.out)
    settings = matched_settings(config, rounds_per_epoch)
    summary = federate(config, settings, resume=True, progress=False, device=str(distributed.device(device)),
                       transport=lambda inner: CountedTransport(inner, out / COMMUNICATION))
    sites = list(summary["sites"])
    per_site = {site: run_folder.read_metrics(out / site) for site in sites}
    for name in (run_folder.PREDICTIONS, run_folder.TAIL_PREDICTIONS):
        run_folder.write_predictions(out / name, _joined_rows(out, sites, name))
    metrics = {
        "method": config.method, "fold": config.fold, "seed": config.seed,
        "federation": settings.to_dict(),
        "best_epoch": {site: m["best_epoch"] for site, m in per_site.items()},  # each site picks its own round
        "sites": {site: m["sites"][site] for site, m in per_site.items()},
        "tail_auc": {site: m["tail_auc"].get(site, {}) for site, m in per_site.items()},
        "communication": communication(out),
    }
    run_folder.write_metrics(out, metrics)  # last: it marks the job finished
    return metrics
