"""Inference with exported files (crosssite.export): `crosssite predict --backend onnxruntime | torchscript`.

MODEL is one export or a folder of exports of one checkpoint, one per site: ONNX files (.onnx) run in
onnxruntime, TorchScript files in torch.jit, both on the CPU. Images and CT scans are read as the torch
backend reads them (crosssite.predict.decode_inputs / result_rows), scans with the window and slice
selection the export's metadata names. `--site auto`
runs the images through every site's export and picks the site whose batch-norm statistics are
closest, as the PyTorch path does (crosssite.predict): each export returns, per image, the spatial
mean and mean square of every channel after the site's batch norms (folded: y = w (z - mu) / s + b with
s = sqrt(var + eps)); mapping them back through that affine map gives the mean and variance of the
incoming activations z, compared with (mu, var) by the same symmetric KL divergence.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import decisions, ood
from .config import EVAL_BATCH_SIZE
from .data.sampling import eval_batches
from .data.transforms import to_tensor
from .errors import CrossSiteError
from .export import is_torchscript_export, load_export, p_covid, scan_settings
from .predict import AUTO, decode_inputs, symmetric_kl
from .scans import AGGREGATE, TOP_K

#: per backend: the files it runs, how to tell them, the export --format that makes them
KINDS = {
    "onnxruntime": ("ONNX exports (.onnx)", lambda path: path.suffix == ".onnx", "onnx"),
    "torchscript": ("TorchScript exports", is_torchscript_export, "torchscript"),
}


def _exports(model: Path, backend: str = "onnxruntime") -> list[Path]:
    what, accepts, fmt = KINDS[backend]
    if model.is_dir():
        found = sorted(p for p in model.iterdir() if p.is_file() and accepts(p))
        if not found:
            raise CrossSiteError(f"{model}: no {what} in this folder (make them with crosssite export --format {fmt})")
        return found
    if not model.is_file():
        raise CrossSiteError(f"{model}: no such export file or folder")
    if not accepts(model):
        raise CrossSiteError(f"{model}: the {backend} backend reads {what}; make one with: "
                             f"crosssite export CKPT --site NAME --format {fmt} --out FILE")
    return [model]


def bn_distance(statistics: list[dict], mean: np.ndarray, sq_mean: np.ndarray) -> float:
    """Mean symmetric KL over layers and channels, from the export's (N, C) statistics outputs."""
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


def _input_settings(metadata: dict) -> tuple[int, tuple[float, float], str]:
    """(image size, CT window, slice selection) an export's input is prepared with."""
    window, slices = scan_settings(metadata)
    return metadata["input"]["image_size"], tuple(window), slices


def predict_with_exports(model: Path, site: str, images: list[Path], batch_size: int = EVAL_BATCH_SIZE,
                         how: str = AGGREGATE, top_k: int = TOP_K, backend: str = "onnxruntime",
                         threshold: float | None = None) -> list[dict]:
    """The rows of crosssite.predict.predict_images, from exports run by `backend`: decided with the
    calibration map, operating point (or `threshold`) and OOD thresholds the export's metadata carries;
    the OOD flag only where the exports of every site of the checkpoint are given."""
    model = Path(model)
    loaded = {}
    for path in _exports(model, backend):
        run, metadata = load_export(path)
        if metadata["site"] in loaded:
            raise CrossSiteError(f"{model}: two exports of site {metadata['site']!r}; keep one per site")
        loaded[metadata["site"]] = (run, metadata)
    if site != AUTO and site not in loaded:
        raise CrossSiteError(f"{model}: no export of site {site!r} (exports: {', '.join(loaded)}); make one with: "
                             f"crosssite export CKPT --site {site} --format {KINDS[backend][2]} --out FILE")
    candidates = loaded if site == AUTO else {site: loaded[site]}
    # the OOD flag compares with every site of the checkpoint: run them all where all are here with thresholds
    any_metadata = next(iter(loaded.values()))[1]
    thresholds = [(decisions.for_site(any_metadata, s)["ood"] or {}).get("threshold") for s in any_metadata["site_names"]]
    flaggable = None not in thresholds and set(any_metadata["site_names"]) <= set(loaded)
    runs = loaded if flaggable else candidates
    settings = {_input_settings(metadata) for _, metadata in candidates.values()}
    if len(settings) > 1:
        raise CrossSiteError(f"{model}: exports of different image sizes or CT windows / slices "
                             f"({', '.join(map(str, sorted(settings)))}); not one checkpoint's")
    inputs, batch = decode_inputs(images, *settings.pop())
    outputs = {}
    for name, (run, metadata) in runs.items():
        if site == AUTO and not metadata["bn_statistics"]:
            raise CrossSiteError(f"--site {AUTO} needs a model with site-specific batch norm "
                                 f"(method {metadata['method']!r} has none): pass a known site with --site")
        parts = [run(to_tensor(batch[idx]).numpy()) for idx in eval_batches(len(batch), batch_size)]
        outputs[name] = [np.concatenate(arrays) for arrays in zip(*parts)]
    extra = {}
    if site == AUTO:
        distances = {name: bn_distance(candidates[name][1]["bn_statistics"], out[1], out[2])
                     for name, out in outputs.items() if name in candidates}
        site = min(distances, key=distances.get)
        extra = {"site": site, "bn_distance": distances}
    image_distances = (np.stack([ood.export_image_distances(loaded[s][1]["bn_statistics"], *outputs[s][1:3])
                                 for s in any_metadata["site_names"]], axis=1) if flaggable else None)
    return decisions.decide_rows(inputs, p_covid(outputs[site][0]), decisions.for_site(loaded[site][1], site),
                                 image_distances, thresholds, how, top_k, {"site": site, **extra}, threshold)
