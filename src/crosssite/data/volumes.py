"""CT scans (DICOM series, NIfTI and MetaImage volumes) as windowed 8-bit slices.

A scan is named by a string: a series folder, a volume file (.nii, .nii.gz, .mha, .mhd), a single DICOM
file, or `DICOMDIR#series=UID` for one series a DICOMDIR lists. A slice of it is the sample path
`SCAN#slice=I` (I counts from 0 in anatomical order, before any --slices selection), so the rest of
crosssite (splits, caches, predictions.csv) handles slices as it handles image files.

Hounsfield units are mapped to gray values by a window (width W, level L): HU L - W/2 -> 0 and
L + W/2 -> 255, linearly, clipped; the default is the lung window W1500 / L-600.
NIfTI and MetaImage carry no calibration tag, so their values are taken as HU and a volume whose
smallest value is above AIR_CHECK_HU (no air in it, as in MR or raw scanner values) is refused.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from crosssite.data import dicom
from crosssite.data.metaimage import read_header, read_metaimage, shape_of
from crosssite.errors import CrossSiteError, DataError

LUNG_WINDOW = (1500.0, -600.0)  # (width, level) in HU
SLICE_MARK = "#slice="
SERIES_MARK = "#series="
NIFTI_SUFFIXES = (".nii", ".nii.gz")
METAIMAGE_SUFFIXES = (".mha", ".mhd")
DICOM_SUFFIXES = ("", ".dcm", ".dicom", ".ima")  # DICOM files are often named without an extension
AIR_CHECK_HU = -500.0


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def is_volume_file(path: Path) -> bool:
    return _suffix(Path(path)) in NIFTI_SUFFIXES + METAIMAGE_SUFFIXES


def _is_dicom_name(path: Path) -> bool:
    return _suffix(path) in DICOM_SUFFIXES and not path.name.startswith(".") and path.name != "DICOMDIR"


def is_scan_path(path: Path) -> bool:
    """Something a site CSV or `predict` may name as a scan (existence is checked when it is read)."""
    path = Path(path)
    return path.is_dir() or is_volume_file(path) or path.name == "DICOMDIR" or _suffix(path) == ".dcm"


# ---- names of slices ----------------------------------------------------------------------------------

def slice_path(scan: str, index: int) -> Path:
    return Path(f"{scan}{SLICE_MARK}{index}")


def parse_slice(path) -> tuple[str, int] | None:
    """(scan, slice index) for a slice path, None for an ordinary image file."""
    scan, mark, index = str(path).rpartition(SLICE_MARK)
    return (scan, int(index)) if mark and index.isdigit() else None


def scan_of(path) -> str | None:
    parsed = parse_slice(path)
    return parsed[0] if parsed else None


# ---- finding scans ------------------------------------------------------------------------------------

def find_scans(path: Path) -> list[str]:
    """The scans under `path`: itself if it is a volume / DICOM file / series folder, every series of a
    DICOMDIR, and in a folder of folders every series and volume found below it. Sorted."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: scan not found")
    if path.name == "DICOMDIR":
        return [f"{path}{SERIES_MARK}{uid}" for uid in sorted(dicom.dicomdir_series(path))]
    if path.is_file():
        return [str(path)]
    if (path / "DICOMDIR").is_file():
        return find_scans(path / "DICOMDIR")
    files = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
    scans = [str(p) for p in files if is_volume_file(p)]
    if any(_is_dicom_name(p) for p in files):
        scans.append(str(path))
    for sub in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        scans += find_scans(sub) if _has_scans(sub) else []
    return sorted(scans)


def _has_scans(folder: Path) -> bool:
    return any(p.is_dir() or is_volume_file(p) or p.name == "DICOMDIR" or _is_dicom_name(p)
               for p in folder.iterdir() if not p.name.startswith("."))


def _dicom_files(scan: str) -> tuple[list[Path], Path]:
    """The DICOM files of a series scan, and the path to name in errors."""
    dicomdir, mark, uid = scan.partition(SERIES_MARK)
    if mark:
        series = dicom.dicomdir_series(Path(dicomdir))
        if uid not in series:
            raise DataError(f"{dicomdir}: lists no series {uid}")
        return series[uid], Path(scan)
    path = Path(scan)
    if path.is_file():
        return [path], path
    return sorted(p for p in path.iterdir() if p.is_file() and _is_dicom_name(p)), path


def _nibabel(path):
    try:
        import nibabel
    except ImportError:
        raise DataError(f"{path}: reading NIfTI needs nibabel: {dicom.EXTRA_HINT}") from None
    return nibabel


def _load_nifti(path: Path):
    nibabel = _nibabel(path)
    try:
        image = nibabel.load(path)
    except Exception as exc:  # nibabel raises many kinds for a damaged or foreign file
        raise DataError(f"{path}: not a readable NIfTI file ({str(exc).splitlines()[0] if str(exc) else exc})") from None
    shape = image.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) not in (2, 3):
        raise DataError(f"{path}: NIfTI of shape {image.shape}; expected a 2D slice or a 3D volume")
    return image, shape


