"""Per-site classification metrics (COVID = 1 the positive class) and the table that prints them.

The decision P(COVID) >= 0.5 (the arg-max of the two softmax outputs) is made here only:
`is_covid` and `label_name` serve every command that prints or scores a label.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from .data.sites import LABEL_NAMES

METRIC_NAMES = ("accuracy", "f1", "recall", "precision", "auc", "specificity")
#: P(COVID) at or above this is called COVID: the arg-max of two softmax outputs
THRESHOLD = 0.5


def is_covid(p_covid):
    """The decision for a probability (bool) or an array of them (bool array)."""
    return np.asarray(p_covid) >= THRESHOLD if np.ndim(p_covid) else bool(p_covid >= THRESHOLD)


def label_name(p_covid: float) -> str:
    return LABEL_NAMES[int(is_covid(p_covid))]


def site_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Accuracy, F1, recall (sensitivity), precision, AUC and specificity, and `n`.

    AUC is NaN when the set holds only one class (it is undefined there); a metric whose
    denominator is zero (e.g. specificity without negatives) is reported as 0.
    """
    labels = np.asarray(labels, dtype=int)
    pred = is_covid(np.asarray(probs)).astype(int)
    tn, fp, fn, tp = confusion_matrix(labels, pred, labels=[0, 1]).ravel()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zero-division cases are reported as 0 below
        metrics = {
            "accuracy": accuracy_score(labels, pred),
            "f1": f1_score(labels, pred, zero_division=0),
            "recall": recall_score(labels, pred, zero_division=0),
            "precision": precision_score(labels, pred, zero_division=0),
            "auc": roc_auc_score(labels, probs) if len(set(labels.tolist())) == 2 else float("nan"),
            "specificity": tn / (tn + fp) if tn + fp else 0.0,
        }
    metrics = {k: float(v) for k, v in metrics.items()}
    metrics["n"] = int(len(labels))
    return metrics


#: a site's confusion counts at the COVID decision: what pooled metrics over several sites are made of
COUNTS = ("tp", "fp", "tn", "fn")


def confusion_counts(labels, probs) -> dict[str, int]:
    """True / false positives and negatives at P(COVID) >= THRESHOLD."""
    labels, pred = np.asarray(labels, dtype=int), is_covid(np.asarray(probs, dtype=float))
    return {"tp": int(np.sum(pred & (labels == 1))), "fp": int(np.sum(pred & (labels == 0))),
            "tn": int(np.sum(~pred & (labels == 0))), "fn": int(np.sum(~pred & (labels == 1)))}


def metrics_from_counts(counts: dict) -> dict[str, float]:
    """site_metrics' decision metrics (all but AUC, which needs the scores) and `n` from confusion counts,
    e.g. summed over sites; a zero denominator gives 0 as there."""
    tp, fp, tn, fn = (int(counts[k]) for k in COUNTS)
    n = tp + fp + tn + fn
    return {"accuracy": (tp + tn) / n if n else 0.0, "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
            "recall": tp / (tp + fn) if tp + fn else 0.0, "precision": tp / (tp + fp) if tp + fp else 0.0,
            "specificity": tn / (tn + fp) if tn + fp else 0.0, "n": n}


def mean_auc(per_site: dict[str, dict]) -> float:
    """Mean AUC over sites, ignoring sites where it is undefined (checkpoint selection score)."""
    aucs = [m["auc"] for m in per_site.values() if not np.isnan(m["auc"])]
    return float(np.mean(aucs)) if aucs else float("nan")


def format_metrics(per_site: dict[str, dict]) -> str:
    """One line per site, metrics in percent, then the number of images (or scans, patients)."""
    width = max(len(s) for s in per_site) + 2
    lines = ["site".ljust(width) + "".join(n.rjust(12) for n in METRIC_NAMES) + "n".rjust(6)]
    for site, m in per_site.items():
        lines.append(site.ljust(width) + "".join(f"{100 * m[n]:11.2f}%" for n in METRIC_NAMES) + str(m["n"]).rjust(6))
    return "\n".join(lines)
