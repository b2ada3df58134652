"""Deployment files: one site's folded network as ONNX or TorchScript, checked against PyTorch first.

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

Metadata travel inside the file, as one JSON document under the key `crosssite` (ONNX metadata_props;
TorchScript extra file `crosssite.json`): the input's shape and preprocessing, the site, the method and
its config, the site's batch-norm statistics and the agreement measured when the file was written.

Every export is run on real images (the run's own test images of that site from split.json, else the
shipped sample) beside crosssite's PyTorch predictor; a file whose P(COVID) differs by more than
TOLERANCE on any image, or which changes any label, is refused and never written.
"""

from __future__ import annotations

import contextlib
import json
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import load_trained
from .config import EVAL_BATCH_SIZE
from .data.images import DecodedCache
from .data.sampling import eval_batches
from .data.sites import SAMPLE_DATA, is_image
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD, to_tensor
from .errors import CrossSiteError
from .inference import fold_batch_norms, predict_proba, site_network
from .io import atomic_write, sha256_of
from .metrics import is_covid
from .models.layers import as_torch_layers
from .models.site_bn import SiteBatchNorm

FORMATS = ("onnx", "torchscript")
METADATA_KEY = "crosssite"
TORCHSCRIPT_METADATA = "crosssite.json"
EXPORT_FORMAT = "crosssite-export"
EXPORT_VERSION = 1
#: largest |P(COVID) difference| allowed between an export and the PyTorch predictor on any check image
TOLERANCE = 1e-4
ONNX_OPSET = 17
ONNX_EXTRA = "pip install -e '.[onnx]'"
INPUT = "image"
OUTPUTS = ("logits", "bn_mean", "bn_sq_mean")


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
    split_file = Path(checkpoint).parent / "split.json"
    try:
        stored = json.loads(split_file.read_text(encoding="utf-8"))["sites"][site]["test"]
        paths = [Path(p) for p in stored if Path(p).is_file()]
    except (OSError, ValueError, KeyError, TypeError):
        paths = []
    if paths:
        return paths, f"the run's test images of {site} ({split_file})"
    folder = SAMPLE_DATA / site if (SAMPLE_DATA / site).is_dir() else SAMPLE_DATA
    return sorted(p for p in folder.rglob("*") if is_image(p)), f"the shipped sample ({folder})"


def write_onnx(model: ExportNetwork, example: torch.Tensor, path: Path) -> None:
    outputs = list(OUTPUTS if _tapped(model) else OUTPUTS[:1])
    with warnings.catch_warnings():  # the legacy exporter's deprecation note and the input check's trace note
        warnings.simplefilter("ignore")
        # the TorchScript-based exporter (dynamo=False): the dynamo one needs onnxscript, another dependency
        torch.onnx.export(model, (example,), str(path), input_names=[INPUT], output_names=outputs,
                          dynamic_axes={name: {0: "batch"} for name in [INPUT, *outputs]},
                          opset_version=ONNX_OPSET, dynamo=False)


def _write_torchscript(model: ExportNetwork, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the input check's trace note
        torch.jit.save(torch.jit.trace(model, (example,), check_trace=False), str(path))


@contextlib.contextmanager
def _deprecation_notes_silenced():
    """torch 2.13 calls torch.jit.save/load deprecated; the user of an export cannot act on that note."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _tapped(model: ExportNetwork) -> bool:
    return any(isinstance(m, _Tap) for m in model.modules())


def _set_metadata(path: Path, metadata: dict) -> None:
    """Put the metadata document into an export file (replacing any earlier one)."""
    text = json.dumps(metadata)
    if zipfile.is_zipfile(path):
        with _deprecation_notes_silenced():
            torch.jit.save(torch.jit.load(str(path), map_location="cpu"), str(path),
                           _extra_files={TORCHSCRIPT_METADATA: text})
        return
    import onnx

    proto = onnx.load(str(path))
    kept = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    proto.metadata_props.add(key=METADATA_KEY, value=text)
    onnx.save(proto, str(path))


def load_export(path: Path, threads: int | None = None):
    """(run, metadata): `run` maps a (N, 3, S, S) float32 array to the export's outputs (list of arrays)."""
    path = Path(path)
    if not path.is_file():
        raise CrossSiteError(f"{path}: no such export file")
    if zipfile.is_zipfile(path):  # TorchScript archives are zip files
        extra = {TORCHSCRIPT_METADATA: ""}
        try:
            with _deprecation_notes_silenced():
                module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        except RuntimeError:
            raise CrossSiteError(f"{path}: not a crosssite export (not a TorchScript or ONNX file)") from None

        def run(x: np.ndarray) -> list[np.ndarray]:
            with torch.no_grad():
                out = module(torch.from_numpy(x))
            return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]

        return run, _parse_metadata(path, extra[TORCHSCRIPT_METADATA])
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception:  # onnxruntime has its own exception types for a file that is not ONNX
        raise CrossSiteError(f"{path}: not a crosssite export (not a TorchScript or ONNX file)") from None
    metadata = _parse_metadata(path, session.get_modelmeta().custom_metadata_map.get(METADATA_KEY))
    return (lambda x: session.run(None, {INPUT: x})), metadata


