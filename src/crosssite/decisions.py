"""What a model decides with, per site: its calibration map, operating point and OOD threshold.

All three are fitted on labelled images the model was not trained on, never on test images: at the end
of training on each site's validation part (`fit_run`, called once by the trainer), or later with
`crosssite calibrate` (a different operating-point rule, an older checkpoint, or a site added by
`crosssite adapt` together with a small labelled set of that site). They are stored in the checkpoint
under DECISIONS_KEY, {site: {"calibration", "operating_point", "ood"}}, and copied into each export's
metadata; a checkpoint or site without them predicts uncalibrated at 0.5 with no OOD flag, and says so.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np

from . import calibration, distributed, ood
from .checkpoint import load_checkpoint, load_trained, rewrite_checkpoint
from .config import EVAL_BATCH_SIZE
from .errors import CrossSiteError
from .inference import predict_proba
from .operating_point import DEFAULT_RULE, DEFAULT_SENSITIVITY, FALLBACK, choose

DECISIONS_KEY = "decisions"
UNCALIBRATED = "uncalibrated (no calibration map for this site: fit one with crosssite calibrate)"


def fit_site(method, index: int, images: np.ndarray, labels: np.ndarray, source: str,
             batch_size: int = EVAL_BATCH_SIZE, rule: str = DEFAULT_RULE,
             sensitivity: float = DEFAULT_SENSITIVITY) -> dict:
    """One site's decisions from labelled images of it (uint8 eval batch) predicted with site `index`."""
    raw = predict_proba(method, images, index, batch_size)
    fitted = calibration.fit_platt(labels, raw)
    record = {
        "fit_on": source,
        "calibration": fitted,
        "operating_point": choose(labels, calibration.apply(fitted, raw), rule, sensitivity),
        "ood": None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if method.site_batch_norms(index):
        record["ood"] = ood.threshold(ood.image_distances(method, images, batch_size, [index])[:, 0])
    return record


def fit_run(checkpoint: Path, data, batch_size: int = EVAL_BATCH_SIZE, device: str = "auto",
            rule: str = DEFAULT_RULE, sensitivity: float = DEFAULT_SENSITIVITY) -> dict:
    """Fit every site of a run (crosssite.evaluate.RunData) on its validation part and store the result in
    `checkpoint` (the trainer calls this on best.pt before testing it); return the decisions."""
    trained = load_trained(checkpoint, device)
    decisions = {
        name: fit_site(trained.method, trained.site_index(name), data.cache.eval_batch(data.paths(name, "val")),
                       data.labels(name, "val"), "validation part of the run's split", batch_size, rule, sensitivity)
        for name in data.site_names
    }
    if distributed.is_main():
        store(checkpoint, decisions)
    distributed.barrier()
    return decisions


def store(checkpoint: Path, decisions: dict, out: Path | None = None) -> None:
    """Write `checkpoint` (or a copy at `out`) with these sites' decisions added or replaced."""
    payload = load_checkpoint(checkpoint)
    payload[DECISIONS_KEY] = {**payload.get(DECISIONS_KEY, {}), **decisions}
    rewrite_checkpoint(Path(out or checkpoint), payload)


def for_site(payload_or_metadata: dict, site: str) -> dict:
    """A site's decisions from a checkpoint payload or export metadata, with the defaults where none were fitted."""
    found = (payload_or_metadata.get(DECISIONS_KEY) or {}).get(site)
    return found or {"calibration": None, "operating_point": {"rule": f"{FALLBACK} (not fitted)",
                                                              "threshold": FALLBACK}, "ood": None}


def describe_calibration(decision: dict) -> str:
    fitted = decision["calibration"]
    if fitted is None:
        return UNCALIBRATED
    return f"Platt map fitted on {fitted['n']} images ({decision.get('fit_on', 'validation')})"
