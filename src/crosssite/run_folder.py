"""A run folder's files: their names, and reading and writing the ones several commands share.

`train` writes a run folder (--out); `evaluate`, `export`, `card`, `sweep` and `report` read it. The
names are declared here once and the shared files (predictions.csv, metrics.json, split.json) are read
and written only through this module, so a new column or file has one home.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .errors import CrossSiteError
from .io import atomic_write_csv, atomic_write_json

CONFIG = "config.yaml"  #: every setting of the run (crosssite.config.save_config / load_config)
SPLIT = "split.json"  #: the exact train / validation / test images of every site (crosssite.data.splits)
TRAIN_LOG = "train_log.jsonl"  #: one JSON line per epoch
LAST = "last.pt"  #: the resumable state
BEST = "best.pt"  #: the weights chosen on validation; the one tested
METRICS = "metrics.json"  #: test metrics of best.pt; written last, so it marks the run finished
PREDICTIONS = "predictions.csv"  #: one row per test image of best.pt
TAIL_PREDICTIONS = "tail_predictions.csv"  #: the same rows for each of the last epochs (column `epoch`)
DECISIONS = "decisions.json"  #: each site's calibration map, operating point, OOD threshold (crosssite.decisions)
#: the decoded images, kept between the processes of one federated site under Flower (DecodedCache.save); a
#: cache: deleting it costs one decoding
DECODED = "decoded.npz"

#: the files of a run folder: any of them means the folder holds a run, finished or not
FILES = (CONFIG, SPLIT, TRAIN_LOG, LAST, BEST, METRICS, PREDICTIONS, TAIL_PREDICTIONS, DECISIONS)
PREDICTION_FIELDS = ("site", "path", "patient", "label", "p_covid")


def write_predictions(path: Path, rows: list[dict]) -> None:
    """Prediction rows as CSV (columns: `epoch` first when the rows have one, then site, path, patient, label, P)."""
    atomic_write_csv(path, rows, (["epoch"] if rows and "epoch" in rows[0] else []) + list(PREDICTION_FIELDS))


def read_predictions(path: Path) -> list[dict]:
    """The rows of a predictions.csv (or tail_predictions.csv) as text, one dict per row."""
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:  # paths as the file system names them
        return list(csv.DictReader(f))


def write_metrics(folder: Path, metrics: dict) -> None:
    atomic_write_json(Path(folder) / METRICS, metrics)


def read_metrics(folder: Path) -> dict | None:
    """metrics.json of a finished run (it is written last), or None while the run is not finished."""
    path = Path(folder) / METRICS
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CrossSiteError(f"{path}: damaged (not JSON); the run's best.pt can be tested with crosssite evaluate") from None


def read_split_paths(path: Path) -> dict[str, dict[str, list[str]]]:
    """site -> part -> image paths of a split.json (or of the one in run folder `path`)."""
    path = Path(path)
    path = path / SPLIT if path.is_dir() else path
    try:
        sites = json.loads(path.read_text(encoding="utf-8"))["sites"]
        assert isinstance(sites, dict)
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as exc:
        raise CrossSiteError(f"{path}: not a crosssite split file ({type(exc).__name__}: {exc})") from None
    return sites
