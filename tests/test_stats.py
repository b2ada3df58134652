import math

import numpy as np
import pytest
from scipy.stats import nct, ttest_rel
from scipy.stats import t as scipy_t
from sklearn.metrics import roc_auc_score

from crosssite.stats import (
    bootstrap_auc,
    bootstrap_weights,
    detectable_difference,
    fitted_test_train_ratio,
    group_ids,
    paired_difference,
    percentile_interval,
    power,
    repeated_cv_difference,
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


def test_repeated_cv_difference_with_one_repetition_and_no_correction_is_the_paired_t_test():
    a, b = [0.9, 0.8, 0.85, 0.95], [0.8, 0.75, 0.8, 0.85]
    result = repeated_cv_difference(np.subtract(a, b), test_train_ratio=0)
    expected = ttest_rel(a, b)
    interval = expected.confidence_interval()
    assert result["n_pairs"] == 4 and result["df"] == 3 and result["mean_diff"] == pytest.approx(0.075)
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((interval.low, interval.high))
    assert result["p"] == pytest.approx(expected.pvalue) and result["t"] == pytest.approx(expected.statistic)


def test_repeated_cv_difference_is_bouckaert_and_franks_corrected_test():
    rng = np.random.default_rng(3)
    diffs = rng.normal(0.5, 1.0, 30)  # 10 folds x 3 repetitions
    ratio = fitted_test_train_ratio(10, 5)
    assert ratio == pytest.approx(0.10 / 0.72)  # test fold over the part the weights were fitted on
    result = repeated_cv_difference(diffs, ratio)
    se = np.sqrt((1 / 30 + ratio) * np.var(diffs, ddof=1))
    half = scipy_t.ppf(0.975, 29) * se
    assert result["df"] == 29 and result["se"] == pytest.approx(se)
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((diffs.mean() - half, diffs.mean() + half))
    assert result["p"] == pytest.approx(2 * scipy_t.sf(abs(diffs.mean() / se), 29))
    assert result["p"] > ttest_rel(diffs, np.zeros(30)).pvalue  # the naive test is optimistic
    one = repeated_cv_difference([1.0], ratio)
    assert one["n_pairs"] == 1 and one["mean_diff"] == 1.0 and math.isnan(one["ci_low"]) and math.isnan(one["p"])


def test_power_is_the_noncentral_t_and_the_detectable_difference_reaches_the_target():
    ratio = fitted_test_train_ratio(10, 5)
    se = np.sqrt(1 / 30 + ratio) * 1.3
    critical = scipy_t.ppf(0.975, 29)
    expected = nct.sf(critical, 29, 1.5 / se) + nct.cdf(-critical, 29, 1.5 / se)
    assert power(1.5, 1.3, 30, ratio) == pytest.approx(expected) and power(-1.5, 1.3, 30, ratio) == pytest.approx(expected)
    detectable = detectable_difference(1.3, 30, ratio)
    assert power(detectable, 1.3, 30, ratio) == pytest.approx(0.8, abs=1e-8)
    assert (critical + scipy_t.ppf(0.8, 29)) * se == pytest.approx(detectable, rel=0.02)  # the usual approximation
    assert detectable_difference(2.6, 30, ratio) == pytest.approx(2 * detectable)  # scales with the spread
    assert math.isnan(detectable_difference(0.0, 30, ratio))
