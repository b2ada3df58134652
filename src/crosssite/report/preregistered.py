"""The pre-registered decisive comparison (docs/preregistration.md), computed from results.jsonl alone.

Its contrast, design, test and decision rule are fixed by that page, committed before its sweep ran; the
constants below restate them and must not change. A sweep whose rows include the pair gets the contrast;
the verdict is drawn only from a complete sweep of the pre-registered design.
"""

from __future__ import annotations

import math

import numpy as np

from ..stats import CONFIDENCE, detectable_difference, power
from .results import SweepResults, tail_auc
from .tables import design_ratio, paired_differences

OURS, THEIRS = "contrastive-grouped", "sepnorm-grouped"  # d = AUC(OURS) - AUC(THEIRS)
PRIMARY_SITE = "sars-cov-2-ct"
FOLDS, REPETITIONS = 10, 3
MARGIN = 1.5  # AUC points: the equivalence margin and the difference the sweep is sized to detect
TARGET_POWER = 0.8
ALPHA = 1 - CONFIDENCE

#: the decision rule's verdicts, by the interval [lo, hi] of d
IMPROVES = "the contrastive term improves AUC over SepNorm at this scale"
LOWERS = "the contrastive term lowers AUC at this scale"
EQUIVALENT = f"no difference of {MARGIN} points or more (the interval excludes both margins)"
INCONCLUSIVE = f"inconclusive: the sweep could not resolve {MARGIN} points"


def decide(low: float, high: float, margin: float = MARGIN) -> str:
    """docs/preregistration.md's decision rule for the 95 % interval [low, high] of d."""
    if low > 0:
        return IMPROVES
    if high < 0:
        return LOWERS
    if -margin < low and high < margin:
        return EQUIVALENT
    return INCONCLUSIVE


def primary_contrast(res: SweepResults) -> dict | None:
    """The contrast per site with its test, the naive p, the spread of d, the power to detect MARGIN and the
    difference detectable with TARGET_POWER at that spread; the sweep's state (`status`: "complete",
    "interim" or "other design") and, only when complete, the verdict on PRIMARY_SITE. None when the
    sweep lacks either row."""
    if not {OURS, THEIRS} <= {r.name for r in res.rows}:
        return None
    ratio = design_ratio(res)
    planned = [j for row in (OURS, THEIRS) for j in res.planned_for(row)]
    finished = [j for j in planned if res.latest.get(j, {}).get("status") == "ok"]
    seeds = {row: res.settings.get("row_seeds", {}).get(row, res.settings["seeds"]) for row in (OURS, THEIRS)}
    design = (res.settings["folds"], min(seeds.values()))
    status = ("other design" if design != (FOLDS, REPETITIONS)
              else "complete" if len(finished) == len(planned) else "interim")
    sites = {}
    for site in res.sites:
        values = [{(j["fold"], j["seed"]): 100 * tail_auc(j, site) for j in res.ok(row) if site in j["sites"]}
                  for row in (OURS, THEIRS)]
        test = paired_differences(*values, ratio)
        a, b = values
        diffs = [a[k] - b[k] for k in a.keys() & b.keys() if not (math.isnan(a[k]) or math.isnan(b[k]))]
        sd = float(np.std(diffs, ddof=1)) if len(diffs) > 1 else math.nan
        n = test["n_pairs"]
        sites[site] = {**test, "sd": sd,
                       "power_at_margin": power(MARGIN, sd, n, ratio, ALPHA) if n > 1 and sd > 0 else math.nan,
                       "detectable": detectable_difference(sd, n, ratio, TARGET_POWER, ALPHA)}
    primary = sites.get(PRIMARY_SITE)
    verdict = decide(primary["ci_low"], primary["ci_high"]) if status == "complete" and primary else None
    return {"status": status, "design": design, "planned": len(planned), "finished": len(finished),
            "test_train_ratio": ratio, "sites": sites, "verdict": verdict}
