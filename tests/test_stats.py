import math

import numpy as np
import pytest
from scipy.stats import ttest_rel
from sklearn.metrics import roc_auc_score

from crosssite.stats import (
    bootstrap_auc,
    bootstrap_weights,
    cv_paired_difference,
    group_ids,
    paired_difference,
    percentile_interval,
    weighted_auc,
)


def test_weighted_auc_with_unit_weights_is_sklearns_auc_ties_included():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.random(200) + 0.3 * labels, 1)  # rounding makes many ties
    assert weighted_auc(labels, scores, np.ones((1, 200)))[0] == pytest.approx(roc_auc_score(labels, scores))


def test_integer_weights_equal_repeating_the_images():
    rng = np.random.default_rng(1)
    labels, scores = rng.integers(0, 2, 50), rng.random(50)
    weights = rng.integers(0, 4, 50)
    repeated = np.repeat(np.arange(50), weights)
    expected = roc_auc_score(labels[repeated], scores[repeated])
    assert weighted_auc(labels, scores, weights[None].astype(float))[0] == pytest.approx(expected)


def test_one_class_replicate_is_nan():
    assert math.isnan(weighted_auc(np.array([1, 0]), np.array([0.9, 0.1]), np.array([[2.0, 0.0]]))[0])


def test_groups_are_drawn_whole():
    groups = group_ids(["a", "a", "a", "b", None, None])
    assert groups.tolist() == [0, 0, 0, 1, 2, 3]  # images without an id are groups of their own
    weights = bootstrap_weights(groups, 100, np.random.default_rng(0))
    assert (weights[:, 0] == weights[:, 1]).all() and (weights[:, 1] == weights[:, 2]).all()
    assert (weights[:, [0, 3, 4, 5]].sum(axis=1) == 4).all()  # 4 groups drawn per replicate


def test_patient_bootstrap_is_wider_than_image_bootstrap_for_clustered_slices():
    rng = np.random.default_rng(2)
    patients = np.repeat(np.arange(20), 10)  # 20 patients of 10 near-identical slices
    labels = np.repeat(rng.integers(0, 2, 20), 10)
    scores = np.repeat(rng.random(20) + 0.4 * labels[::10], 10) + 0.01 * rng.random(200)
    by_patient = percentile_interval(bootstrap_auc(labels, scores, [str(p) for p in patients]))
    by_image = percentile_interval(bootstrap_auc(labels, scores, [None] * 200))
    assert by_patient[1] - by_patient[0] > 1.5 * (by_image[1] - by_image[0])
    assert by_patient[0] < roc_auc_score(labels, scores) < by_patient[1]


def test_several_score_vectors_are_averaged_per_replicate():
    labels, groups = np.array([0, 1, 0, 1]), [None] * 4
    a, b = np.array([0.1, 0.9, 0.2, 0.8]), np.array([0.9, 0.1, 0.8, 0.2])
    mean = bootstrap_auc(labels, [a, b], groups, replicates=50)
    both = (bootstrap_auc(labels, a, groups, replicates=50) + bootstrap_auc(labels, b, groups, replicates=50)) / 2
    np.testing.assert_allclose(mean, both)


def test_paired_difference_interval_and_too_few_pairs():
    result = paired_difference([0.9, 0.8, 0.85, 0.95], [0.8, 0.75, 0.8, 0.85])
    assert result["n_pairs"] == 4 and result["mean_diff"] == pytest.approx(0.075)
    assert result["ci_low"] < 0.075 < result["ci_high"] and result["p"] < 0.05
    single = paired_difference([0.9], [0.8])
    assert single["n_pairs"] == 1 and math.isnan(single["ci_low"]) and math.isnan(single["p"])
    assert all(math.isnan(v) for v in percentile_interval(np.full(5, 0.5)))  # too few replicates


def test_cv_paired_difference_with_one_pair_per_fold_and_no_correction_is_the_paired_t_test():
    a, b = [0.9, 0.8, 0.85, 0.95], [0.8, 0.75, 0.8, 0.85]
    result = cv_paired_difference(np.subtract(a, b), folds=[0, 1, 2, 3], test_train_ratio=0)
    expected = ttest_rel(a, b)
    interval = expected.confidence_interval()
    assert result["n_folds"] == 4 and result["mean_diff"] == pytest.approx(0.075)
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((interval.low, interval.high))
    assert result["p"] == pytest.approx(expected.pvalue) and result["t"] == pytest.approx(expected.statistic)


def test_cv_paired_difference_averages_seeds_of_a_fold_and_corrects_for_overlapping_training_sets():
    diffs, folds = [1.0, 3.0, 2.0, 5.0], [0, 1, 2, 3]
    plain = cv_paired_difference(diffs, folds, test_train_ratio=0)
    # three seeds per fold with the same differences: no more evidence about the folds, no narrower interval
    repeated = cv_paired_difference(diffs * 3, folds * 3, test_train_ratio=0)
    assert repeated["n_folds"] == 4 and (repeated["ci_low"], repeated["ci_high"]) == pytest.approx(
        (plain["ci_low"], plain["ci_high"]))
    # Nadeau & Bengio: the variance of the mean grows from s^2/k to (1/k + n_test/n_train) s^2
    corrected = cv_paired_difference(diffs, folds, test_train_ratio=1 / 3)
    widening = math.sqrt((1 / 4 + 1 / 3) / (1 / 4))
    assert corrected["ci_high"] - corrected["mean_diff"] == pytest.approx(widening * (plain["ci_high"] - plain["mean_diff"]))
    assert corrected["p"] > plain["p"]
    # seeds averaged within their fold: a fold's mean is what counts, however many seeds it has
    unbalanced = cv_paired_difference([1.0, 3.0, 2.0, 4.0, 6.0], [0, 1, 2, 3, 3], test_train_ratio=0)
    assert unbalanced["mean_diff"] == pytest.approx(plain["mean_diff"])
    one_fold = cv_paired_difference([1.0, 2.0, 3.0], [0, 0, 0], test_train_ratio=1 / 3)
    assert one_fold["n_folds"] == 1 and one_fold["mean_diff"] == 2.0 and math.isnan(one_fold["ci_low"])
