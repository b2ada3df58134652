"""The report's numbers, computed from a loaded sweep: plain dicts, no text and no files.

Design the numbers follow: each seed of a sweep draws its own k-fold partition of every site (the split
is shuffled with the seed), so r seeds are r repetitions of k-fold cross-validation. Every image of a
site is tested once per repetition; two rows share the partition of a (fold, seed), so their jobs pair
by (fold, seed).
"""

from __future__ import annotations

import math
import zlib
from collections import defaultdict

import numpy as np

from ..data.splits import VAL_FOLDS
from ..paper import COMPARED_METRIC, ROW_BY_NAME, TABLE1_METRICS
from ..scans import level_metrics
from ..stats import (BOOTSTRAP_REPLICATES, fitted_test_train_ratio, paired_difference, percentile_interval,
                     repeated_cv_difference, weighted_auc)
from ..run_folder import PREDICTIONS
from .results import SiteScores, SweepResults, read_csv

#: which epoch's test AUC: the validation-chosen one (best.pt), the last one, the mean of the last k
EPOCH_CHOICES = {"best_val": "validation-chosen epoch", "final": "final epoch", "last_k": "mean of the last k epochs"}
#: the epoch choices whose paired differences are tested
TESTED_CHOICES = ("best_val", "last_k")


def table1(res: SweepResults) -> list[dict]:
    """One entry per (row, site, metric): mean and sample std (ddof=1) in %, and n jobs; `best` marks the
    best mean of its (site, metric) column."""
    entries = []
    for row in res.rows:
        jobs = res.ok(row.name)
        for site in res.sites:
            for metric in TABLE1_METRICS:
                values = [100 * j["sites"][site][metric] for j in jobs if site in j["sites"]]
                values = [v for v in values if not math.isnan(v)]
                entries.append({
                    "row": row.name, "method": row.display, "site": site, "metric": metric,
                    "mean": float(np.mean(values)) if values else math.nan,
                    "std": float(np.std(values, ddof=1)) if len(values) > 1 else math.nan,
                    "n": len(values),
                })
    best = defaultdict(lambda: -math.inf)
    for e in entries:
        if not math.isnan(e["mean"]):
            best[e["site"], e["metric"]] = max(best[e["site"], e["metric"]], round(e["mean"], 2))
    for e in entries:
        e["best"] = not math.isnan(e["mean"]) and round(e["mean"], 2) == best[e["site"], e["metric"]]
    return entries


# ---- test AUCs with a patient bootstrap shared by all jobs ------------------------------------------


def auc_replicates(res: SweepResults, scores: dict[str, dict[str, SiteScores]],
                   replicates: int = BOOTSTRAP_REPLICATES) -> dict[str, dict[tuple[str, str], tuple[float, np.ndarray]]]:
    """job -> (site, epoch choice) -> (recorded test AUC, its bootstrap replicates); `scores` maps job -> `job_scores`.

    One bootstrap draw of a site's patients (of its images where it has no ids) per replicate is shared by
    every job and row: a drawn patient weighs as often as drawn in each job whose test fold holds them. A
    row's mean over jobs, replicate by replicate, then resamples each patient once across all its
    repetitions, as the design tests each image once per repetition. It covers test sampling only, not
    the noise of training (initialisation, order of batches), nor which patients were trained on.
    """
    out = {job: {} for job in scores}
    for site in res.sites:
        units = sorted({u for by_site in scores.values() if site in by_site for u in by_site[site].units})
        index = {u: i for i, u in enumerate(units)}
        rng = np.random.default_rng(zlib.crc32(site.encode()))  # fixed per site: the same folder, the same bytes
        counts = rng.multinomial(len(units), np.full(len(units), 1 / len(units)), size=replicates)
        for job, by_site in scores.items():
            if site not in by_site:
                continue
            s = by_site[site]
            weights = counts[:, [index[u] for u in s.units]].astype(np.float64)
            out[job][site, "best_val"] = (s.points["best_val"], weighted_auc(s.labels, s.best, weights))
            if s.tail:
                per_epoch = [weighted_auc(s.labels, v, weights) for v in s.tail]
                out[job][site, "final"] = (s.points["final"], per_epoch[-1])
                out[job][site, "last_k"] = (s.points["last_k"], np.mean(per_epoch, axis=0))
    return out


def _row_replicates(res: SweepResults, row: str, site: str, choice: str, aucs: dict) -> np.ndarray:
    """Replicates of the row's mean test AUC (over its jobs), in %."""
    return 100 * np.nanmean([aucs[j["job"]][site, choice][1] for j in res.ok(row) if (site, choice) in aucs[j["job"]]],
                            axis=0)


