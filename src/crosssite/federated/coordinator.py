"""The coordinator: rounds, averaging, the federation log and summary; it holds no image and no site state.

Folder (the federation's OUT, beside each site's OUT/SITE when they run on one machine):
  config.yaml, federation.yaml   the training and the federation settings
  server.pt                      the global shared state after the last averaged round, which sites took
                                 part and their class means (contrastive): what a killed coordinator resumes from
  federation_log.jsonl           one line per round: the sites that took part, their averaging weights, their
                                 round losses and validation AUC; `seconds`: the fit messages' wall time
                                 (sites' local training, `fit.SITE.seconds`, included), `average_seconds`: averaging
                                 and writing server.pt
  summary.json                   each site's test metrics of its best.pt and confusion counts (sent by the
                                 site), their mean over sites, and the pooled metrics of all sites' test
                                 images from the summed counts (no AUC: that needs the images' scores)
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..errors import CrossSiteError
from ..io import append_jsonl, atomic_write, atomic_write_json, atomic_write_text, read_jsonl
from ..metrics import COUNTS, metrics_from_counts
from .messages import EvaluateIns, EvaluateRes, FitIns, FitRes
from .settings import FedSettings
from .state import State, average, for_transfer


class Transport(Protocol):
    """How the coordinator's messages reach the sites (`local`: calls in this process; `flower`: Flower).
    Each call sends one message per named site and returns the replies that came back; a site that did
    not reply is missing from the list."""

    sites: list[str]

    def fit(self, instructions: dict[str, FitIns]) -> list[FitRes]: ...

    def evaluate(self, instructions: dict[str, EvaluateIns]) -> list[EvaluateRes]: ...

    def finish(self, sites: list[str]) -> list[EvaluateRes]: ...


class Coordinator:
    def __init__(self, out: Path, settings: FedSettings, initial: State, site_names: list[str]):
        self.out, self.settings, self.site_names = Path(out), settings, list(site_names)
        self.round, self.shared, self.took_part = 0, initial, list(site_names)
        self.extras: dict[str, dict[str, torch.Tensor]] = {}
        if (self.out / "server.pt").exists():
            saved = torch.load(self.out / "server.pt", map_location="cpu", weights_only=True)
            self.round, self.shared, self.took_part = int(saved["round"]), saved["shared"], saved["took_part"]
            self.extras = saved["extras"]
        log = self.out / "federation_log.jsonl"
        if log.exists():
            kept = [r for r in read_jsonl(log) if r["round"] <= self.round]
            atomic_write_text(log, "".join(json.dumps(r) + "\n" for r in kept))
        self.logged = self.round if log.exists() and any(r["round"] == self.round for r in read_jsonl(log)) else 0

    def fit_instructions(self, sites: list[str]) -> dict[str, FitIns]:
        """Round `round + 1` for each site: the global state, and every other site's class means."""
        return {s: FitIns(self.round + 1, self.sent(),
                          {f"{other}/{k}": v for other, extras in self.extras.items() if other != s
                           for k, v in extras.items()}) for s in sites}

    def sent(self) -> State:
        """The global shared state as the messages carry it (settings.transfer)."""
        return for_transfer(self.shared, self.settings.transfer)

    def aggregate(self, results: list[FitRes], seconds: float) -> None:
        """Average the replies of round `round + 1` into the global state and save it (server.pt)."""
        needed = self.settings.min_sites or len(self.site_names)
        if len(results) < needed:
            came = ", ".join(r.site for r in results) or "none"
            raise CrossSiteError(f"{self.out}: round {self.round + 1}: {len(results)} of {len(self.site_names)} "
                                 f"sites replied ({came}), fewer than min_sites {needed}; rerun with --resume")
        started = time.time()
        results = sorted(results, key=lambda r: r.site)  # the same sum, whichever site answered first
        weights = [float(r.num_examples) if self.settings.weighting == "images" else 1.0 for r in results]
        self.shared = average([r.shared for r in results], weights)  # float32, whatever the messages carried
        self.extras = {r.site: r.extras for r in results if r.extras}
        self.round += 1
        self.took_part = [r.site for r in results]
        self.weights = dict(zip(self.took_part, weights))
        self.fit_stats = {r.site: r.stats for r in results}
        self.seconds = seconds
        payload = {"round": self.round, "shared": self.shared, "took_part": self.took_part, "extras": self.extras}
        atomic_write(self.out / "server.pt", lambda tmp: torch.save(payload, tmp))
        self.average_seconds = round(time.time() - started, 3)

    def close_round(self, validation: list[EvaluateRes]) -> None:
        """The round's line in federation_log.jsonl (once the sites have validated its averaged state)."""
        record = {"round": self.round, "took_part": self.took_part,
                  "missing": [s for s in self.site_names if s not in self.took_part],
                  "weights": getattr(self, "weights", None), "fit": getattr(self, "fit_stats", None),
                  "val_auc": {r.site: r.metrics["val_auc"] for r in validation},
                  "seconds": getattr(self, "seconds", None), "average_seconds": getattr(self, "average_seconds", None)}
        append_jsonl(self.out / "federation_log.jsonl", record)
        self.logged = self.round

    def summarize(self, tested: list[EvaluateRes]) -> dict:
        """summary.json: each site's test metrics (sent by the site), the mean of each over the sites, and
        `pooled`: accuracy, F1, recall, precision, specificity and n of all sites' test images together."""
        sites = {r.site: r.metrics for r in tested}
        keys = sorted(set.intersection(*(set(m) for m in sites.values())) - set(COUNTS)) if sites else []
        mean = {k: float(np.nanmean([m[k] for m in sites.values()])) if any(not math.isnan(m[k]) for m in sites.values())
                else math.nan for k in keys}
        pooled = metrics_from_counts({k: sum(m[k] for m in sites.values()) for k in COUNTS}) if sites else {}
        summary = {"rounds": self.round, "settings": self.settings.to_dict(), "sites": sites, "mean_over_sites": mean,
                   "pooled": pooled}
        atomic_write_json(self.out / "summary.json", summary)
        return summary


def run_federation(coordinator: Coordinator, transport: Transport) -> dict:
    """Every round from the coordinator's last finished one: fit, average, validate; then each site's test."""
    if coordinator.round and coordinator.logged < coordinator.round:  # killed before the sites validated it
        coordinator.close_round(transport.evaluate(
            {s: EvaluateIns(coordinator.round, coordinator.sent()) for s in coordinator.took_part}))
    while coordinator.round < coordinator.settings.rounds:
        started = time.time()
        results = transport.fit(coordinator.fit_instructions(transport.sites))
        coordinator.aggregate(results, round(time.time() - started, 2))
        coordinator.close_round(transport.evaluate(
            {s: EvaluateIns(coordinator.round, coordinator.sent()) for s in coordinator.took_part}))
    return coordinator.summarize(transport.finish(transport.sites))
