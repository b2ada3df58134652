"""Deployment files: one site's folded network in an export format (crosssite.export_formats: ONNX,
TorchScript), checked against PyTorch first.

The exported network is crosssite's fast predictor for one site (crosssite.inference: that site's batch
norms folded into the layers before them) in torch's own layers (`as_torch_layers`), so that exporters
and runtimes see only standard operators. Its input is the preprocessed image batch, float32
(batch, 3, S, S): the gray image resized to S x S (bilinear), scaled to [0, 1], replicated to three
channels and normalised with the ImageNet mean and std (crosssite.data.transforms.to_tensor). Outputs:

  logits       (batch, 2): NonCOVID, COVID; P(COVID) = softmax(logits)[:, 1]
  bn_mean      (batch, C): per image, the spatial mean of every channel leaving each site-specific
  bn_sq_mean   (batch, C):   batch norm (after folding: the layer it was folded into), and of its square

The two statistics outputs (absent for a method without site-specific batch norm) let `predict --site
auto` compare new images with each site's batch-norm statistics without PyTorch (crosssite.exported).

Metadata travel inside the file, as one JSON document (each format says where it keeps it): the input's
shape and preprocessing (crosssite.preprocessing), the site, the method and
its config, the site's batch-norm statistics and the agreement measured when the file was written.

Every export is run on real images (the run's own test images of that site from split.json, else the
shipped sample) beside crosssite's PyTorch predictor; a file whose P(COVID) differs by more than
TOLERANCE on any image, or which changes any label, is refused and never written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import run_folder
from .checkpoint import load_trained
from .config import EVAL_BATCH_SIZE
from .data.sampling import eval_batches
from .data.sites import SAMPLE_DATA, is_image
from .data.transforms import to_tensor
from .errors import CrossSiteError
from .export_formats import (EXPORT_FORMAT, EXPORT_VERSION, INPUT, OUTPUTS, export_format, load_export, p_covid,
                             set_metadata)
from .inference import fold_batch_norms, predict_proba, site_network
from .io import atomic_write, sha256_of
from .metrics import is_covid
from .models.layers import as_torch_layers
from .models.site_bn import SiteBatchNorm
from .preprocessing import Preprocessing

#: largest |P(COVID) difference| allowed between an export and the PyTorch predictor on any check image
TOLERANCE = 1e-4


class _Tap(nn.Module):
    """Passes its layer's output on and keeps it, so the export can report its channel statistics."""

    def __init__(self, layer: nn.Module, kept: list):
        super().__init__()
        self.layer = layer
        self.kept = kept

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layer(x)
        self.kept.append(y)
        return y


class _AveragePoolMatrices(nn.Module):
    """Adaptive average pooling of a fixed input size as two matrix products (A_h x A_w^T).

    The legacy ONNX exporter refuses adaptive pooling whose output side does not divide the input side
    (the redesign pools 7 x 7 to 2 x 2 at 224 px); for a known input size it is this fixed linear map.
    """

    def __init__(self, in_size: tuple[int, int], out_size: tuple[int, int]):
        super().__init__()
        self.register_buffer("rows", self._averaging(in_size[0], out_size[0]))
        self.register_buffer("cols", self._averaging(in_size[1], out_size[1]).T.contiguous())

    @staticmethod
    def _averaging(n_in: int, n_out: int) -> torch.Tensor:
        matrix = torch.zeros(n_out, n_in)
        for i in range(n_out):  # torch's bins: [floor(i n_in / n_out), ceil((i + 1) n_in / n_out))
            start, end = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
            matrix[i, start:end] = 1.0 / (end - start)
        return matrix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rows @ x @ self.cols


class ExportNetwork(nn.Module):
    """The folded network of one site, returning logits and (if tapped) per-image channel statistics."""

    def __init__(self, net: nn.Module, kept: list):
        super().__init__()
        self.net = net
        self.kept = kept

    @property
    def outputs(self) -> tuple[str, ...]:
        """The names of what forward returns: logits, and the statistics outputs if any batch norm is tapped."""
        return OUTPUTS if any(isinstance(m, _Tap) for m in self.modules()) else OUTPUTS[:1]

    def forward(self, x: torch.Tensor):
        self.kept.clear()
        logits = self.net(x)
        if not self.kept:
            return logits
        flat = [y.flatten(2) if y.dim() > 2 else y.unsqueeze(2) for y in self.kept]  # (batch, C, positions)
        mean = torch.cat([y.mean(2) for y in flat], 1)
        sq_mean = torch.cat([(y * y).mean(2) for y in flat], 1)
        return logits, mean, sq_mean


