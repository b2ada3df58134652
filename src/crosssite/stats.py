"""Uncertainty of test metrics: patient-level bootstrap of AUC and intervals of paired differences.

A site's test images are not independent samples: slices of one patient look alike. Resampling
patients (every slice of a drawn patient, as often as it was drawn) keeps that dependence, so the
interval reflects how many patients were tested rather than how many slices. Where a site has no
patient ids each image is its own group (image-level bootstrap), which is too narrow when
neighbouring slices are near-duplicates; the report says so.

Resampling groups with replacement is the same as giving each group a multinomial count; the AUC of
a replicate is then the weighted Mann-Whitney statistic over the images, which needs one sort per
job instead of one per replicate.

Paired differences between two methods come from cross-validation jobs, which are not independent
either: seeds of one fold share its test set, and any two folds share most of their training data.
`cv_paired_difference` allows for both; `paired_difference` (the paper's paired t-test) for neither.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from scipy import stats as scipy_stats

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


def cv_paired_difference(
    diffs: Sequence[float], folds: Sequence[int], test_train_ratio: float, confidence: float = CONFIDENCE,
) -> dict:
    """Mean of paired differences of cross-validation jobs (`folds[i]`: the fold of `diffs[i]`) with a
    t-interval that allows for their dependence: the seeds of a fold are averaged first (they share its
    test set), and the variance of the mean of k fold means is Nadeau & Bengio's corrected
    (1/k + n_test/n_train) s^2 (Machine Learning 52:239, 2003) with k - 1 degrees of freedom, since the
    folds' training sets overlap. NaN where fewer than 2 folds have pairs."""
    by_fold = defaultdict(list)
    for fold, diff in zip(folds, diffs, strict=True):
        by_fold[fold].append(diff)
    means = np.array([np.mean(v) for _, v in sorted(by_fold.items())], dtype=float)
    k = len(means)
    mean = float(means.mean()) if k else math.nan
    if k < 2:
        return {"n_folds": k, "mean_diff": mean, "ci_low": math.nan, "ci_high": math.nan, "t": math.nan, "p": math.nan}
    se = math.sqrt((1 / k + test_train_ratio) * means.var(ddof=1))
    half = scipy_stats.t.ppf((1 + confidence) / 2, k - 1) * se
    t = mean / se if se > 0 else (math.nan if mean == 0 else math.copysign(math.inf, mean))
    return {"n_folds": k, "mean_diff": mean, "ci_low": mean - half, "ci_high": mean + half, "t": t,
            "p": float(2 * scipy_stats.t.sf(abs(t), k - 1))}
