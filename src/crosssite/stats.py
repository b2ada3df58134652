"""Uncertainty of test metrics: patient-level bootstrap of AUC and intervals of paired differences.

A site's test images are not independent samples: slices of one patient look alike. Resampling
patients (every slice of a drawn patient, as often as it was drawn) keeps that dependence, so the
interval reflects how many patients were tested rather than how many slices. Where a site has no
patient ids each image is its own group (image-level bootstrap), which is too narrow when
neighbouring slices are near-duplicates; the report says so.

Resampling groups with replacement is the same as giving each group a multinomial count; the AUC of
a replicate is then the weighted Mann-Whitney statistic over the images, which needs one sort per
job instead of one per replicate.

Paired differences between two methods come from repeated cross-validation (each seed a new partition of
a site into k folds), whose jobs are not independent either: any two share most of their training data,
and the repetitions test the same images again. `repeated_cv_difference` corrects for that;
`paired_difference` (the paper's paired t-test, naive) does not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as scipy_stats
from scipy.optimize import brentq

BOOTSTRAP_REPLICATES = 2000
CONFIDENCE = 0.95


def group_ids(groups: Sequence[str | None]) -> np.ndarray:
    """Index of each image's group; an image without an id (None or '') is a group of its own."""
    index: dict[str, int] = {}
    ids = []
    for i, g in enumerate(groups):
        key = f"image:{i}" if g in (None, "") else f"group:{g}"
        ids.append(index.setdefault(key, len(index)))
    return np.asarray(ids, dtype=np.int64)


def weighted_auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC of each row of `weights` (R, N) over the same (labels, scores): ties count one half.

    NaN for a row whose weights leave only one class.
    """
    labels = np.asarray(labels, dtype=bool)
    order = np.argsort(scores, kind="stable")
    sorted_scores = np.asarray(scores)[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])  # one block per distinct score
    w = np.atleast_2d(weights)[:, order]
    pos = np.add.reduceat(w * labels[order], starts, axis=1)
    neg = np.add.reduceat(w * ~labels[order], starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg  # negative weight strictly below each block
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (pos * (below + 0.5 * neg)).sum(axis=1) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def bootstrap_weights(groups: np.ndarray, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """(replicates, N) image weights: each group drawn with replacement as many times as there are groups."""
    n_groups = int(groups.max()) + 1
    counts = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=replicates)
    return counts[:, groups].astype(np.float64)


def bootstrap_auc(
    labels: np.ndarray, scores: np.ndarray | Sequence[np.ndarray], groups: Sequence[str | None],
    replicates: int = BOOTSTRAP_REPLICATES, seed: int = 0,
) -> np.ndarray:
    """Bootstrap AUCs (replicates,) of one test set; `scores` may be several score vectors of the same
    images (e.g. the last epochs), whose AUCs are averaged within each replicate."""
    score_sets = [np.asarray(scores)] if np.ndim(scores[0]) == 0 else [np.asarray(s) for s in scores]
    weights = bootstrap_weights(group_ids(groups), replicates, np.random.default_rng(seed))
    return np.mean([weighted_auc(labels, s, weights) for s in score_sets], axis=0)


def percentile_interval(replicates: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates (NaN replicates ignored; NaN if fewer than 10 remain)."""
    values = np.asarray(replicates, dtype=float)
    values = values[~np.isnan(values)]
    if len(values) < 10:
        return math.nan, math.nan
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> dict:
    """Mean of a - b over pairs with its t-interval and the paired t-test (NaN where fewer than 2 pairs)."""
    diffs = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = len(diffs)
    if n < 2:
        return {"n_pairs": n, "mean_diff": float(diffs.mean()) if n else math.nan,
                "ci_low": math.nan, "ci_high": math.nan, "t": math.nan, "p": math.nan}
    test = scipy_stats.ttest_rel(a, b)
    interval = test.confidence_interval(confidence)
    return {"n_pairs": n, "mean_diff": float(diffs.mean()), "ci_low": float(interval.low),
            "ci_high": float(interval.high), "t": float(test.statistic), "p": float(test.pvalue)}


