"""Per-scan and per-patient decisions from per-slice P(COVID), and their metrics.

The clinical decision is made per scan (or per patient), not per slice: a scan's P(COVID) aggregates its
slices' -- by default the mean of its TOP_K most suspicious slices, which a few affected slices can
raise (the mean of all dilutes them) but one noisy slice cannot decide alone (as the max can).
A patient's P(COVID) aggregates all slices of the patient's scans or images in the same way.

`level_metrics(rows)` takes prediction rows as `evaluate` makes them and a run's predictions.csv holds
(site, path, label, p_covid and, where known, patient), so a report can call it on that file's rows.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from .data.volumes import scan_of
from .errors import CrossSiteError
from .metrics import site_metrics

AGGREGATES = ("topk", "max", "mean")
#: the default aggregation and its k (why: the module docstring)
AGGREGATE = "topk"
TOP_K = 5


def aggregate(probs, how: str = AGGREGATE, top_k: int = TOP_K) -> float:
    """One P(COVID) from the slices' P(COVID): mean of the top_k largest (all if fewer), max or mean."""
    probs = np.sort(np.asarray(probs, dtype=np.float64))
    if probs.size == 0:
        raise ValueError("no slice probabilities to aggregate")
    if how == "topk":
        if top_k < 1:
            raise CrossSiteError(f"--top-k must be at least 1, got {top_k}")
        return float(probs[-top_k:].mean())
    if how == "max":
        return float(probs[-1])
    if how == "mean":
        return float(probs.mean())
    raise CrossSiteError(f"unknown aggregate {how!r}; choose one of {', '.join(AGGREGATES)}")


def describe(how: str = AGGREGATE, top_k: int = TOP_K) -> str:
    return {"topk": f"mean of the top {top_k} slices", "max": "max over slices", "mean": "mean over slices"}[how]


def _key(row: dict, level: str) -> str | None:
    scan = scan_of(row["path"])
    if level == "scan":
        return scan
    return row.get("patient") or (f"scan:{scan}" if scan else f"image:{row['path']}")


def grouped(rows: list[dict], level: str, how: str = AGGREGATE, top_k: int = TOP_K) -> dict[str, list[dict]]:
    """Per site, one row per scan ('scan') or patient ('patient'): key, label, p_covid, slices.

    A group's label is COVID if any of its rows is (a scan has one label; a patient may have several).
    At scan level, rows that are not slices of a scan are left out.
    """
    groups: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        key = _key(row, level)
        if key is not None:
            groups[row["site"]][key].append(row)
    return {
        site: [{"key": key, "label": max(int(r["label"]) for r in members),
                "p_covid": aggregate([float(r["p_covid"]) for r in members], how, top_k), "slices": len(members)}
               for key, members in by_key.items()]
        for site, by_key in groups.items()
    }


def level_metrics(rows: list[dict], how: str = AGGREGATE, top_k: int = TOP_K) -> dict[str, dict[str, dict]]:
    """{"scan": {site: metrics}, "patient": {site: metrics}} (crosssite.metrics.site_metrics, n = groups).

    A site appears at scan level if it has scans, at patient level if any of its rows names a patient.
    """
    result: dict[str, dict[str, dict]] = {}
    for level in ("scan", "patient"):
        result[level] = {site: site_metrics(np.array([g["label"] for g in groups]),
                                            np.array([g["p_covid"] for g in groups]))
                         for site, groups in level_groups(rows, level, how, top_k).items()}
    return result


def level_groups(rows: list[dict], level: str, how: str = AGGREGATE, top_k: int = TOP_K) -> dict[str, list[dict]]:
    """`grouped` for the sites that have that level: scans where there are scans, patients where a row of
    the site names one."""
    with_patients = {r["site"] for r in rows if r.get("patient")}
    return grouped([r for r in rows if level == "scan" or r["site"] in with_patients], level, how, top_k)
