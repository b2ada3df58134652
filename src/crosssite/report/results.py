"""A sweep folder as the report reads it: sweep.yaml's plan, the last results.jsonl line of each job, and
each finished job's test predictions (predictions.csv of the chosen epoch, tail_predictions.csv of the last
epochs). Nothing here computes a statistic."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CrossSiteError
from ..run_folder import PREDICTIONS, TAIL_PREDICTIONS, read_predictions
from ..paper import ROW_BY_NAME, TABLE1_METRICS, Row, planned_names
from ..sweep import job_name, read_results, read_sweep_settings


@dataclass
class SweepResults:
    folder: Path
    settings: dict  # sweep.yaml
    rows: list[Row]
    planned: list[str]  # job names
    latest: dict[str, dict]  # job name -> its last results.jsonl record
    sites: list[str]

    def ok(self, row: str) -> list[dict]:
        """The row's finished jobs, ordered by (seed, fold)."""
        jobs = [r for r in self.latest.values() if r["row"] == row and r["status"] == "ok"]
        return sorted(jobs, key=lambda r: (r["seed"], r["fold"]))

    def table_rows(self) -> list[Row]:
        """The rows of the per-row tables: a duplicate-grouped row is left out where its row on ordinary
        folds ran too (the section on grouped folds sets the two side by side)."""
        names = {r.name for r in self.rows}
        return [r for r in self.rows if r.group != "grouped" or r.name.removesuffix("-grouped") not in names]

    def planned_for(self, row: str) -> list[str]:
        return [j for j in self.planned if j.startswith(f"{row}-fold")]


def load_results(folder: Path) -> SweepResults:
    folder = Path(folder)
    settings_file = folder / "sweep.yaml"
    if not settings_file.is_file():
        raise CrossSiteError(f"{folder}: not a sweep folder (no sweep.yaml; run `crosssite sweep --out {folder}`)")
    settings = read_sweep_settings(settings_file)
    unknown = [r for r in settings["rows"] if r not in ROW_BY_NAME]
    if unknown:
        raise CrossSiteError(f"{settings_file}: unknown row(s) {', '.join(unknown)}")
    rows = [ROW_BY_NAME[r] for r in settings["rows"]]
    row_seeds = settings.get("row_seeds", {})
    planned = [job_name(r.name, fold, seed) for r, fold, seed in planned_names(rows, settings["folds"], settings["seeds"], row_seeds)]
    latest = {r["job"]: r for r in read_results(folder / "results.jsonl")}
    for record in latest.values():
        _check_metrics(folder / "results.jsonl", record)
    sites = list(dict.fromkeys(s for r in latest.values() if r["status"] == "ok" for s in r["sites"]))
    if not sites:
        raise CrossSiteError(f"{folder / 'results.jsonl'}: no finished job to report on")
    return SweepResults(folder, settings, rows, planned, latest, sites)


def _check_metrics(path: Path, record: dict) -> None:
    """A finished job's line holds, for every site, each metric the tables read: a hand-edited line, or one
    from an older crosssite, may not, and would otherwise stop the report with a traceback."""
    if record["status"] != "ok":
        return
    for site, metrics in record["sites"].items():
        missing = [m for m in TABLE1_METRICS
                   if isinstance(metrics.get(m), bool) or not isinstance(metrics.get(m), (int, float))]
        if missing:
            raise CrossSiteError(f"{path}: job {record['job']}, site {site}: no {', '.join(map(repr, missing))} metric "
                                 f"(needed: {', '.join(TABLE1_METRICS)}); mend its line from the job's metrics.json "
                                 "or re-run the job")


def read_csv(path: Path) -> list[dict]:
    """A finished job's predictions.csv or tail_predictions.csv; missing is a damaged sweep folder."""
    if not path.is_file():
        raise CrossSiteError(f"{path}: missing, though results.jsonl records its job as finished")
    return read_predictions(path)


@dataclass
class SiteScores:
    """One job's test images of one site, in predictions.csv's order, and their P(COVID)."""

    labels: np.ndarray
    units: list[str]  # what a bootstrap resamples: the patient, or the image where the site has no ids
    best: np.ndarray  # scores of the validation-chosen epoch (best.pt)
    tail: list[np.ndarray]  # scores of the last k epochs, oldest first (empty without tail_predictions.csv)
    points: dict[str, float]  # epoch choice -> the job's recorded test AUC


def tail_auc(job: dict, site: str) -> float:
    """Mean test AUC of the job's last epochs (results.jsonl's `tail_auc`; NaN if not recorded)."""
    aucs = job.get("tail_auc", {}).get(site, {})
    return float(np.mean(list(aucs.values()))) if aucs else math.nan


def job_scores(res: SweepResults, job: dict) -> dict[str, SiteScores]:
    """Per site, the test scores of one finished job: the validation-chosen epoch's and, where
    tail_predictions.csv exists, the last k epochs'; `points` holds the AUCs results.jsonl records for the
    epoch choices "best_val", "final" and "last_k"."""
    folder = res.folder / job["folder"]
    best_rows = read_csv(folder / PREDICTIONS)
    tail_file = folder / TAIL_PREDICTIONS
    tail_rows = read_csv(tail_file) if tail_file.is_file() else []
    out = {}
    for site in res.sites:
        rows = [r for r in best_rows if r["site"] == site]
        if not rows:
            continue
        points = {"best_val": job["sites"][site]["auc"]}
        by_epoch = defaultdict(dict)
        for r in tail_rows:
            if r["site"] == site:
                by_epoch[int(r["epoch"])][r["path"]] = float(r["p_covid"])
        epochs = sorted(by_epoch)
        if epochs:
            recorded = job.get("tail_auc", {}).get(site, {})
            point = [recorded.get(str(e), math.nan) for e in epochs]
            points |= {"final": point[-1], "last_k": float(np.mean(point))}
        out[site] = SiteScores(
            labels=np.array([int(r["label"]) for r in rows]),
            units=[f"patient:{r['patient']}" if r.get("patient") else f"image:{r['path']}" for r in rows],
            best=np.array([float(r["p_covid"]) for r in rows]),
            tail=[np.array([by_epoch[e][r["path"]] for r in rows]) for e in epochs],
            points=points,
        )
    return out