def robust_auc(res: SweepResults, aucs: dict[str, dict]) -> list[dict]:
    """One entry per (row, site, epoch choice): mean, std over jobs and the 95 % bootstrap interval of the
    mean (`auc_replicates`), in %. Fewer than 2 jobs: no spread and no interval."""
    entries = []
    for row in res.rows:
        jobs = res.ok(row.name)
        for site in res.sites:
            for choice in EPOCH_CHOICES:
                values = [100 * aucs[j["job"]][site, choice][0] for j in jobs if (site, choice) in aucs[j["job"]]]
                values = [v for v in values if not math.isnan(v)]
                low = high = math.nan
                if len(values) > 1:
                    low, high = percentile_interval(_row_replicates(res, row.name, site, choice, aucs))
                entries.append({
                    "row": row.name, "method": row.display, "site": site, "epoch": choice, "n": len(values),
                    "mean": float(np.mean(values)) if values else math.nan,
                    "std": float(np.std(values, ddof=1)) if len(values) > 1 else math.nan,
                    "ci_low": low, "ci_high": high,
                })
    return entries


def patient_level(res: SweepResults) -> list[dict]:
    """Per (row, site with patient ids): mean and std over jobs of the patient-level test AUC, in %, where a
    patient's P(COVID) aggregates their slices (crosssite.scans, default aggregate)."""
    entries = []
    for row in res.rows:
        values = defaultdict(list)
        for job in res.ok(row.name):
            patients = level_metrics(read_csv(res.folder / job["folder"] / PREDICTIONS))["patient"]
            for site, metrics in patients.items():
                if not math.isnan(metrics["auc"]):
                    values[site].append((100 * metrics["auc"], metrics["n"]))
        for site, found in values.items():
            aucs = [v for v, _ in found]
            entries.append({"row": row.name, "method": row.display, "site": site, "n": len(aucs),
                            "patients": found[0][1], "mean": float(np.mean(aucs)),
                            "std": float(np.std(aucs, ddof=1)) if len(aucs) > 1 else math.nan})
    return entries


# ---- paired differences ------------------------------------------------------------------------


def design_ratio(res: SweepResults) -> float:
    """n_test/n_train of the sweep's design: the test fold over the part the weights were fitted on."""
    return fitted_test_train_ratio(res.settings["folds"], VAL_FOLDS)


def paired_differences(a: dict[tuple[int, int], float], b: dict[tuple[int, int], float], ratio: float) -> dict:
    """a - b over the (fold, seed) keys both have (NaN values left out): the corrected repeated k-fold
    t-test (`stats.repeated_cv_difference`), the number of repetitions (seeds) behind it, and the paper's
    naive ttest_rel over the same pairs (`t_naive_ttest_rel`, `p_naive_ttest_rel`)."""
    keys = [k for k in sorted(a.keys() & b.keys()) if not (math.isnan(a[k]) or math.isnan(b[k]))]
    ours, theirs = [a[k] for k in keys], [b[k] for k in keys]
    naive = paired_difference(ours, theirs)
    return {"repetitions": len({seed for _, seed in keys}), **repeated_cv_difference(np.subtract(ours, theirs), ratio),
            "t_naive_ttest_rel": naive["t"], "p_naive_ttest_rel": naive["p"]}


def paired_tests(res: SweepResults, comparisons: tuple[tuple[str, str], ...], aucs: dict[str, dict]) -> list[dict]:
    """Row a vs row b for each (a, b), per site and tested epoch choice: test AUC differences a - b in points,
    jobs paired by (fold, seed) (`paired_differences`)."""
    in_sweep = {r.name for r in res.rows}
    ratio = design_ratio(res)
    tests = []
    for a, b in comparisons:
        if a not in in_sweep or b not in in_sweep:
            continue
        for site in res.sites:
            for choice in TESTED_CHOICES:
                values = [{(j["fold"], j["seed"]): 100 * aucs[j["job"]][site, choice][0]
                           for j in res.ok(row) if (site, choice) in aucs[j["job"]]} for row in (a, b)]
                tests.append({"comparison": f"{ROW_BY_NAME[a].display} vs {ROW_BY_NAME[b].display}", "row": b,
                              "site": site, "metric": COMPARED_METRIC, "epoch": choice, "test_train_ratio": ratio,
                              **paired_differences(*values, ratio)})
    return tests


def grouped_changes(res: SweepResults, entries: list[dict], aucs: dict[str, dict]) -> list[dict]:
    """Each duplicate-grouped row against its row on ordinary folds, per site and tested epoch choice: both
    means and the change, with a bootstrap interval of the change (the shared patient draws of
    `auc_replicates`: test sampling only; the folds differ, so no job pairs)."""
    cells = {(e["row"], e["site"], e["epoch"]): e for e in entries}
    changes = []
    for row in res.rows:
        base = row.name.removesuffix("-grouped")
        if row.group != "grouped" or base not in {r.name for r in res.rows}:
            continue
        for site in res.sites:
            for choice in TESTED_CHOICES:
                g, b = cells[row.name, site, choice], cells[base, site, choice]
                low = high = math.nan
                if g["n"] > 1 and b["n"] > 1:
                    low, high = percentile_interval(_row_replicates(res, row.name, site, choice, aucs)
                                                    - _row_replicates(res, base, site, choice, aucs))
                changes.append({"row": base, "display": ROW_BY_NAME[base].display, "site": site, "epoch": choice,
                                "ordinary": b, "grouped": g, "change": g["mean"] - b["mean"],
                                "ci_low": low, "ci_high": high})
    return changes