def scan_header(scan: str) -> tuple[int, str | None]:
    """Number of slices and patient id (DICOM PatientID; None for volumes), reading headers only."""
    path = Path(scan)
    if SERIES_MARK not in scan and not path.exists():
        raise DataError(f"{path}: scan not found")
    if _suffix(path) in NIFTI_SUFFIXES:
        image, shape = _load_nifti(path)
        if len(shape) == 2:
            return 1, None
        axes = _nibabel(path).orientations.io_orientation(image.affine)
        return int(shape[int(np.flatnonzero(axes[:3, 0] == 2)[0])]), None
    if _suffix(path) in METAIMAGE_SUFFIXES:
        return shape_of(read_header(path)[0], path)[0], None
    files, where = _dicom_files(scan)
    return dicom.series_header(files, where)


def read_hu(scan: str) -> np.ndarray:
    """The scan as float32 (slices, rows, columns) in HU: slices in anatomical order, rows to posterior and
    columns to the patient's left (as a DICOM axial slice is shown)."""
    path = Path(scan)
    if _suffix(path) in NIFTI_SUFFIXES:
        image, shape = _load_nifti(path)
        if len(shape) == 3:
            image = _nibabel(path).as_closest_canonical(image)  # voxel axes -> right, anterior, superior
        data = np.asarray(image.get_fdata(dtype=np.float32))
        data = data.reshape(data.shape[0], data.shape[1], -1)
        return _checked_hu(np.ascontiguousarray(np.flip(data, (0, 1)).transpose(2, 1, 0)), path)
    if _suffix(path) in METAIMAGE_SUFFIXES:
        return _checked_hu(read_metaimage(path), path)
    files, where = _dicom_files(scan)
    return dicom.read_series(files, where)


def _checked_hu(volume: np.ndarray, path: Path) -> np.ndarray:
    if not np.isfinite(volume).all():
        raise DataError(f"{path}: volume has non-finite values")
    low, high = float(volume.min()), float(volume.max())
    if low > AIR_CHECK_HU:
        raise DataError(f"{path}: values {low:g} to {high:g} are not Hounsfield units (a CT in HU has air at "
                        f"about -1000); convert the volume to HU first")
    return volume


# ---- windowing and slice selection ----------------------------------------------------------------------

def apply_window(hu: np.ndarray, window=LUNG_WINDOW) -> np.ndarray:
    """uint8 gray values: HU level - width/2 -> 0, level + width/2 -> 255, linear, clipped."""
    width, level = (float(v) for v in window)
    scaled = (hu.astype(np.float64) - (level - width / 2)) * (255.0 / width)
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


@functools.lru_cache(maxsize=1)
def _windowed_scan(scan: str, width: float, level: float) -> np.ndarray:
    """The last scan decoded, kept so that its slices (read one after another) decode it once."""
    volume = apply_window(read_hu(scan), (width, level))
    volume.flags.writeable = False
    return volume


def load_slice(path, window=LUNG_WINDOW) -> np.ndarray:
    """uint8 rows x columns of the slice named by `path` (see slice_path)."""
    scan, index = parse_slice(path)
    volume = _windowed_scan(scan, *(float(v) for v in window))
    if index >= len(volume):
        raise DataError(f"{scan}: has {len(volume)} slices, no slice {index}")
    return volume[index]


def parse_slices(spec: str) -> slice:
    """'all', or Python slice syntax START:STOP[:STEP] (e.g. '::4' every 4th, '10:50' a range)."""
    if spec.strip().lower() == "all":
        return slice(None)
    parts = spec.split(":")
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        bounds = [int(p) if p.strip() else None for p in parts]
    except ValueError:
        raise CrossSiteError(f"slices {spec!r}: expected 'all' or START:STOP[:STEP], e.g. '::4' or '10:50'") from None
    if len(bounds) == 3 and bounds[2] is not None and bounds[2] < 1:
        raise CrossSiteError(f"slices {spec!r}: the step must be at least 1")
    return slice(*bounds)


def selected_slices(scan: str, count: int, spec: str) -> list[int]:
    chosen = list(range(count))[parse_slices(spec)]
    if not chosen:
        raise DataError(f"{scan}: --slices {spec} selects none of its {count} slices")
    return chosen


def scan_slices(scan: str, spec: str = "all") -> tuple[list[Path], str | None]:
    """The selected slices' paths of a scan, and its patient id."""
    count, patient = scan_header(scan)
    return [slice_path(scan, i) for i in selected_slices(scan, count, spec)], patient


def dicom_headers(scan: str) -> list | None:
    """The headers (pydicom datasets, no pixels) of a DICOM series scan in slice order, so that slice I of
    the scan is entry I; None for a NIfTI or MetaImage volume."""
    if is_volume_file(Path(scan)):
        return None
    files, where = _dicom_files(scan)
    return dicom.sorted_series(files, where)
