"""Calibrated P(COVID): a Platt map per site, fitted on that site's validation part, and how to measure it.

Why Platt and not temperature scaling: temperature scaling divides the logit by one number, so it keeps
P = 0.5 where it was and only sharpens or softens. The sites' trouble is also a shift: in the committed
CPU sweep the 0.5 threshold called COVID 9-24 points less often than the prevalence, which only an offset
can move. Platt scaling (J. Platt, "Probabilistic outputs for support vector machines", 1999) fits both,
P' = sigmoid(a * logit(P) + b), two numbers a validation part of a few dozen images can carry; Platt's
smoothed targets (N+ + 1) / (N+ + 2) and 1 / (N- + 2) keep a small, separable set from pushing a to infinity.
The map is monotone increasing (a > 0 is required), so it never changes a site's ranking or AUC.

The map acts on P(COVID) itself (logit of P clipped to [EPS, 1 - EPS]), so the same numbers apply to a
checkpoint's, an export's and a predictions.csv's probabilities.

ECE (expected calibration error) here: BINS equal-width bins of P(COVID) on [0, 1] (the last one closed),
sum over bins of (images in bin / images) * |mean P(COVID) in bin - fraction COVID in bin|.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

EPS = 1e-7
BINS = 10
METHOD = "platt"
#: a map needs at least this many validation images of each class
MIN_PER_CLASS = 2


def logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def fit_platt(labels, probs) -> dict | None:
    """{"method", "a", "b", "n"} for sigmoid(a * logit(P) + b), or None when a class has fewer than
    MIN_PER_CLASS images (nothing to fit on) or the fit is not increasing (no signal to calibrate)."""
    y = np.asarray(labels, dtype=np.float64)
    z = logit(probs)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if min(n_pos, n_neg) < MIN_PER_CLASS:
        return None
    target = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))

    def loss(ab):
        s = ab[0] * z + ab[1]
        q = expit(s)
        # binary cross-entropy with logits, written stably: log(1 + e^s) - t s
        value = np.sum(np.logaddexp(0, s) - target * s)
        grad = q - target
        return value, np.array([np.sum(grad * z), np.sum(grad)])

    result = minimize(loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
    a, b = (float(v) for v in result.x)
    if not (np.isfinite(a) and np.isfinite(b)) or a <= 0:
        return None
    return {"method": METHOD, "a": a, "b": b, "n": len(y)}


def apply(calibration: dict | None, probs) -> np.ndarray:
    """Calibrated P(COVID); the probabilities unchanged (as float64) where there is no map."""
    if calibration is None:
        return np.asarray(probs, dtype=np.float64)
    return expit(calibration["a"] * logit(probs) + calibration["b"])


def reliability(labels, probs, bins: int = BINS) -> list[dict]:
    """Per non-empty bin: its range, number of images, mean P(COVID) and fraction COVID."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    which = np.minimum((p * bins).astype(int), bins - 1)
    rows = []
    for k in range(bins):
        inside = which == k
        if inside.any():
            rows.append({"low": k / bins, "high": (k + 1) / bins, "n": int(inside.sum()),
                         "mean_p": float(p[inside].mean()), "fraction_covid": float(y[inside].mean())})
    return rows


def ece(labels, probs, bins: int = BINS) -> float:
    """Expected calibration error (module docstring); NaN for no images."""
    rows = reliability(labels, probs, bins)
    total = sum(r["n"] for r in rows)
    if not total:
        return float("nan")
    return float(sum(r["n"] * abs(r["mean_p"] - r["fraction_covid"]) for r in rows) / total)


def describe_binning(bins: int = BINS) -> str:
    return (f"{bins} equal-width bins of P(COVID) on [0, 1]; ECE = sum over bins of share of images x "
            "|mean P(COVID) - fraction COVID|")
