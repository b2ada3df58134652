"""Prediction inputs: what `predict` (both backends), `gradcam`, `adapt` and `export` read and print.

Paths become images and CT scan slices (`expand_inputs`, `list_images`), are decoded as a run's
preprocessing says (`decode_inputs`), and one P(COVID) per image or slice becomes result rows with a
scan's aggregate (`result_rows`).

`--site auto` picks the known site whose batch-norm statistics are closest to the images': for each
known site s the images go through the network with s's batch norms (eval mode); at every SiteBatchNorm
the per-channel mean m and variance v of the incoming activations over the whole set of images are
compared with s's running mean mu and variance sigma^2 by the symmetric Kullback-Leibler divergence of
the two Gaussians, KL(p||q) + KL(q||p) = ((v + d^2) / sigma^2 + (sigma^2 + d^2) / v) / 2 - 1 with
d = m - mu (each variance plus the layer's eps), averaged over channels and then over the layers on
the prediction path (`bn_distances`). An export returns, per image, the spatial mean and mean square
of every channel after the site's batch norms (folded: y = w (z - mu) / s + b with s = sqrt(var + eps));
mapping them back through that affine map gives the mean and variance of the incoming activations z,
compared with (mu, var) by the same divergence (`export_bn_distance`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .config import EVAL_BATCH_SIZE
from .data.sampling import eval_batches
from .data.sites import is_image
from .data.transforms import to_tensor
from .data.volumes import find_scans, is_scan_path, scan_slices
from .errors import CrossSiteError, DataError
from .metrics import label_name
from .preprocessing import Preprocessing
from .scans import AGGREGATE, TOP_K, aggregate, describe

AUTO = "auto"


def expand_inputs(paths: list[Path], slices: str = "all") -> list[tuple[str | None, list[Path]]]:
    """Per input: (scan, its selected slices) for every scan it names (series folder, volume, DICOMDIR),
    or (None, [path]) for an image file."""
    expanded = []
    for path in map(Path, paths):
        if is_scan_path(path) and not is_image(path):
            scans = find_scans(path)
            if not scans:
                raise DataError(f"{path}: no CT scan in it (DICOM series, DICOMDIR, NIfTI or MetaImage volume)")
            expanded += [(scan, scan_slices(scan, slices)[0]) for scan in scans]
        else:
            expanded.append((None, [path]))
    return expanded


def list_images(path: Path, slices: str = "all") -> list[Path]:
    """Every image file under `path` (any layout, searched recursively), or `path` itself if it is one,
    and the `slices` of every CT scan (series folder, volume, DICOMDIR) under it."""
    path = Path(path)
    if path.is_file() and is_image(path):
        images = [path]
    elif path.is_dir() or is_scan_path(path):
        images = sorted(p for p in path.rglob("*") if p.is_file() and is_image(p)) if path.is_dir() else []
        images += [p for scan in find_scans(path) for p in scan_slices(scan, slices)[0]]
    else:
        raise DataError(f"{path}: not an image folder")
    if len(images) < 2:
        raise DataError(f"{path}: holds {len(images)} image(s); batch-norm statistics need at least 2")
    return images


def decode_inputs(images: list[Path], preprocessing: Preprocessing):
    """(inputs as expand_inputs gives them, their images as one eval batch): what every backend feeds
    its network, CT slices through the window of `preprocessing` (the run's, or the export's metadata)."""
    if not images:
        raise CrossSiteError("no images given")
    inputs = expand_inputs(images, preprocessing.slices)
    flat = [p for _, paths in inputs for p in paths]
    return inputs, preprocessing.cache().eval_batch(flat)


def result_rows(inputs, probs, how: str = AGGREGATE, top_k: int = TOP_K, extra: dict | None = None) -> list[dict]:
    """The rows predict_images returns, from the inputs and one P(COVID) per image / slice in their order."""
    probs = iter(np.asarray(probs, dtype=np.float64).tolist())
    rows = []
    for scan, paths in inputs:
        row = [{"path": str(p), "p_covid": q, "label": label_name(q)} for p, q in zip(paths, probs)]
        if scan is not None:
            p_scan = aggregate([r["p_covid"] for r in row], how, top_k)
            row = [{"path": scan, "p_covid": p_scan, "label": label_name(p_scan),
                    "aggregate": describe(how, top_k), "slices": row}]
        rows += [{**r, **(extra or {})} for r in row]
    return rows


def no_site_batch_norm(method_name: str) -> CrossSiteError:
    return CrossSiteError(f"--site {AUTO} needs a model with site-specific batch norm "
                          f"(method {method_name!r} has none): pass a known site with --site")


def symmetric_kl(m, v, mu, var):
    """Symmetric KL divergence of N(m, v) and N(mu, var), elementwise (tensors or arrays)."""
    d2 = (m - mu) ** 2
    return ((v + d2) / var + (var + d2) / v) / 2 - 1


@torch.no_grad()
def bn_distances(method, images: np.ndarray, batch_size: int = EVAL_BATCH_SIZE) -> list[float]:
    """Per known site, the mean symmetric KL between the images' pre-BN activations and its BN statistics."""
    if not method.site_batch_norms(0):
        raise no_site_batch_norm(method.name)
    method.eval()
    where = next(method.parameters()).device
    distances = []
    for site in range(method.num_sites):
        layers = method.site_batch_norms(site)
        # per layer and channel: [count, sum, sum of squares] of the incoming activations
        sums = [[0, 0.0, 0.0] for _ in layers]

        def record(k):
            def hook(_module, inputs):
                x = inputs[0].double().transpose(0, 1).reshape(inputs[0].shape[1], -1)
                sums[k][0] += x.shape[1]
                sums[k][1] += x.sum(1)
                sums[k][2] += (x * x).sum(1)
            return hook

        handles = [layer.register_forward_pre_hook(record(k)) for k, layer in enumerate(layers)]
        try:
            for idx in eval_batches(len(images), batch_size):
                method.predict(to_tensor(images[idx]).to(where), site)
        finally:
            for h in handles:
                h.remove()
        per_layer = []
        for bn, (n, s, q) in zip(layers, sums):
            if n == 0:  # not on the prediction path (the contrastive projection head)
                continue
            mean = s / n
            var = (q / n - mean ** 2).clamp_min(0) + bn.eps
            per_layer.append(symmetric_kl(mean, var, bn.running_mean.double(),
                                           bn.running_var.double() + bn.eps).mean())
        distances.append(float(torch.stack(per_layer).mean()))
    return distances


def export_bn_distance(statistics: list[dict], mean: np.ndarray, sq_mean: np.ndarray) -> float:
    """Mean symmetric KL over layers and channels, from an export's (N, C) statistics outputs and the
    site's batch-norm statistics its metadata carries."""
    m_y = mean.astype(np.float64).mean(0)
    v_y = np.clip(sq_mean.astype(np.float64).mean(0) - m_y ** 2, 0, None)
    per_layer, start = [], 0
    for layer in statistics:
        mu, var, weight, bias = (np.asarray(layer[k]) for k in ("running_mean", "running_var", "weight", "bias"))
        eps, channels = layer["eps"], slice(start, start + len(mu))
        start += len(mu)
        scale = np.sqrt(var + eps) / weight  # z = mu + (y - b) * scale
        m_z, v_z = mu + (m_y[channels] - bias) * scale, v_y[channels] * scale ** 2
        per_layer.append(symmetric_kl(m_z, v_z + eps, mu, var + eps).mean())
    return float(np.mean(per_layer))
