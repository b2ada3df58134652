"""The operating point: the P(COVID) threshold at which a site's label is called, chosen on its validation part.

Rules are entries of RULES, each taking (labels, calibrated P) and returning the threshold:
- "sensitivity" (the default, target DEFAULT_SENSITIVITY): the highest threshold at which at least that
  share of the validation COVID images is called COVID. A screening tool that misses few cases is what a
  hospital asks for first; the price, specificity, is stated beside it.
- "youden": the threshold that maximises Youden's J = sensitivity + specificity - 1 on validation.
A P(COVID) at or above the threshold is called COVID (as crosssite.metrics does at 0.5).
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import roc_curve

from .errors import CrossSiteError
from .stats import BOOTSTRAP_REPLICATES, bootstrap_weights, group_ids, percentile_interval

DEFAULT_SENSITIVITY = 0.95
DEFAULT_RULE = "sensitivity"
#: the threshold where there is no validation of both classes: the arg-max of the two softmax outputs
FALLBACK = 0.5


def _candidates(labels, probs):
    """ROC points (sensitivity, specificity, threshold), thresholds finite and falling."""
    fpr, tpr, thresholds = roc_curve(np.asarray(labels, dtype=int), np.asarray(probs, dtype=np.float64))
    keep = np.isfinite(thresholds)
    return tpr[keep], 1 - fpr[keep], thresholds[keep]


def _at_sensitivity(labels, probs, target: float) -> float:
    sens, _, thresholds = _candidates(labels, probs)
    return float(thresholds[np.argmax(sens >= target - 1e-12)])  # the first (highest) threshold reaching it


def _youden(labels, probs, _target=None) -> float:
    sens, spec, thresholds = _candidates(labels, probs)
    return float(thresholds[np.argmax(sens + spec - 1)])


RULES = {"sensitivity": _at_sensitivity, "youden": _youden}


def rule_name(rule: str, sensitivity: float = DEFAULT_SENSITIVITY) -> str:
    return f"sensitivity >= {sensitivity:g} on validation" if rule == "sensitivity" else "Youden's J on validation"


def choose(labels, probs, rule: str = DEFAULT_RULE, sensitivity: float = DEFAULT_SENSITIVITY) -> dict:
    """{"rule", "threshold", "n"} plus validation sensitivity and specificity at it. Where validation
    lacks a class the threshold is FALLBACK and the rule says so."""
    if rule not in RULES:
        raise CrossSiteError(f"unknown operating-point rule {rule!r}; choose one of {', '.join(RULES)}")
    if not 0 < sensitivity <= 1:
        raise CrossSiteError(f"--sensitivity must be in (0, 1], got {sensitivity}")
    y = np.asarray(labels, dtype=int)
    if len(set(y.tolist())) < 2:
        return {"rule": f"{FALLBACK} (validation holds one class)", "threshold": FALLBACK, "n": len(y)}
    threshold = RULES[rule](y, probs, sensitivity)
    return {"rule": rule_name(rule, sensitivity), "threshold": threshold, "n": len(y),
            **rates(y, probs, threshold)}


def rates(labels, probs, threshold: float) -> dict:
    """Sensitivity and specificity at `threshold` (NaN where a class is absent), with counts."""
    y = np.asarray(labels, dtype=int)
    called = np.asarray(probs, dtype=np.float64) >= threshold
    pos, neg = int((y == 1).sum()), int((y == 0).sum())
    tp, tn = int((called & (y == 1)).sum()), int((~called & (y == 0)).sum())
    return {"sensitivity": tp / pos if pos else math.nan, "specificity": tn / neg if neg else math.nan,
            "positives": pos, "negatives": neg}


def rates_with_intervals(labels, probs, threshold: float, groups) -> dict:
    """`rates` plus percentile intervals of a bootstrap over `groups` (patients; None = the image alone),
    as crosssite.stats resamples AUC: {"sensitivity", "sensitivity_interval", "specificity", ...}."""
    y = np.asarray(labels, dtype=int)
    called = np.asarray(probs, dtype=np.float64) >= threshold
    weights = bootstrap_weights(group_ids(groups), BOOTSTRAP_REPLICATES, np.random.default_rng(0))
    result = rates(y, probs, threshold)
    for name, members, hits in (("sensitivity", y == 1, called & (y == 1)), ("specificity", y == 0, ~called & (y == 0))):
        with np.errstate(invalid="ignore", divide="ignore"):
            replicates = (weights * hits).sum(1) / (weights * members).sum(1)
        result[f"{name}_interval"] = list(percentile_interval(replicates))
    return result