def fitted_test_train_ratio(folds: int, val_folds: int) -> float:
    """n_test/n_train of k-fold cross-validation whose training part gives 1/val_folds to validation: the test
    fold (1/k of a site) over the part the weights were fitted on, (1 - 1/k)(1 - 1/val_folds); validation only
    picks the epoch, so it does not count as training (4 folds, 5 validation folds: 0.25/0.60 = 5/12)."""
    return (1 / folds) / ((1 - 1 / folds) * (1 - 1 / val_folds))


def repeated_cv_difference(diffs: Sequence[float], test_train_ratio: float, confidence: float = CONFIDENCE) -> dict:
    """Mean of the paired differences of r repetitions of k-fold cross-validation, each repetition a new
    partition, with the corrected repeated k-fold t-test (Bouckaert & Frank, PAKDD 2004; Nadeau & Bengio,
    Machine Learning 52:239, 2003): all k r pairs count, the variance of their mean is
    (1/(k r) + n_test/n_train) s^2 (s^2 their sample variance), with k r - 1 degrees of freedom. Folds of
    different repetitions share nothing by index, so only the set of pairs matters, not how the folds are
    numbered. NaN where fewer than 2 pairs."""
    d = np.asarray(diffs, dtype=float)
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    if n < 2:
        return {"n_pairs": n, "mean_diff": mean, "se": math.nan, "df": max(n - 1, 0), "ci_low": math.nan,
                "ci_high": math.nan, "t": math.nan, "p": math.nan}
    se = corrected_se(float(d.std(ddof=1)), n, test_train_ratio)
    half = scipy_stats.t.ppf((1 + confidence) / 2, n - 1) * se
    t = mean / se if se > 0 else (math.nan if mean == 0 else math.copysign(math.inf, mean))
    return {"n_pairs": n, "mean_diff": mean, "se": se, "df": n - 1, "ci_low": mean - half, "ci_high": mean + half,
            "t": t, "p": float(2 * scipy_stats.t.sf(abs(t), n - 1))}


def corrected_se(sd: float, n_pairs: int, test_train_ratio: float) -> float:
    """Standard error of the mean of n_pairs cross-validation differences of spread `sd` (Bouckaert & Frank)."""
    return math.sqrt(1 / n_pairs + test_train_ratio) * sd


def power(difference: float, sd: float, n_pairs: int, test_train_ratio: float, alpha: float = 1 - CONFIDENCE) -> float:
    """Probability that the two-sided corrected t-test at level alpha rejects 0 when the true difference is
    `difference` and the pairs spread by `sd` (noncentral t, n_pairs - 1 degrees of freedom)."""
    df = n_pairs - 1
    critical = scipy_stats.t.ppf(1 - alpha / 2, df)
    shift = abs(difference) / corrected_se(sd, n_pairs, test_train_ratio)
    wrong_side = scipy_stats.nct.cdf(-critical, df, shift)  # SciPy gives NaN where it underflows
    return float(scipy_stats.nct.sf(critical, df, shift) + np.nan_to_num(wrong_side))


def detectable_difference(sd: float, n_pairs: int, test_train_ratio: float, target: float = 0.8,
                          alpha: float = 1 - CONFIDENCE) -> float:
    """The smallest true difference the test detects with probability `target` (NaN without a spread)."""
    if not sd > 0 or n_pairs < 2:
        return math.nan
    high = corrected_se(sd, n_pairs, test_train_ratio)
    while power(high, sd, n_pairs, test_train_ratio, alpha) < target:
        high *= 2
    return float(brentq(lambda d: power(d, sd, n_pairs, test_train_ratio, alpha) - target, 0.0, high, xtol=1e-10))
