"""Inference with exported files (crosssite.export): `crosssite predict --backend onnxruntime | torchscript`.

MODEL is one export or a folder of exports of one checkpoint, one per site, in the export format the
backend runs (crosssite.export_formats), on the CPU. Images and CT scans are read as the torch backend
reads them (crosssite.inputs), scans with the window and slice selection the export's metadata names.
`--site auto` runs the images through every site's export and picks the site whose batch-norm
statistics are closest, as the PyTorch path does (crosssite.inputs.export_bn_distance).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import decisions, ood
from .config import EVAL_BATCH_SIZE
from .data.sampling import eval_batches
from .data.transforms import to_tensor
from .errors import CrossSiteError
from .export_formats import ExportFormat, format_of_backend, load_export, p_covid, preprocessing_of
from .inputs import AUTO, decode_inputs, export_bn_distance, no_site_batch_norm
from .scans import AGGREGATE, TOP_K


def _exports(model: Path, fmt: ExportFormat) -> list[Path]:
    if model.is_dir():
        found = sorted(p for p in model.iterdir() if p.is_file() and fmt.recognizes(p))
        if not found:
            raise CrossSiteError(f"{model}: no {fmt.files} in this folder (make them with crosssite export "
                                 f"--format {fmt.name})")
        return found
    if not model.is_file():
        raise CrossSiteError(f"{model}: no such export file or folder")
    if not fmt.recognizes(model):
        raise CrossSiteError(f"{model}: the {fmt.backend} backend reads {fmt.files}; make one with: "
                             f"crosssite export CKPT --site NAME --format {fmt.name} --out FILE")
    return [model]


def predict_with_exports(model: Path, site: str, images: list[Path], batch_size: int = EVAL_BATCH_SIZE,
                         how: str = AGGREGATE, top_k: int = TOP_K, backend: str = "onnxruntime",
                         threshold: float | None = None) -> list[dict]:
    """The rows of crosssite.predict.predict_images, from exports run by `backend`: decided with the
    calibration map, operating point (or `threshold`) and OOD thresholds the export's metadata carries;
    the OOD flag only where the exports of every site of the checkpoint are given."""
    model, fmt = Path(model), format_of_backend(backend)
    loaded = {}
    for path in _exports(model, fmt):
        run, metadata = load_export(path, fmt=fmt)
        if metadata["site"] in loaded:
            raise CrossSiteError(f"{model}: two exports of site {metadata['site']!r}; keep one per site")
        loaded[metadata["site"]] = (run, metadata)
    if site != AUTO and site not in loaded:
        raise CrossSiteError(f"{model}: no export of site {site!r} (exports: {', '.join(loaded)}); make one with: "
                             f"crosssite export CKPT --site {site} --format {fmt.name} --out FILE")
    candidates = loaded if site == AUTO else {site: loaded[site]}
    # the OOD flag compares with every site of the checkpoint: run them all where all are here with thresholds
    any_metadata = next(iter(loaded.values()))[1]
    thresholds = [(decisions.for_site(any_metadata, s)["ood"] or {}).get("threshold") for s in any_metadata["site_names"]]
    flaggable = None not in thresholds and set(any_metadata["site_names"]) <= set(loaded)
    runs = loaded if flaggable else candidates
    settings = {preprocessing_of(metadata) for _, metadata in candidates.values()}
    if len(settings) > 1:
        raise CrossSiteError(f"{model}: exports of different image sizes or CT windows / slices "
                             f"({', '.join(map(str, sorted(settings, key=str)))}); not one checkpoint's")
    inputs, batch = decode_inputs(images, settings.pop())
    outputs = {}
    for name, (run, metadata) in runs.items():
        if site == AUTO and not metadata["bn_statistics"]:
            raise no_site_batch_norm(metadata["method"])
        parts = [run(to_tensor(batch[idx]).numpy()) for idx in eval_batches(len(batch), batch_size)]
        outputs[name] = [np.concatenate(arrays) for arrays in zip(*parts)]
    extra = {}
    if site == AUTO:
        distances = {name: export_bn_distance(candidates[name][1]["bn_statistics"], out[1], out[2])
                     for name, out in outputs.items() if name in candidates}
        site = min(distances, key=distances.get)
        extra = {"site": site, "bn_distance": distances}
    image_distances = (np.stack([ood.export_image_distances(loaded[s][1]["bn_statistics"], *outputs[s][1:3])
                                 for s in any_metadata["site_names"]], axis=1) if flaggable else None)
    return decisions.decide_rows(inputs, p_covid(outputs[site][0]), decisions.for_site(loaded[site][1], site),
                                 image_distances, thresholds, how, top_k, {"site": site, **extra}, threshold)
