"""The operating point: chosen on validation by a rule, with rates and patient-bootstrap intervals."""

import numpy as np
import pytest

from crosssite import operating_point as op
from crosssite.errors import CrossSiteError


def _scores(seed=0, n=200):
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], n // 2)
    return labels, np.clip(rng.normal(0.35 + 0.3 * labels, 0.15), 0, 1)


def test_target_sensitivity_is_met_at_the_highest_threshold():
    labels, probs = _scores()
    chosen = op.choose(labels, probs, "sensitivity", 0.95)
    assert chosen["sensitivity"] >= 0.95 and chosen["rule"] == "sensitivity >= 0.95 on validation"
    positives = np.sort(probs[labels == 1])
    # one step higher (the next positive's score) would miss the target
    higher = positives[positives > chosen["threshold"]][0]
    assert op.rates(labels, probs, higher)["sensitivity"] < 0.95


def test_youden_maximises_sensitivity_plus_specificity():
    labels, probs = _scores(1)
    chosen = op.choose(labels, probs, "youden")
    best = max(sum(op.rates(labels, probs, t)[k] for k in ("sensitivity", "specificity")) for t in np.unique(probs))
    assert chosen["sensitivity"] + chosen["specificity"] == pytest.approx(best)


def test_one_class_falls_back_to_half_and_says_so():
    chosen = op.choose([1, 1, 1], [0.2, 0.6, 0.9])
    assert chosen["threshold"] == op.FALLBACK and "one class" in chosen["rule"]


def test_bad_rule_or_target_is_one_clear_error():
    with pytest.raises(CrossSiteError, match="unknown operating-point rule 'best'"):
        op.choose([0, 1], [0.1, 0.9], "best")
    with pytest.raises(CrossSiteError, match="--sensitivity must be in"):
        op.choose([0, 1], [0.1, 0.9], "sensitivity", 1.5)


def test_intervals_contain_the_point_and_widen_when_patients_group_images():
    labels, probs = _scores(2, 40)
    labels, probs = np.repeat(labels, 10), np.repeat(probs, 10)  # 40 patients of 10 identical slices each
    alone = op.rates_with_intervals(labels, probs, 0.5, [None] * len(labels))
    grouped = op.rates_with_intervals(labels, probs, 0.5, [f"p{i // 10}" for i in range(len(labels))])
    for name in ("sensitivity", "specificity"):
        low, high = alone[f"{name}_interval"]
        assert low <= alone[name] == grouped[name] <= high
        g_low, g_high = grouped[f"{name}_interval"]
        assert g_high - g_low > 2 * (high - low)  # 40 independent units, not 400
