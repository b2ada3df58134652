"""NIfTI volumes (.nii, .nii.gz; nibabel, the `dicom` extra), 2D or 3D, values scaled as the header says.

NIfTI stores no calibration tag and no modality: the scaled values (scl_slope, scl_inter) are taken as
HU, and volumes.py refuses a volume without air. The affine (nibabel's best of sform/qform) maps voxel
axes to RAS; `Volume.axes` gives them in LPS (x and y negated) for the orientation contract.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from crosssite.data.readers import Header, ScanReader, Volume, register
from crosssite.errors import DataError, first_line, require_extra

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def _nibabel(path):
    return require_extra("nibabel", f"{path}: reading NIfTI", "dicom", DataError)


def _load(path: Path):
    """The image (header read, data not yet) and its shape as 2 or 3 dimensions."""
    nibabel = _nibabel(path)
    try:
        image = nibabel.load(path)
    except Exception as exc:  # nibabel raises many kinds for a damaged or foreign file
        if _truncated(path):
            raise DataError(f"{path}: NIfTI file is truncated (it ends inside its header)") from None
        raise DataError(f"{path}: not a readable NIfTI file ({first_line(exc)})") from None
    shape = image.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) not in (2, 3):
        raise DataError(f"{path}: NIfTI of shape {image.shape}; expected a 2D slice or a 3D volume")
    return image, shape


def _truncated(path: Path, image=None) -> bool:
    """A .nii.gz whose gzip stream ends early, or a .nii shorter than its header (and the data it says)."""
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path) as f:
                while f.read(1 << 20):
                    pass
            return False
        needed = 348 if image is None else (image.header.get_data_offset()
                                            + int(np.prod(image.shape)) * image.get_data_dtype().itemsize)
        return path.stat().st_size < needed
    except (EOFError, gzip.BadGzipFile, zlib.error):
        return True
    except OSError:
        return False


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
    except (EOFError, zlib.error, OSError, ValueError) as exc:
        what = "file is truncated" if _truncated(path, image) else "data is damaged"
        raise DataError(f"{path}: NIfTI {what} ({first_line(exc)})") from None
    return Volume(data.reshape(tuple(shape) + (1,) * (3 - len(shape))), _axes(image))


READER = register(ScanReader("NIfTI volume", header, read, suffixes=(".nii", ".nii.gz")))
