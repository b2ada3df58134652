"""Training curves as TensorBoard event files (`crosssite train --tensorboard`, `crosssite tensorboard`; extra
[tensorboard]).

A run folder's train_log.jsonl stays the record; its `tensorboard/` subfolder holds the same numbers as
events, so `tensorboard --logdir` on a run folder, or on a sweep folder (one run per job), shows them:
  train/<stat>            each logged training statistic, e.g. train/ce and train/contrastive, and train/lr
  val/mean_auc, val/<site>/<metric>   validation metrics per epoch
  time/seconds_per_epoch
  test/<site>/<metric>    test metrics of best.pt, at its epoch (once the run has finished)
  test_tail/<site>/auc    test AUC of each of the last `tail_epochs` epochs (the report's, never selected on)
Events are always written from train_log.jsonl as it stands: a resumed run (whose log was cut back to its
last.pt) writes them afresh, so TensorBoard never shows an epoch twice. Replayed epochs get approximate
wall times (the log keeps seconds per epoch, not clock times).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from . import distributed
from .errors import CrossSiteError, require_extra
from .io import read_jsonl

FOLDER = "tensorboard"  # in a run folder
NOT_STATISTICS = ("epoch", "lr", "val_mean_auc", "val", "best", "seconds")
COUNTS = ("n",)  # per-site entries that are sizes, not metrics


class EventLog:
    """The event files of one run folder, rewritten from its train_log.jsonl when opened."""

    def __init__(self, run: Path):
        require_extra("tensorboard", "TensorBoard events", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter
        self.run = Path(run)
        shutil.rmtree(self.run / FOLDER, ignore_errors=True)
        self.writer = SummaryWriter(str(self.run / FOLDER))
        log = self.run / "train_log.jsonl"
        records = read_jsonl(log) if log.exists() else []
        clock = (log.stat().st_mtime if log.exists() else time.time()) - sum(r.get("seconds", 0) for r in records)
        for record in records:
            clock += record.get("seconds", 0)
            self.add_epoch(record, clock)

    def add_epoch(self, record: dict, walltime: float | None = None) -> None:
        """One train_log.jsonl line."""
        step = record["epoch"]
        scalars = {f"train/{k}": v for k, v in record.items() if k not in NOT_STATISTICS}
        scalars["train/lr"] = record["lr"]
        scalars["val/mean_auc"] = record["val_mean_auc"]
        scalars.update(_per_site("val", record["val"]))
        scalars["time/seconds_per_epoch"] = record["seconds"]
        self._add(scalars, step, walltime)

    def add_test(self, metrics: dict) -> None:
        """metrics.json: the test metrics of best.pt at its epoch, and the test AUC of the tail epochs."""
        self._add(_per_site("test", metrics["sites"]), metrics["best_epoch"])
        for site, by_epoch in metrics.get("tail_auc", {}).items():
            for epoch, auc in by_epoch.items():
                self._add({f"test_tail/{site}/auc": auc}, int(epoch))

    def _add(self, scalars: dict, step: int, walltime: float | None = None) -> None:
        for tag, value in scalars.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(tag, value, step, walltime=walltime)

    def close(self) -> None:
        self.writer.close()


def _per_site(part: str, sites: dict) -> dict:
    return {f"{part}/{site}/{name}": value for site, metrics in sites.items()
            for name, value in metrics.items() if name not in COUNTS}


class NoEvents:
    """What train logs to without --tensorboard (and on the ranks but 0 under torchrun)."""

    def add_epoch(self, record: dict) -> None:
        pass

    def add_test(self, metrics: dict) -> None:
        pass

    def close(self) -> None:
        pass


def open_events(run: Path, enabled: bool) -> EventLog | NoEvents:
    """The event log `train` writes to as epochs end (its train_log.jsonl replayed first)."""
    return EventLog(run) if enabled and distributed.is_main() else NoEvents()


def run_folders(paths: list[Path]) -> list[Path]:
    """The run folders (holding train_log.jsonl) at or under each path; a path without one is an error."""
    found = []
    for path in map(Path, paths):
        runs = sorted(log.parent for log in path.rglob("train_log.jsonl")) if path.is_dir() else []
        if not runs:
            raise CrossSiteError(f"{path}: no run folder (train_log.jsonl) there or below")
        found += runs
    return found


def write_events(paths: list[Path]) -> list[Path]:
    """Event files for every run folder at or under `paths`, from train_log.jsonl and metrics.json."""
    runs = run_folders(paths)
    for run in runs:
        events = EventLog(run)
        if (run / "metrics.json").exists():
            try:
                events.add_test(json.loads((run / "metrics.json").read_text()))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                events.close()
                raise CrossSiteError(f"{run / 'metrics.json'}: damaged (not a crosssite metrics.json)") from None
        events.close()
    return runs
