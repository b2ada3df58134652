"""NIfTI volumes (.nii, .nii.gz; nibabel, the `dicom` extra), 2D or 3D, values scaled as the header says.

NIfTI stores no calibration tag and no modality: the scaled values (scl_slope, scl_inter) are taken as
HU, and volumes.py refuses a volume without air. The affine (nibabel's best of sform/qform) maps voxel
axes to RAS; `Volume.axes` gives them in LPS (x and y negated) for the orientation contract.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from crosssite.data.readers import Header, ScanReader, Volume, register
from crosssite.errors import DataError

EXTRA_HINT = "pip install 'crosssite[dicom]'"
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def _nibabel(path):
    try:
        import nibabel
    except ImportError:
        raise DataError(f"{path}: reading NIfTI needs nibabel: {EXTRA_HINT}") from None
    return nibabel


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _load(path: Path):
    """The image (header read, data not yet) and its shape as 2 or 3 dimensions."""
    nibabel = _nibabel(path)
    try:
        image = nibabel.load(path)
    except (EOFError, zlib.error):
        raise DataError(f"{path}: NIfTI file is truncated (its header ends early)") from None
    except Exception as exc:  # nibabel raises many kinds for a damaged or foreign file
        raise DataError(f"{path}: not a readable NIfTI file ({_first_line(exc)})") from None
    shape = image.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) not in (2, 3):
        raise DataError(f"{path}: NIfTI of shape {image.shape}; expected a 2D slice or a 3D volume")
    return image, shape


def _axes(image) -> np.ndarray:
    """LPS directions of the voxel axes i, j, k (columns); a 2D image's k is its affine's third column."""
    return RAS_TO_LPS @ np.asarray(image.affine, dtype=np.float64)[:3, :3]


def header(scan: str) -> Header:
    image, shape = _load(Path(scan))
    return Header(tuple(shape) + (1,) * (3 - len(shape)), _axes(image))


def read(scan: str) -> Volume:
    path = Path(scan)
    image, shape = _load(path)
    try:
        data = np.asarray(image.get_fdata(dtype=np.float32))
    except (EOFError, zlib.error, ValueError) as exc:
        raise DataError(f"{path}: NIfTI data is truncated or damaged ({_first_line(exc)})") from None
    return Volume(data.reshape(tuple(shape) + (1,) * (3 - len(shape))), _axes(image))


READER = register(ScanReader("NIfTI volume", header, read, suffixes=(".nii", ".nii.gz")))
