"""CT scans (DICOM series, DICOMDIR, NIfTI and MetaImage volumes) as windowed 8-bit slices.

A scan is named by a string: a series folder, a volume file (.nii, .nii.gz, .mha, .mhd), a single DICOM
file, or `DICOMDIR#series=UID` for one series a DICOMDIR lists. A slice of it is the sample path
`SCAN#slice=I` (I counts from 0 in anatomical order, before any --slices selection), so the rest of
crosssite (splits, caches, predictions.csv) handles slices as it handles image files.

Formats are the entries of the reader table (readers.py); this module dispatches by it and applies what
holds for all of them: the orientation contract (orientation.py) and the value check (finite values; a
modality the header names must be CT; without one, a volume whose smallest value is above AIR_CHECK_HU
has no air, as in MR or raw scanner values, and is refused: an MR volume with values below it would pass).
Hounsfield units are mapped to gray values by a window (width W, level L): HU L - W/2 -> 0 and
L + W/2 -> 255, linearly, clipped; the default is the lung window W1500 / L-600.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from crosssite.data import dicom, metaimage, nifti  # noqa: F401  (each registers its readers)
from crosssite.data.orientation import standard_shape, to_standard
from crosssite.data.readers import (SERIES_MARK, ScanReader, file_reader, folder_reader, formats, member_reader,
                                    note, reader_for)
from crosssite.errors import CrossSiteError, DataError

LUNG_WINDOW = (1500.0, -600.0)  # (width, level) in HU
SLICE_MARK = "#slice="
AIR_CHECK_HU = -500.0


def is_volume_file(path: Path) -> bool:
    """A file that is one scan on its own (a volume, a DICOM file)."""
    reader = file_reader(Path(path))
    return reader is not None and reader.expand is None


def is_scan_path(path: Path) -> bool:
    """Something a site CSV or `predict` may name as a scan (existence is checked when it is read)."""
    path = Path(path)
    return path.is_dir() or file_reader(path) is not None


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
    """The scans under `path`: itself if it is a volume / DICOM file / series folder, every CT series of a
    DICOMDIR, and in a folder of folders (a study) every series and volume found below it. Sorted. Series
    that are no CT image series (localizers, other modalities, unreadable) are skipped with a note each;
    a DICOMDIR or folder whose series are all skipped is an error."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: scan not found")
    scans, skipped = _scans_below(path)
    for line in skipped:
        note(line)
    if skipped and not scans:
        raise DataError(f"{path}: no CT series in it ({len(skipped)} skipped: {skipped[0].split('skipped: ', 1)[-1]}"
                        + (", ..." if len(skipped) > 1 else "") + ")")
    return sorted(scans)


def _scans_below(path: Path) -> tuple[list[str], list[str]]:
    """(scans, notes on the series skipped)."""
    if path.is_file():
        reader = file_reader(path)
        return reader.expand(path) if reader is not None and reader.expand else ([str(path)], [])
    files = [p for p in path.iterdir() if p.is_file()]
    listing = next((p for p in files if (r := file_reader(p)) is not None and r.expand), None)
    if listing is not None:  # a DICOMDIR describes the whole folder
        return _scans_below(listing)
    scans = [str(p) for p in files if member_reader(p) is None and is_volume_file(p)]
    skipped: list[str] = []
    if folder_reader(path) is not None:
        problem = folder_reader(path).problem(str(path))
        (skipped.append(f"{path}: skipped: {problem}") if problem else scans.append(str(path)))
    for sub in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found, notes = _scans_below(sub)
        scans += found
        skipped += notes
    return scans, skipped


def scan_header(scan: str) -> tuple[int, str | None]:
    """Number of slices (along the patient's feet-head axis) and patient id (DICOM PatientID; None for
    volumes), reading headers only."""
    header = _reader(scan).header(scan)
    return standard_shape(header.shape, header.axes, scan)[0], header.patient


def _reader(scan: str) -> ScanReader:
    base = Path(scan.partition(SERIES_MARK)[0])
    if not base.exists():
        raise DataError(f"{base}: scan not found")
    reader = reader_for(scan)
    if reader is None:
        raise DataError(f"{scan}: not a CT scan crosssite reads ({formats()})")
    return reader


def read_hu(scan: str) -> np.ndarray:
    """The scan as float32 (slices, rows, columns) in HU, in the one orientation of orientation.py (slices
    feet to head, rows anterior to posterior, columns the patient's right to left), checked."""
    volume = _reader(scan).read(scan)
    return _checked_hu(to_standard(volume.values, volume.axes, scan), volume.modality, scan)


def _checked_hu(volume: np.ndarray, modality: str | None, where) -> np.ndarray:
    """The one check of every reader's output: finite values, CT, and air where no header says CT."""
    if not np.isfinite(volume).all():
        raise DataError(f"{where}: volume has non-finite values (NaN or infinity)")
    if modality is not None and modality.upper() != "CT":
        raise DataError(f"{where}: modality {modality}, not CT: its values are not Hounsfield units")
    low, high = float(volume.min()), float(volume.max())
    if modality is None and low > AIR_CHECK_HU:
        raise DataError(f"{where}: values {low:g} to {high:g} are not Hounsfield units (a CT in HU has air at "
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
