"""Per-site metrics (scikit-learn, COVID positive) and batched inference."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from .data.sampling import eval_batches
from .data.transforms import to_tensor
from .distributed import spread
from .inference import inference_network

METRIC_NAMES = ("accuracy", "f1", "recall", "precision", "auc", "specificity")


@torch.no_grad()
def predict_proba(method, images: np.ndarray, site: int, batch_size: int = 64, compile: bool = False) -> np.ndarray:
    """P(COVID) for a (N, s, s) uint8 array of eval-size images of one site.

    Runs the fast copy of `method.predict(., site)` (batch norms folded, channels_last; see
    crosssite.inference); `compile` adds torch.compile. Under torchrun the processes share the images.
    """
    method.eval()
    net = inference_network(method, site, compile=compile)

    def run(part: np.ndarray) -> np.ndarray:
        probs = [np.zeros(0, dtype=np.float32)]
        for idx in eval_batches(len(part), batch_size):
            logits = net(to_tensor(part[idx]))
            probs.append(torch.softmax(logits, dim=1)[:, 1].cpu().numpy())
        return np.concatenate(probs)

    return spread(images, run)  # under torchrun each process predicts its share


def site_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Accuracy, F1, recall (sensitivity), precision, AUC and specificity, COVID = 1 positive.

    The label is the arg-max of the two softmax outputs, i.e. P(COVID) >= 0.5. AUC is NaN
    when the set holds only one class (it is undefined there).
    """
    labels = np.asarray(labels, dtype=int)
    pred = (np.asarray(probs) >= 0.5).astype(int)
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


def mean_auc(per_site: dict[str, dict]) -> float:
    """Mean AUC over sites, ignoring sites where it is undefined (checkpoint selection score)."""
    aucs = [m["auc"] for m in per_site.values() if not np.isnan(m["auc"])]
    return float(np.mean(aucs)) if aucs else float("nan")