def export_network(method, site: int) -> tuple[ExportNetwork, list[dict]]:
    """The network to export for `site` and, for each batch norm its statistics outputs cover (in the order
    of their channels), that site's running mean and var, eps, weight and bias."""
    with method.site_scope(site):
        source = method.network(site)
        names = [name for name, m in source.named_modules() if isinstance(m, SiteBatchNorm)]
    net = fold_batch_norms(as_torch_layers(site_network(method, site)).eval())
    kept: list = []
    taps = {}
    for name in names:  # the folded copy keeps the module names: a folded batch norm is an Identity there
        parent, _, child = name.rpartition(".")
        owner = net.get_submodule(parent)
        taps[name] = _Tap(getattr(owner, child), kept)
        setattr(owner, child, taps[name])
    model = ExportNetwork(net, kept).eval()
    # a trial run finds the batch norms on the prediction path (not the contrastive projection head), in order,
    # and the input size of every adaptive pooling
    called: list[str] = []
    spatial: dict[str, bool] = {}  # whether the layer's output has positions (per-image OOD uses only those)

    def seen(name):
        def hook(_module, _inputs, output):
            called.append(name)
            spatial[name] = output.dim() > 2
        return hook

    hooks = [tap.register_forward_hook(seen(name)) for name, tap in taps.items()]
    pool_inputs: dict[str, tuple[int, int]] = {}
    pools = {name: m for name, m in net.named_modules() if isinstance(m, nn.AdaptiveAvgPool2d)}
    hooks += [pool.register_forward_pre_hook(lambda _m, inputs, n=name: pool_inputs.update({n: inputs[0].shape[-2:]}))
              for name, pool in pools.items()]
    with torch.no_grad():
        model(torch.zeros(1, 3, method.config.image_size, method.config.image_size))
    for hook in hooks:
        hook.remove()
    for name, tap in taps.items():
        if name not in called:
            parent, _, child = name.rpartition(".")
            setattr(net.get_submodule(parent), child, tap.layer)
    for name, pool in pools.items():
        if name in pool_inputs:
            out_size = torch.nn.modules.utils._pair(pool.output_size)
            parent, _, child = name.rpartition(".")
            setattr(net.get_submodule(parent), child, _AveragePoolMatrices(tuple(pool_inputs[name]), out_size))
    statistics = []
    for name in called:
        bn = source.get_submodule(name).bns[site]
        statistics.append({"layer": name, "eps": float(bn.eps), "spatial": spatial[name],
                           **{k: getattr(bn, k).detach().double().tolist()
                              for k in ("running_mean", "running_var", "weight", "bias")}})
    return model, statistics


def check_images(checkpoint: Path, site: str) -> tuple[list[Path], str]:
    """The images an export is checked on: the run's test images of `site` (split.json beside the
    checkpoint), else the shipped sample's images of that site, else the whole shipped sample."""
    split_file = Path(checkpoint).parent / run_folder.SPLIT
    try:
        paths = [Path(p) for p in run_folder.read_split_paths(split_file)[site]["test"] if Path(p).is_file()]
    except (CrossSiteError, KeyError, TypeError):
        paths = []
    if paths:
        return paths, f"the run's test images of {site} ({split_file})"
    folder = SAMPLE_DATA / site if (SAMPLE_DATA / site).is_dir() else SAMPLE_DATA
    return sorted(p for p in folder.rglob("*") if is_image(p)), f"the shipped sample ({folder})"


def export_checkpoint(checkpoint: Path, site: str, fmt: str, out: Path, batch_size: int = EVAL_BATCH_SIZE) -> dict:
    """Export one site's network of `checkpoint` to `out`, checked against PyTorch; return its metadata."""
    checkpoint, out = Path(checkpoint), Path(out)
    form = export_format(fmt)
    form.check_installed()
    trained = load_trained(checkpoint)
    method, config, site_names, payload = trained.method, trained.config, trained.site_names, trained.payload
    index = trained.site_index(site)
    if out.is_dir():
        raise CrossSiteError(f"--out {out}: is a folder; give the export's file name, e.g. {out / (site + form.suffix)}")
    model, statistics = export_network(method, index)
    paths, source = check_images(checkpoint, site)
    preprocessing = Preprocessing.of(config)
    images = preprocessing.cache().eval_batch(paths)  # CT test slices: the run's window
    size = preprocessing.image_size
    metadata = {
        "format": EXPORT_FORMAT, "version": EXPORT_VERSION,
        "site": site, "site_names": site_names, "method": payload["method"], "backbone": config.backbone,
        "config": config.to_dict(), "checkpoint": str(checkpoint), "epoch": payload.get("epoch"),
        "input": {"name": INPUT, "shape": ["batch", 3, size, size], "dtype": "float32", **preprocessing.to_dict()},
        "outputs": {"logits": "(batch, 2): NonCOVID, COVID; P(COVID) = softmax(logits)[:, 1]",
                    **({"bn_mean": "(batch, C): per image, spatial mean of each channel after the site batch norms "
                                   "of bn_statistics (concatenated in that order)",
                        "bn_sq_mean": "(batch, C): the same for the squared values"} if statistics else {})},
        "bn_statistics": statistics,
        # every site's calibration map, operating point and OOD threshold (crosssite.decisions): the flag
        # needs all sites' thresholds
        "decisions": payload.get("decisions", {}),
        "checkpoint_sha256": sha256_of(checkpoint),
    }
    reference = predict_proba(method, images, index, batch_size)

    def write_checked(tmp: Path) -> None:
        metadata["agreement"] = {"images": len(paths), "source": source, "tolerance": TOLERANCE}
        form.write(model, to_tensor(images[:1]), tmp)
        set_metadata(tmp, metadata, form)
        run, _ = load_export(tmp, fmt=form)
        exported = np.concatenate([p_covid(run(to_tensor(images[idx]).numpy())[0])
                                   for idx in eval_batches(len(images), batch_size)])
        diff = float(np.abs(exported - reference).max())
        flips = int((is_covid(exported) != is_covid(reference)).sum())
        if diff > TOLERANCE or flips:
            raise CrossSiteError(
                f"{out}: not written: the {fmt} export disagrees with PyTorch on {source}: max |P(COVID) "
                f"difference| {diff:.2e} (tolerance {TOLERANCE:.0e}), {flips} label(s) changed")
        metadata["agreement"].update(max_abs_diff=diff, label_flips=flips)
        set_metadata(tmp, metadata, form)

    try:
        atomic_write(out, write_checked)
    except OSError as e:
        raise CrossSiteError(f"--out {out}: cannot write ({e.strerror})") from None
    return metadata

