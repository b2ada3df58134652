"""Platt calibration and ECE: a known miscalibration is undone on held-out data; no map where nothing fits."""

import numpy as np
import pytest
from scipy.special import expit

from crosssite import calibration


def _miscalibrated(n: int, seed: int):
    """Labels drawn with P = sigmoid(2 z + 1) while the model says sigmoid(z): over-cautious and shifted."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2, n)
    labels = (rng.random(n) < expit(2 * z + 1)).astype(int)
    return labels, expit(z)


def test_platt_recovers_a_known_map_and_lowers_held_out_ece():
    fit_labels, fit_probs = _miscalibrated(4000, 0)
    fitted = calibration.fit_platt(fit_labels, fit_probs)
    assert fitted["method"] == "platt" and fitted["n"] == 4000
    assert fitted["a"] == pytest.approx(2, abs=0.2) and fitted["b"] == pytest.approx(1, abs=0.2)
    labels, probs = _miscalibrated(4000, 1)  # held out: fit on one set, measured on another
    before, after = calibration.ece(labels, probs), calibration.ece(labels, calibration.apply(fitted, probs))
    assert after < 0.03 < 0.1 < before


def test_map_keeps_the_ranking():
    labels, probs = _miscalibrated(300, 2)
    fitted = calibration.fit_platt(labels, probs)
    assert np.array_equal(np.argsort(probs, kind="stable"),
                          np.argsort(calibration.apply(fitted, probs), kind="stable"))


def test_no_map_without_both_classes_and_none_is_the_identity():
    assert calibration.fit_platt([1, 1, 1, 0], [0.9, 0.8, 0.7, 0.2]) is None  # one NonCOVID image
    assert np.array_equal(calibration.apply(None, [0.2, 0.7]), [0.2, 0.7])


def test_saturated_probabilities_stay_finite():
    fitted = calibration.fit_platt([0, 0, 1, 1, 1], [0.0, 0.1, 0.9, 1.0, 1.0])
    assert np.isfinite(calibration.apply(fitted, [0.0, 1.0])).all()


def test_ece_and_reliability_bins():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([0.05, 0.05, 0.95, 1.0])  # the last one falls in the closed last bin
    bins = calibration.reliability(labels, probs)
    assert [(b["low"], b["n"]) for b in bins] == [(0.0, 2), (0.9, 2)]
    assert calibration.ece(labels, probs) == pytest.approx((2 * 0.05 + 2 * 0.025) / 4)
    assert np.isnan(calibration.ece([], []))
