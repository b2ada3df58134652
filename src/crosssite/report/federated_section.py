"""The report's section on federated rows (`crosssite report FED --against CENTRAL`): what federating costs.

Each federated row of the sweep is paired with its centralised row (crosssite.paper.FEDERATED_PAIRS) in a
reference sweep folder, job by job on (fold, seed): the split is a function of the site, fold, number of folds
and seed, so the two jobs of a (fold, seed) test the same images (tests/federated/test_job.py checks it), and
both sweeps must have the same settings. Differences use the tests of the paired tables (Table II and on):
the corrected repeated k-fold t-test and the naive ttest_rel. Beside them: bytes moved per site per job
(communication.jsonl) and wall time per job of both sweeps.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import CrossSiteError
from ..io import atomic_write_csv
from ..paper import FEDERATED_PAIRS, ROW_BY_NAME
from .render import difference_cell, markdown
from .results import SweepResults, tail_auc
from .tables import EPOCH_CHOICES, TESTED_CHOICES, design_ratio, paired_differences

MIB = 2**20
#: a job's test AUC of an epoch choice at a site, from its results.jsonl record
RECORDED_AUC = {"best_val": lambda job, site: job["sites"][site]["auc"], "last_k": tail_auc}


def check_pairable(fed: SweepResults, central: SweepResults) -> None:
    """Jobs pair across the two folders only if both sweeps split and train alike."""
    a, b = fed.settings, central.settings
    changed = [k for k in sorted(set(a["config"]) | set(b["config"])) if a["config"].get(k) != b["config"].get(k)]
    changed += ["folds"] if a["folds"] != b["folds"] else []
    if changed:
        raise CrossSiteError(f"{central.folder / 'sweep.yaml'}: not the settings of {fed.folder / 'sweep.yaml'} "
                             f"({', '.join(changed)}); jobs pair by (fold, seed) only between sweeps of equal settings")


def federated_tests(fed: SweepResults, central: SweepResults) -> list[dict]:
    """Per federated row, site and tested epoch choice: federated - centralised test AUC in points, paired by
    (fold, seed) (`tables.paired_differences`)."""
    ratio = design_ratio(fed)
    central_rows = {r.name for r in central.rows}
    tests = []
    for row in fed.rows:
        pair = FEDERATED_PAIRS.get(row.name)
        if pair not in central_rows:
            continue
        for site in fed.sites:
            for choice in TESTED_CHOICES:
                auc = RECORDED_AUC[choice]
                values = [{(j["fold"], j["seed"]): 100 * auc(j, site) for j in res.ok(name) if site in j["sites"]}
                          for res, name in ((fed, row.name), (central, pair))]
                paired = [k for k in values[0].keys() & values[1].keys()
                          if not (math.isnan(values[0][k]) or math.isnan(values[1][k]))]
                means = [float(np.mean([v[k] for k in paired])) if paired else math.nan for v in values]
                tests.append({"federated": row.name, "centralised": pair,
                              "comparison": f"{row.display} vs {ROW_BY_NAME[pair].display}", "site": site,
                              "epoch": choice, "federated_mean": means[0], "centralised_mean": means[1],
                              "test_train_ratio": ratio, **paired_differences(*values, ratio)})
    return tests


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return (float(np.mean(values)) if values else math.nan, float(np.std(values, ddof=1)) if len(values) > 1 else math.nan)


def costs(fed: SweepResults, central: SweepResults) -> list[dict]:
    """Per federated row: MiB of tensors sent to and from each site per job, and the wall time per job of
    the federated row and of its centralised row (mean, sd, jobs)."""
    entries = []
    for row in fed.rows:
        jobs, pair = fed.ok(row.name), FEDERATED_PAIRS.get(row.name)
        moved = [j["communication"] for j in jobs if "communication" in j]
        for site in fed.sites:
            down = _mean_sd([m[site]["down"] / MIB for m in moved if site in m])
            up = _mean_sd([m[site]["up"] / MIB for m in moved if site in m])
            fed_time = _mean_sd([j["seconds"] for j in jobs])
            central_time = _mean_sd([j["seconds"] for j in central.ok(pair)]) if pair else (math.nan, math.nan)
            entries.append({"row": row.name, "centralised": pair, "site": site, "jobs": len(jobs),
                            "mib_down": down[0], "mib_up": up[0], "seconds": fed_time[0], "seconds_sd": fed_time[1],
                            "centralised_jobs": len(central.ok(pair)) if pair else 0,
                            "centralised_seconds": central_time[0], "centralised_seconds_sd": central_time[1]})
    return entries


def _number(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1f}"


def _minutes(mean: float, sd: float) -> str:
    return "n/a" if math.isnan(mean) else f"{mean / 60:.1f}" + ("" if math.isnan(sd) else f" ± {sd / 60:.1f}")


def federated_section(fed: SweepResults, central: SweepResults | None, tables: Path) -> list[str]:
    """Markdown lines (and tables/federated.csv, tables/federated_costs.csv); none for a sweep without federated rows."""
    if not any(r.name in FEDERATED_PAIRS for r in fed.rows):
        return []
    md = ["## Federated vs centralised", ""]
    if central is None:
        return md + ["Federated rows are compared with their centralised rows of a reference sweep of the same "
                     "settings: `crosssite report FOLDER --against CENTRALISED_SWEEP`.", ""]
    check_pairable(fed, central)
    tests = federated_tests(fed, central)
    atomic_write_csv(tables / "federated.csv", tests)
    entries = costs(fed, central)
    atomic_write_csv(tables / "federated_costs.csv", entries)
    grid = [[t["comparison"], t["site"], EPOCH_CHOICES[t["epoch"]], _number(t["federated_mean"]),
             _number(t["centralised_mean"]), difference_cell(t)] for t in tests]
    cost_grid = [[ROW_BY_NAME[e["row"]].display, e["site"], _number(e["mib_down"]), _number(e["mib_up"]),
                  f"{_minutes(e['seconds'], e['seconds_sd'])} ({e['jobs']})",
                  f"{_minutes(e['centralised_seconds'], e['centralised_seconds_sd'])} ({e['centralised_jobs']})"]
                 for e in entries]
    return md + [
        f"Test AUC of each federated row minus its centralised row in `{central.folder}`, in points, jobs paired "
        "by (fold, seed) across the two sweeps (same settings, so the same split of every site): the mean test "
        "AUC of each side over the paired jobs, and the mean paired difference [95 % interval], p of the "
        "corrected repeated k-fold t-test (as in the paired tables above), (pairs, repetitions; naive ttest_rel "
        "p). Negative: federating costs AUC. n/a: fewer than 2 pairs.", "",
        markdown(["Comparison", "Site", "Epoch", "Federated AUC", "Centralised AUC", "Federated - centralised"], grid)
        if grid else
        "No federated row has its centralised row in the reference sweep.\n", "",
        "Cost per job: MiB of tensors sent to each site (shared state for training and for validation, other "
        "sites' class means) and from it (its trained shared state, its class means), summed over the job's "
        "rounds (communication.jsonl; metrics and counts are left out, a few bytes). Wall time per job in "
        "minutes, mean ± sd (jobs), of this sweep and of the centralised row in the reference sweep: the two "
        "ran at different times on a shared machine, so the times compare loosely.", "",
        markdown(["Method", "Site", "MiB to site per job", "MiB from site per job", "Federated min per job",
                  "Centralised min per job"], cost_grid), ""]
