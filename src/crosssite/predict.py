"""Inference on new images with a trained checkpoint.

`--site auto` picks the known site whose batch-norm statistics are closest to the images': for each
known site s the images go through the network with s's batch norms (eval mode); at every SiteBatchNorm
the per-channel mean m and variance v of the incoming activations over the whole set of images are
compared with s's running mean mu and variance sigma^2 by the symmetric Kullback-Leibler divergence of
the two Gaussians, KL(p||q) + KL(q||p) = ((v + d^2) / sigma^2 + (sigma^2 + d^2) / v) / 2 - 1 with
d = m - mu (each variance plus the layer's eps), averaged over channels and then over the layers on
the prediction path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import decisions, ood
from .checkpoint import load_checkpoint, load_trained
from .config import EVAL_BATCH_SIZE
from .data.images import DecodedCache
from .data.sampling import eval_batches
from .data.sites import is_image
from .data.volumes import find_scans, is_scan_path, scan_slices
from .data.transforms import to_tensor
from .errors import CrossSiteError, DataError
from .export import is_torchscript_export
from .inference import predict_proba
from .metrics import label_name
from .scans import AGGREGATE, TOP_K, aggregate, describe

AUTO = "auto"
#: backends that run `crosssite export` files instead of a checkpoint
EXPORT_BACKENDS = ("onnxruntime", "torchscript")
BACKENDS = ("torch", *EXPORT_BACKENDS)


def symmetric_kl(m: torch.Tensor, v: torch.Tensor, mu: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    d2 = (m - mu) ** 2
    return ((v + d2) / var + (var + d2) / v) / 2 - 1


@torch.no_grad()
def bn_distances(method, images: np.ndarray, batch_size: int = EVAL_BATCH_SIZE) -> list[float]:
    """Per known site, the mean symmetric KL between the images' pre-BN activations and its BN statistics."""
    if not method.site_batch_norms(0):
        raise CrossSiteError(f"--site {AUTO} needs a model with site-specific batch norm "
                             f"(method {method.name!r} has none): pass a known site with --site")
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


def decode_inputs(images: list[Path], image_size: int, window, slices: str):
    """(inputs as expand_inputs gives them, their images as one eval batch): what both backends feed
    their network, CT slices through `window` (the run's, or the export's metadata)."""
    if not images:
        raise CrossSiteError("no images given")
    inputs = expand_inputs(images, slices)
    flat = [p for _, paths in inputs for p in paths]
    return inputs, DecodedCache(image_size, window).eval_batch(flat)


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


def predict_images(checkpoint: Path, site: str, images: list[Path], batch_size: int = EVAL_BATCH_SIZE,
                   compile: bool = False, device: str = "auto", how: str = AGGREGATE, top_k: int = TOP_K,
                   backend: str = "torch", threshold: float | None = None) -> list[dict]:
    """One dict per image or scan: path, calibrated P(COVID) and label at the site's operating point
    (crosssite.decisions.decide_rows: also p_uncalibrated, threshold, operating_point, calibration, the
    OOD flag `ood` (None where the model has no OOD thresholds) and `site`, whose batch norms predicted).
    `threshold` overrides the stored operating point.

    A scan (series folder, volume, each series of a DICOMDIR) is predicted slice by slice (the checkpoint's
    window and slice selection); its row's P(COVID) aggregates them (`how`, `top_k`: crosssite.scans)
    and `slices` holds one row per slice.
    `device`: where the network runs (see crosssite.distributed.device; "auto" = a GPU when there is one).
    With site "auto" every row also carries `bn_distance`, each known site's distance.
    `backend` "onnxruntime" / "torchscript": `checkpoint` is an export of that format or a folder of them
    (crosssite.exported; the CPU, the window and slices of the export's metadata), and a `device` or
    `compile` other than the defaults is refused, not ignored.
    """
    if backend in EXPORT_BACKENDS:
        from .exported import predict_with_exports

        torch_only = [flag for flag, given in ((f"--device {device}", device != "auto"), ("--compile", compile))
                      if given]
        if torch_only:  # the exports run as they are, on the CPU: say so rather than ignore the flags
            raise CrossSiteError(f"{' and '.join(torch_only)}: only for --backend torch; --backend {backend} "
                                 "runs the exports on the CPU as they are (drop the flag)")

        return predict_with_exports(checkpoint, site, images, batch_size, how, top_k, backend, threshold)
    if Path(checkpoint).suffix == ".onnx":
        raise CrossSiteError(f"{checkpoint}: not a checkpoint; run ONNX exports with --backend onnxruntime")
    if Path(checkpoint).is_dir():
        raise CrossSiteError(f"{checkpoint}: a folder, not a checkpoint; run a folder of exports with "
                             f"--backend onnxruntime or --backend torchscript")
    if is_torchscript_export(checkpoint):
        raise CrossSiteError(f"{checkpoint}: a TorchScript export, not a checkpoint; run it with --backend torchscript")
    trained = load_trained(checkpoint, device)
    method, config, site_names = trained.method, trained.config, trained.site_names
    if site != AUTO:
        index = trained.site_index(site)
    inputs, batch = decode_inputs(images, config.image_size, config.window, config.slices)
    extra = {}
    if site == AUTO:
        distances = bn_distances(method, batch, batch_size)
        index = int(np.argmin(distances))
        extra = {"site": site_names[index], "bn_distance": dict(zip(site_names, distances))}
    ood_thresholds = [(decisions.for_site(trained.payload, s)["ood"] or {}).get("threshold") for s in site_names]
    image_distances = (ood.image_distances(method, batch, batch_size)
                       if method.site_batch_norms(0) and None not in ood_thresholds else None)
    return decisions.decide_rows(inputs, predict_proba(method, batch, index, batch_size, compile=compile),
                                 decisions.for_site(trained.payload, site_names[index]), image_distances,
                                 ood_thresholds, how, top_k, {"site": site_names[index], **extra}, threshold)


def model_facts(checkpoint: Path, backend: str = "torch") -> dict:
    """What a DICOM SR says about the model behind `checkpoint` (crosssite.dicom_sr.model_facts): from the
    checkpoint, or for an export backend from the metadata of its (first) export."""
    from .dicom_sr import model_facts as facts
    from .io import sha256_of

    if backend in EXPORT_BACKENDS:
        from .export import read_metadata
        from .exported import _exports

        metadata = read_metadata(_exports(Path(checkpoint), backend)[0])
        return facts(metadata["method"], metadata["backbone"], metadata["site_names"], [],
                     metadata.get("checkpoint_sha256", "not recorded (an export older than the record)"))
    payload = load_checkpoint(checkpoint)
    return facts(payload["method"], payload["config"].get("backbone", "covidnet"), payload["site_names"],
                 [a["site"] for a in payload.get("adaptations", [])], sha256_of(checkpoint))
