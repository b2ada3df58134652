"""Where in a scan the model looked, as DICOM Secondary Capture images in the scan's study (the dicom-out extra).

For every DICOM series that predict reads, the slices its P(COVID) rests on (the TOP_K most suspicious,
crosssite.scans) get their Grad-CAM of COVID (crosssite.gradcam) blended onto the windowed slice, as the
`gradcam` command draws it, and each becomes one RGB Secondary Capture image: the source's patient and
study copied (highdicom), a series of its own per source series, the explained slice referenced (Source
Image Sequence), "NOT FOR CLINICAL USE" in the series description and the image comments. Slices are
shown in crosssite's orientation contract (docs/ct_inputs.md: rows anterior to posterior, columns from the
patient's right to left), so PatientOrientation is L\\P whatever the source's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .dicom_sr import NOT_FOR_CLINICAL_USE, SERIES_NUMBER, complete_header
from .errors import require_extra
from .saliency import ALPHA, COLOUR_MAP

SC_SERIES_NUMBER = SERIES_NUMBER + 1
SC_SERIES_DESCRIPTION = "crosssite Grad-CAM of COVID-19, NOT FOR CLINICAL USE"
#: the contract's display: columns towards the patient's left, rows towards posterior
PATIENT_ORIENTATION = ("L", "P")


def overlay_rgb(image: np.ndarray, cam: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """A uint8 (H, W, 3) image: the grayscale slice under the coloured map (cam in [0, 1]), as the gradcam
    command draws it."""
    from matplotlib import colormaps

    gray = np.repeat(image.astype(np.float64)[..., None] / 255.0, 3, axis=2)
    colour = colormaps[COLOUR_MAP](np.clip(cam, 0.0, 1.0))[..., :3]
    return np.round(255.0 * ((1 - alpha) * gray + alpha * colour)).astype(np.uint8)


def top_slices(row: dict, top_k: int) -> list[dict]:
    """The slice rows a scan's P(COVID) rests on: its `top_k` highest, in slice order."""
    ranked = sorted(row["slices"], key=lambda s: s["p_covid"], reverse=True)[:top_k]
    return sorted(ranked, key=lambda s: row["slices"].index(s))


def capture(source, explained: dict, slice_row: dict, series_uid: str, number: int, model_name: str):
    """One Secondary Capture dataset of an explained slice (crosssite.gradcam.explain's dict)."""
    hd = require_extra("highdicom", "--dicom-gradcam", "dicom-out")
    from pydicom import Dataset
    from pydicom.uid import generate_uid

    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=complete_header(source), pixel_array=overlay_rgb(explained["image"], explained["cam"]),
        photometric_interpretation="RGB", bits_allocated=8, coordinate_system="PATIENT",
        series_instance_uid=series_uid, series_number=SC_SERIES_NUMBER, sop_instance_uid=generate_uid(),
        instance_number=number, manufacturer="crosssite", patient_orientation=PATIENT_ORIENTATION)
    sc.SeriesDescription = SC_SERIES_DESCRIPTION
    sc.Laterality = ""  # Type 2C: the chest as a whole is no paired structure (empty: not applicable)
    sc.ManufacturerModelName = model_name
    sc.ImageComments = (f"Grad-CAM of COVID-19, P(COVID)={slice_row['p_covid']:.4f} (calibrated) for this slice; "
                        f"{NOT_FOR_CLINICAL_USE}")
    sc.DerivationDescription = "Grad-CAM (Selvaraju et al. 2017) of the last convolutional stage, blended onto the slice"
    reference = Dataset()
    reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
    sc.SourceImageSequence = [reference]
    return sc


def write_captures(rows: list[dict], folder: Path, trained, top_k: int) -> list[Path]:
    """One Secondary Capture per top slice of each DICOM series among predict's rows, explained with the
    batch norms of the row's site (others get none: crosssite.dicom_sr.write_reports notes them), written
    atomically into `folder` as SC_<SOPInstanceUID>.dcm."""
    from pydicom.uid import generate_uid

    from .data.volumes import dicom_headers, parse_slice
    from .saliency import explain
    from .io import atomic_write

    written = []
    for row in rows:
        headers = dicom_headers(row["path"]) if "slices" in row else None
        if headers is None:
            continue
        slices = top_slices(row, top_k)
        explained = explain(trained.method, trained.config, trained.site_index(row["site"]), [s["path"] for s in slices])
        series_uid = generate_uid()
        for number, (slice_row, result) in enumerate(zip(slices, explained), start=1):
            sc = capture(headers[parse_slice(slice_row["path"])[1]], result, slice_row, series_uid, number,
                         f"crosssite {trained.config.method} ({trained.config.backbone})")
            path = Path(folder) / f"SC_{sc.SOPInstanceUID}.dcm"
            atomic_write(path, lambda tmp, sc=sc: sc.save_as(tmp, enforce_file_format=True))
            written.append(path)
    return written
