"""`crosssite predict`: P(COVID) for new images and CT scans, from a checkpoint or from exports.

The torch backend runs a checkpoint; every export format's backend (crosssite.export_formats) runs
that format's files (crosssite.exported). Inputs, `--site auto` and the result rows are shared by both
(crosssite.inputs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import decisions, ood
from .checkpoint import load_checkpoint, load_trained
from .config import EVAL_BATCH_SIZE
from .errors import CrossSiteError
from .export_formats import export_backends, format_of, format_of_backend, read_metadata
from .exported import predict_with_exports
from .inference import predict_proba
from .inputs import AUTO, bn_distances, decode_inputs
from .preprocessing import Preprocessing
from .scans import AGGREGATE, TOP_K

TORCH = "torch"


def backends() -> list[str]:
    """--backend's choices: torch, then one per export format."""
    return [TORCH, *export_backends()]


def load_for_prediction(checkpoint: Path, device: str = "auto"):
    """The trained model of a checkpoint for the torch backend (an export or a folder: which backend runs it)."""
    _refuse_non_checkpoint(Path(checkpoint))
    return load_trained(checkpoint, device)


def _refuse_non_checkpoint(checkpoint: Path) -> None:
    """An export or a folder given to the torch backend: say which backend runs it."""
    if checkpoint.is_dir():
        others = " or ".join(f"--backend {b}" for b in export_backends())
        raise CrossSiteError(f"{checkpoint}: a folder, not a checkpoint; run a folder of exports with {others}")
    fmt = format_of(checkpoint)
    if fmt is not None:
        raise CrossSiteError(f"{checkpoint}: one of the {fmt.files}, not a checkpoint; run it with --backend "
                             f"{fmt.backend}")


def predict_images(checkpoint: Path, site: str, images: list[Path], batch_size: int = EVAL_BATCH_SIZE,
                   compile: bool = False, device: str = "auto", how: str = AGGREGATE, top_k: int = TOP_K,
                   backend: str = TORCH, threshold: float | None = None, trained=None) -> list[dict]:
    """One dict per image or scan: path, calibrated P(COVID) and label at the site's operating point
    (crosssite.decisions.decide_rows: also p_uncalibrated, threshold, operating_point, calibration, the
    OOD flag `ood` (None where the model has no OOD thresholds) and `site`, whose batch norms predicted).
    `threshold` overrides the stored operating point.

    A scan (series folder, volume, each series of a DICOMDIR) is predicted slice by slice (the checkpoint's
    window and slice selection); its row's P(COVID) aggregates them (`how`, `top_k`: crosssite.scans)
    and `slices` holds one row per slice.
    `device`: where the network runs (see crosssite.distributed.device; "auto" = a GPU when there is one).
    With site "auto" every row also carries `bn_distance`, each known site's distance.
    Another `backend` (one per export format): `checkpoint` is an export of that format or a folder of them
    (crosssite.exported; the CPU, the window and slices of the export's metadata), and a `device` or
    `compile` other than the defaults is refused, not ignored.
    `trained`: the checkpoint's model, already loaded by load_for_prediction (a caller that uses it too).
    """
    checkpoint = Path(checkpoint)
    if backend != TORCH:
        if backend not in export_backends():
            raise CrossSiteError(f"--backend {backend!r}: expected one of {', '.join(backends())}")
        torch_only = [flag for flag, given in ((f"--device {device}", device != "auto"), ("--compile", compile))
                      if given]
        if torch_only:  # the exports run as they are, on the CPU: say so rather than ignore the flags
            raise CrossSiteError(f"{' and '.join(torch_only)}: only for --backend torch; --backend {backend} "
                                 "runs the exports on the CPU as they are (drop the flag)")
        return predict_with_exports(checkpoint, site, images, batch_size, how, top_k, backend, threshold)
    trained = trained or load_for_prediction(checkpoint, device)
    method, site_names = trained.method, trained.site_names
    if site != AUTO:
        index = trained.site_index(site)
    inputs, batch = decode_inputs(images, Preprocessing.of(trained.config))
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


def model_facts(checkpoint: Path, backend: str = TORCH) -> dict:
    """What a DICOM SR says about the model behind `checkpoint` (crosssite.dicom_sr.model_facts): from the
    checkpoint, or for an export backend from the metadata of its (first) export."""
    from .dicom_sr import model_facts as facts
    from .io import sha256_of

    if backend != TORCH:
        from .exported import _exports

        metadata = read_metadata(_exports(Path(checkpoint), format_of_backend(backend))[0])
        return facts(metadata["method"], metadata["backbone"], metadata["site_names"], [],
                     metadata.get("checkpoint_sha256", "not recorded (an export older than the record)"))
    payload = load_checkpoint(checkpoint)
    return facts(payload["method"], payload["config"].get("backbone", "covidnet"), payload["site_names"],
                 [a["site"] for a in payload.get("adaptations", [])], sha256_of(checkpoint))
