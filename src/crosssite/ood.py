"""Out-of-distribution flag: an image (or scan) further from every known site than that site's own images.

An image's distance to site s is the distance `--site auto` uses (crosssite.inputs: the symmetric KL
divergence between the Gaussian of a batch norm's incoming activations and s's running statistics,
averaged over channels and then over the site's batch norms on the prediction path), computed from the
one image's activations (per channel, over its spatial positions) instead of a whole set's.
At the end of training each site's threshold is the QUANTILE of the distances of its own validation
images to it (numpy's "higher" quantile: at most 1 - QUANTILE of them lie beyond it); an image is flagged when its distance to every known site exceeds that site's threshold.
A scan's distance to a site is the median of its slices' (it is flagged when, for every site, most
of its slices are beyond the threshold). Only models with site-specific batch norm carry the statistics.
"""

from __future__ import annotations

import numpy as np
import torch

from .config import EVAL_BATCH_SIZE
from .data.sampling import eval_batches
from .data.transforms import to_tensor
from .inputs import symmetric_kl

#: share of a site's own validation images that fall within its threshold
QUANTILE = 0.95


def kl_to_running(mean: torch.Tensor, var: torch.Tensor, bn) -> torch.Tensor:
    """Symmetric KL between N(mean, var) per channel (var already has eps added) and the layer's running
    statistics, averaged over channels (the last axis): one value per row."""
    return symmetric_kl(mean, var, bn.running_mean.double(), bn.running_var.double() + bn.eps).mean(-1)


@torch.no_grad()
def image_distances(method, images: np.ndarray, batch_size: int = EVAL_BATCH_SIZE,
                    sites: list[int] | None = None) -> np.ndarray:
    """(N, sites) distance of each image to each known site (or to `sites`), for a site-specific-BN method."""
    method.eval()
    where = next(method.parameters()).device
    columns = []
    for site in range(method.num_sites) if sites is None else sites:
        layers = method.site_batch_norms(site)
        per_batch = []
        for idx in eval_batches(len(images), batch_size):
            found = {}

            def record(k):
                def hook(module, inputs):
                    x = inputs[0]
                    if x.dim() == 4:  # a batch norm after a linear layer has no spatial positions: skipped
                        x = x.double().flatten(2)
                        found[k] = kl_to_running(x.mean(2), x.var(2, unbiased=False) + module.eps, module)
                return hook

            handles = [layer.register_forward_pre_hook(record(k)) for k, layer in enumerate(layers)]
            try:
                method.predict(to_tensor(images[idx]).to(where), site)
            finally:
                for h in handles:
                    h.remove()
            per_batch.append(torch.stack([found[k] for k in sorted(found)]).mean(0).cpu())
        columns.append(torch.cat(per_batch).numpy() if per_batch else np.zeros(0))
    return np.stack(columns, axis=1) if columns else np.zeros((len(images), 0))


def threshold(own_distances: np.ndarray, quantile: float = QUANTILE) -> dict:
    """A site's OOD record from its validation images' distances to it."""
    # "higher": a validation distance itself, so that at most 1 - quantile of them lie beyond it
    return {"quantile": quantile, "threshold": float(np.quantile(own_distances, quantile, method="higher")),
            "n": int(len(own_distances))}


def flags(distances: np.ndarray, thresholds: list[float | None]) -> np.ndarray | None:
    """Per row of (N, sites) distances: beyond every site's threshold. None when a site has no threshold
    (a site added by adapt without labelled images) or there are no statistics."""
    if distances is None or not len(thresholds) or any(t is None for t in thresholds):
        return None
    return np.all(np.asarray(distances) > np.asarray(thresholds, dtype=np.float64), axis=1)


def scan_distances(distances: np.ndarray) -> np.ndarray:
    """A scan's distance to each site: the median over its slices (rows)."""
    return np.median(np.asarray(distances), axis=0)


def export_image_distances(statistics: list[dict], mean: np.ndarray, sq_mean: np.ndarray) -> np.ndarray:
    """(N,) distance of each image to the export's site, from its (N, C) statistics outputs (crosssite.export:
    per image, the spatial mean and mean square of each channel after the site's folded batch norms, mapped
    back to the incoming activations z = mu + (y - bias) sqrt(var + eps) / weight); the layers without
    spatial positions are left out, as image_distances leaves them out."""
    m_y = mean.astype(np.float64)
    v_y = np.clip(sq_mean.astype(np.float64) - m_y ** 2, 0, None)
    per_layer, start = [], 0
    for layer in statistics:
        mu, var, weight, bias = (np.asarray(layer[k]) for k in ("running_mean", "running_var", "weight", "bias"))
        channels = slice(start, start + len(mu))
        start += len(mu)
        if not layer["spatial"]:
            continue
        scale = np.sqrt(var + layer["eps"]) / weight
        m_z, v_z = mu + (m_y[:, channels] - bias) * scale, v_y[:, channels] * scale ** 2
        per_layer.append(symmetric_kl(m_z, v_z + layer["eps"], mu, var + layer["eps"]).mean(1))
    return np.mean(per_layer, axis=0)
