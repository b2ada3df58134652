"""What a model decides with, per site: its calibration map, operating point and OOD threshold.

All three are fitted on labelled images the model was not trained on, never on test images: at the end
of training on each site's validation part (`fit_run`, called once by the trainer), or later with
`crosssite calibrate` (crosssite.calibrate: a different operating-point rule, an older checkpoint, or a site added by
`crosssite adapt` together with a small labelled set of that site). They are stored in the checkpoint
under DECISIONS_KEY, {site: {"calibration", "operating_point", "ood"}}, and copied into each export's
metadata; a checkpoint or site without them predicts uncalibrated at 0.5 with no OOD flag, and says so.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np

from . import calibration, distributed, ood, run_folder
from .checkpoint import load_checkpoint, load_trained, rewrite_checkpoint
from .config import EVAL_BATCH_SIZE
from .data.sites import LABEL_NAMES
from .inference import predict_proba
from .inputs import result_rows
from .io import atomic_write_json
from .operating_point import DEFAULT_RULE, DEFAULT_SENSITIVITY, FALLBACK, choose, rates
from .scans import AGGREGATE, TOP_K, level_groups

DECISIONS_KEY = "decisions"
#: where calibration and the operating point are measured: each image (slice), each scan, each patient
LEVELS = ("image", "scan", "patient")
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
    `checkpoint` and in run_folder.DECISIONS beside it (the trainer calls this on best.pt before testing it);
    return the decisions."""
    decisions = fit_validation(load_trained(checkpoint, device), data, batch_size, rule, sensitivity)
    if distributed.is_main():
        store(checkpoint, decisions)
        # beside it as JSON too: a sweep's report reads it where the job's checkpoint is not kept
        atomic_write_json(Path(checkpoint).parent / run_folder.DECISIONS, decisions)
    distributed.barrier()
    return decisions


def fit_validation(trained, data, batch_size: int = EVAL_BATCH_SIZE, rule: str = DEFAULT_RULE,
                   sensitivity: float = DEFAULT_SENSITIVITY) -> dict:
    """Every site of `data` (a RunData) fitted on its validation part, predicted with its own batch norms."""
    return {name: fit_site(trained.method, trained.site_index(name), data.cache.eval_batch(data.paths(name, "val")),
                           data.labels(name, "val"), "validation part of the run's split", batch_size, rule, sensitivity)
            for name in data.site_names}


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


def calibrated_rows(rows: list[dict], decision_of: dict[str, dict]) -> list[dict]:
    """Prediction rows (site, label, p_covid, ...) with p_covid through their site's calibration map."""
    out = []
    for site in dict.fromkeys(r["site"] for r in rows):
        mine = [r for r in rows if r["site"] == site]
        probs = calibration.apply(decision_of[site]["calibration"], [float(r["p_covid"]) for r in mine])
        out += [{**r, "p_covid": float(p)} for r, p in zip(mine, probs)]
    return out


def assess(rows: list[dict], decision_of: dict[str, dict], how: str = AGGREGATE, top_k: int = TOP_K) -> dict:
    """Per level (image, scan, patient) and site: ECE and reliability bins before and after calibration,
    and sensitivity / specificity at the site's operating point (after). `rows` hold raw P(COVID)."""
    after_rows = calibrated_rows(rows, decision_of)
    result = {"binning": calibration.describe_binning(), "levels": {}}
    for level in LEVELS:
        before, after = (_level_groups(r, level, how, top_k) for r in (rows, after_rows))
        result["levels"][level] = {
            site: {
                "n": len(groups),
                "calibrated": decision_of[site]["calibration"] is not None,
                "ece_before": calibration.ece(*_labels_probs(groups)),
                "ece_after": calibration.ece(*_labels_probs(after[site])),
                "reliability_before": calibration.reliability(*_labels_probs(groups)),
                "reliability_after": calibration.reliability(*_labels_probs(after[site])),
                "threshold": decision_of[site]["operating_point"]["threshold"],
                **rates(*_labels_probs(after[site]), decision_of[site]["operating_point"]["threshold"]),
            }
            for site, groups in before.items()
        }
    return result


def _level_groups(rows: list[dict], level: str, how: str, top_k: int) -> dict[str, list[dict]]:
    if level != "image":
        return level_groups(rows, level, how, top_k)
    by_site: dict[str, list[dict]] = {}
    for r in rows:
        by_site.setdefault(r["site"], []).append(r)
    return by_site


def _labels_probs(groups: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([int(g["label"]) for g in groups], dtype=int),
            np.array([float(g["p_covid"]) for g in groups], dtype=np.float64))


def ood_rates(trained, images_of: dict[str, np.ndarray], batch_size: int = EVAL_BATCH_SIZE) -> dict | None:
    """Per site (its images, uint8 eval batch): the share of images flagged OOD against every site of
    the model. None where a site of the model has no OOD threshold (or no site-specific batch norm)."""
    thresholds = [(for_site(trained.payload, s)["ood"] or {}).get("threshold") for s in trained.site_names]
    if not trained.method.site_batch_norms(0) or any(t is None for t in thresholds):
        return None
    result = {}
    for site, images in images_of.items():
        flagged = ood.flags(ood.image_distances(trained.method, images, batch_size), thresholds)
        result[site] = {"flagged": int(flagged.sum()), "n": int(len(flagged)),
                        "rate": float(flagged.mean()) if len(flagged) else float("nan")}
    return result



def decide_rows(inputs, raw_probs, decision: dict, distances=None, ood_thresholds=None, how: str = AGGREGATE,
                top_k: int = TOP_K, extra: dict | None = None, threshold: float | None = None) -> list[dict]:
    """predict's rows (crosssite.inputs.result_rows) from the raw P(COVID) of every image / slice, decided
    with the predicting site's `decision`: P(COVID) calibrated (the raw one kept as p_uncalibrated), the
    label at its operating point (or at `threshold`, given), and, where `distances` (N, sites) and every
    site's OOD threshold are known, the OOD flag of each image, slice and scan (crosssite.ood)."""
    raw = np.asarray(raw_probs, dtype=np.float64)
    probs = calibration.apply(decision["calibration"], raw)
    cut = decision["operating_point"]["threshold"] if threshold is None else float(threshold)
    flagged = ood.flags(distances, ood_thresholds or [])
    rows = result_rows(inputs, probs, how, top_k, extra)
    first = 0
    for row, (scan, paths) in zip(rows, inputs, strict=True):
        members = row["slices"] if scan is not None else [row]
        for k, member in enumerate(members):
            member.update(p_uncalibrated=float(raw[first + k]), label=LABEL_NAMES[int(member["p_covid"] >= cut)],
                          ood=None if flagged is None else bool(flagged[first + k]))
        row["label"] = LABEL_NAMES[int(row["p_covid"] >= cut)]
        if scan is not None:
            row["ood"] = None if flagged is None else bool(ood.flags(
                ood.scan_distances(distances[first:first + len(paths)])[None], ood_thresholds)[0])
        row.update(threshold=cut, operating_point=decision["operating_point"]["rule"] if threshold is None
                   else f"--threshold {threshold:g}", calibration=describe_calibration(decision))
        first += len(paths)
    return rows