def _parse_metadata(path: Path, text: str | None) -> dict:
    if not text:
        raise CrossSiteError(f"{path}: not a crosssite export (no {METADATA_KEY!r} metadata); "
                             f"make one with: crosssite export CKPT --site NAME --out FILE")
    metadata = json.loads(text)
    if metadata.get("format") != EXPORT_FORMAT or metadata.get("version") != EXPORT_VERSION:
        raise CrossSiteError(f"{path}: export format {metadata.get('format')} version {metadata.get('version')} "
                             f"is not supported (expected {EXPORT_FORMAT} {EXPORT_VERSION})")
    return metadata


def scan_settings(metadata: dict) -> tuple[list[float], str]:
    """(HU window, slice selection) that CT scans get before an export sees them: the input's, or for
    files written before the input named them, the config's (the same values)."""
    source = metadata["input"] if "window" in metadata["input"] else metadata["config"]
    return source["window"], source["slices"]


def is_torchscript_export(path: Path) -> bool:
    """A TorchScript archive with crosssite metadata (a checkpoint is a zip file too, without it)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith(f"/extra/{TORCHSCRIPT_METADATA}") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def read_metadata(path: Path) -> dict:
    """The crosssite metadata of an export file (ONNX or TorchScript)."""
    return load_export(path)[1]


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise CrossSiteError(f"the onnxruntime backend needs the optional extra: {ONNX_EXTRA}") from None
    return onnxruntime


def export_checkpoint(checkpoint: Path, site: str, fmt: str, out: Path, batch_size: int = EVAL_BATCH_SIZE) -> dict:
    """Export one site's network of `checkpoint` to `out`, checked against PyTorch; return its metadata."""
    checkpoint, out = Path(checkpoint), Path(out)
    if fmt not in FORMATS:
        raise CrossSiteError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401  (the writer adds the metadata with it)
        except ImportError:
            raise CrossSiteError(f"ONNX export needs the optional extra: {ONNX_EXTRA}") from None
        import_onnxruntime()  # the agreement check runs the file
    trained = load_trained(checkpoint)
    method, config, site_names, payload = trained.method, trained.config, trained.site_names, trained.payload
    index = trained.site_index(site)
    if out.is_dir():
        raise CrossSiteError(f"--out {out}: is a folder; give the export's file name, e.g. {out / (site + '.' + fmt)}")
    model, statistics = export_network(method, index)
    paths, source = check_images(checkpoint, site)
    images = DecodedCache(config.image_size, config.window).eval_batch(paths)  # CT test slices: the run's window
    size = config.image_size
    metadata = {
        "format": EXPORT_FORMAT, "version": EXPORT_VERSION,
        "site": site, "site_names": site_names, "method": payload["method"], "backbone": config.backbone,
        "config": config.to_dict(), "checkpoint": str(checkpoint), "epoch": payload.get("epoch"),
        "input": {"name": INPUT, "shape": ["batch", 3, size, size], "dtype": "float32", "image_size": size,
                  "preprocessing": "gray image resized to image_size x image_size (bilinear), scaled to [0, 1], "
                                   "replicated to 3 channels, (x - mean) / std per channel; a CT scan's slices "
                                   "(slices: 'all' or START:STOP[:STEP]) are gray through the HU window "
                                   "[width, level]: level - width/2 -> 0, level + width/2 -> 255",
                  "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                  "window": [float(v) for v in config.window], "slices": config.slices},
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
    write = write_onnx if fmt == "onnx" else _write_torchscript

    def write_checked(tmp: Path) -> None:
        metadata["agreement"] = {"images": len(paths), "source": source, "tolerance": TOLERANCE}
        write(model, to_tensor(images[:1]), tmp)
        _set_metadata(tmp, metadata)
        run, _ = load_export(tmp)
        exported = np.concatenate([p_covid(run(to_tensor(images[idx]).numpy())[0])
                                   for idx in eval_batches(len(images), batch_size)])
        diff = float(np.abs(exported - reference).max())
        flips = int((is_covid(exported) != is_covid(reference)).sum())
        if diff > TOLERANCE or flips:
            raise CrossSiteError(
                f"{out}: not written: the {fmt} export disagrees with PyTorch on {source}: max |P(COVID) "
                f"difference| {diff:.2e} (tolerance {TOLERANCE:.0e}), {flips} label(s) changed")
        metadata["agreement"].update(max_abs_diff=diff, label_flips=flips)
        _set_metadata(tmp, metadata)

    try:
        atomic_write(out, write_checked)
    except OSError as e:
        raise CrossSiteError(f"--out {out}: cannot write ({e.strerror})") from None
    return metadata


def p_covid(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted[:, 1] / shifted.sum(axis=1)
