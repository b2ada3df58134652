"""Per-site metrics at their edges: one class only, no negatives, the 0.5 threshold; the printed table."""

import math

import numpy as np
import pytest

from crosssite.metrics import (METRIC_NAMES, THRESHOLD, confusion_counts, format_metrics, is_covid, label_name, mean_auc,
                               metrics_from_counts, site_metrics)


def test_hand_counted_confusion():
    labels = np.array([1, 1, 1, 0, 0, 0, 0])
    probs = np.array([0.9, 0.6, 0.2, 0.7, 0.1, 0.3, 0.4])  # tp 2, fn 1, fp 1, tn 3
    m = site_metrics(labels, probs)
    assert m["accuracy"] == pytest.approx(5 / 7)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["auc"] == pytest.approx(8 / 12)  # 8 of the 12 (positive, negative) pairs ranked right
    assert m["n"] == 7
    assert set(METRIC_NAMES) | {"n"} == set(m)


def test_threshold_is_inclusive_everywhere():
    assert THRESHOLD == 0.5
    assert is_covid(0.5) is True and is_covid(0.4999) is False
    assert is_covid(np.array([0.5, 0.49, 1.0])).tolist() == [True, False, True]
    assert label_name(0.5) == "COVID" and label_name(0.2) == "NonCOVID"
    # a probability of exactly 0.5 counts as a COVID call in the metrics too
    assert site_metrics(np.array([1, 0]), np.array([0.5, 0.1]))["recall"] == 1.0


def test_one_class_part_has_no_auc_and_no_specificity():
    m = site_metrics(np.array([1, 1, 1]), np.array([0.9, 0.2, 0.6]))  # no negatives: tn + fp = 0
    assert math.isnan(m["auc"])
    assert m["specificity"] == 0.0
    assert m["recall"] == pytest.approx(2 / 3)
    negatives = site_metrics(np.array([0, 0]), np.array([0.1, 0.2]))  # no positives, none called COVID
    assert negatives["precision"] == 0.0 and negatives["f1"] == 0.0 and negatives["specificity"] == 1.0


def test_mean_auc_skips_undefined_sites():
    assert mean_auc({"a": {"auc": 0.8}, "b": {"auc": float("nan")}, "c": {"auc": 0.6}}) == pytest.approx(0.7)
    assert math.isnan(mean_auc({"a": {"auc": float("nan")}}))


def test_format_metrics_table():
    m = site_metrics(np.array([1, 0, 1, 0]), np.array([0.9, 0.1, 0.4, 0.6]))
    lines = format_metrics({"covid-ct": m, "x": m}).splitlines()
    assert lines[0].split() == ["site", *METRIC_NAMES, "n"]
    assert lines[1].split() == ["covid-ct", "50.00%", "50.00%", "50.00%", "50.00%", "75.00%", "50.00%", "4"]
    assert len({len(line) for line in lines}) == 1  # columns aligned


@pytest.mark.parametrize("labels", [[1, 0, 1, 1, 0, 0, 1, 0], [1, 1, 1, 1], [0, 0, 0], []])
def test_metrics_from_confusion_counts_are_site_metrics_without_auc(labels):
    """What the federated coordinator pools: summed counts give the metrics of the pooled images."""
    probs = np.linspace(0.1, 0.9, len(labels))
    counts = confusion_counts(labels, probs)
    assert sum(counts.values()) == len(labels)
    if labels:
        expected = {k: v for k, v in site_metrics(np.array(labels), probs).items() if k != "auc"}
        assert metrics_from_counts(counts) == pytest.approx(expected)
    else:
        assert metrics_from_counts(counts) == {"accuracy": 0.0, "f1": 0.0, "recall": 0.0, "precision": 0.0,
                                               "specificity": 0.0, "n": 0}
