"""Prediction with exported files (crosssite.export) in onnxruntime: `crosssite predict --backend onnxruntime`.

MODEL is one export (.onnx) or a folder of exports of one checkpoint, one per site. `--site auto`
runs the images through every site's export and picks the site whose batch-norm statistics are
closest, as the PyTorch path does (crosssite.predict): each export returns, per image, the spatial
mean and mean square of every channel after the site's batch norms (folded: y = w (z - mu) / s + b with
s = sqrt(var + eps)); mapping them back through that affine map gives the mean and variance of the
incoming activations z, compared with (mu, var) by the same symmetric KL divergence.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data.images import DecodedCache
from .data.sampling import eval_batches
from .data.transforms import to_tensor
from .errors import CrossSiteError
from .export import load_export, p_covid
from .metrics import label_name
from .predict import AUTO, symmetric_kl


def _exports(model: Path) -> list[Path]:
    if model.is_dir():
        found = sorted(model.glob("*.onnx"))
        if not found:
            raise CrossSiteError(f"{model}: no .onnx export in this folder (make them with crosssite export)")
        return found
    if not model.is_file():
        raise CrossSiteError(f"{model}: no such export file or folder")
    if model.suffix != ".onnx":
        raise CrossSiteError(f"{model}: the onnxruntime backend reads ONNX exports (.onnx); make one with: "
                             f"crosssite export CKPT --site NAME --format onnx --out FILE.onnx")
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


def predict_with_exports(model: Path, site: str, images: list[Path], batch_size: int = 64) -> list[dict]:
    """One dict per image, as crosssite.predict.predict_images, from ONNX exports run in onnxruntime."""
    model = Path(model)
    loaded = {}
    for path in _exports(model):
        run, metadata = load_export(path)
        if metadata["site"] in loaded:
            raise CrossSiteError(f"{model}: two exports of site {metadata['site']!r}; keep one per site")
        loaded[metadata["site"]] = (run, metadata)
    if site != AUTO and site not in loaded:
        raise CrossSiteError(f"{model}: no export of site {site!r} (exports: {', '.join(loaded)}); "
                             f"make one with: crosssite export CKPT --site {site} --out FILE.onnx")
    if not images:
        raise CrossSiteError("no images given")
    candidates = loaded if site == AUTO else {site: loaded[site]}
    sizes = {m["input"]["image_size"] for _, m in candidates.values()}
    if len(sizes) > 1:
        raise CrossSiteError(f"{model}: exports of different image sizes ({sorted(sizes)}); not one checkpoint's")
    batch = DecodedCache(sizes.pop()).eval_batch([Path(p) for p in images])
    outputs = {}
    for name, (run, metadata) in candidates.items():
        if site == AUTO and not metadata["bn_statistics"]:
            raise CrossSiteError(f"--site {AUTO} needs a model with site-specific batch norm "
                                 f"(method {metadata['method']!r} has none): pass a known site with --site")
        parts = [run(to_tensor(batch[idx]).numpy()) for idx in eval_batches(len(batch), batch_size)]
        outputs[name] = [np.concatenate(arrays) for arrays in zip(*parts)]
    extra = {}
    if site == AUTO:
        distances = {name: bn_distance(candidates[name][1]["bn_statistics"], out[1], out[2])
                     for name, out in outputs.items()}
        site = min(distances, key=distances.get)
        extra = {"site": site, "bn_distance": distances}
    probs = p_covid(outputs[site][0])
    return [{"path": str(p), "p_covid": float(q), "label": label_name(q), **extra}
            for p, q in zip(images, probs)]
