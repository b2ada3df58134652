"""DICOM CT series, single files and DICOMDIRs (pydicom, the `dicom` extra): exact Hounsfield units.

A series is a list of single-frame CT files with one SeriesInstanceUID. They are ordered by their
position along the slice normal (ImagePositionPatient projected on the cross product of the two
ImageOrientationPatient directions, as DICOM PS3.3 C.7.6.2 defines the patient frame), and checked for
mixed sizes, orientations and gaps; HU = stored value x RescaleSlope + RescaleIntercept, slice by slice.
The Volume's axes are the slice normal and the two ImageOrientationPatient directions (LPS, DICOM's own
frame). A DICOMDIR or a study folder gives its CT image series; localizers (ImageType LOCALIZER), other
modalities and unreadable series are skipped with one note each.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crosssite.data.orientation import slice_order
from crosssite.data.readers import SERIES_MARK, Header, ScanReader, Volume, member_reader, note, register
from crosssite.errors import DataError, first_line, require_extra

COMPRESSED_HINT = "pip install 'crosssite[dicom-jpeg]' (python-gdcm)"
#: lossy 12-bit JPEG (Extended, process 2 & 4): neither Pillow nor python-gdcm's Python decoder reads it
CONVERT_HINT = ("convert the files to uncompressed DICOM first, e.g. `gdcmconv --raw IN OUT` (GDCM) or "
                "`dcmdjpeg IN OUT` (DCMTK)")
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
RESCALE_GROUP, RESCALE_TAGS = "PixelValueTransformationSequence", ("RescaleSlope", "RescaleIntercept")
GAP_TOLERANCE = 1.5  # a step this many times the median slice spacing means a slice is missing


def pydicom_module(path):
    return require_extra("pydicom", f"{path}: reading DICOM", "dicom", DataError)


def read_file(path: Path, pixels: bool):
    """The dataset (pixel data loaded only with `pixels`); a file that ends inside an element is truncated."""
    pydicom = pydicom_module(path)
    try:
        ds = pydicom.dcmread(path, defer_size=None if pixels else 1024)  # deferred: seen, not loaded
    except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a readable DICOM file ({first_line(exc)})") from None
    if _ends_early(ds):
        raise DataError(f"{path}: DICOM file is truncated (it ends inside its header, before the pixel data)")
    return ds


def _ends_early(ds) -> bool:
    """pydicom stops quietly where a file ends: an image (by its SOP class) without pixel data was cut
    inside its header."""
    if any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        return False
    sop = ds.get("SOPClassUID") or getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID")
    return sop is not None and "Image Storage" in getattr(sop, "name", "")


def _pixels_cut(ds) -> bool:
    """Uncompressed pixel data shorter than Rows x Columns x BitsAllocated says: the file was cut."""
    syntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    if syntax is None or syntax.is_compressed or "PixelData" not in ds:
        return False
    expected = (int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1)
                * int(ds.get("NumberOfFrames", 1) or 1) * int(ds.BitsAllocated) // 8)
    return len(ds.PixelData) < expected


def _tags_of(ds) -> str:
    return " ".join(str(v).upper() for v in (ds.get("ImageType") or []))


def series_problem(files: list[Path], where: Path) -> str | None:
    """Why a series of these files is no CT image series crosssite reads (None: it is one): the first
    DICOM file's header (stray files that are not DICOM are passed over), then the series' checks."""
    for path in sorted(files):
        try:
            ds = read_file(path, pixels=False)
        except DataError as exc:
            if len(files) > 1 and not _looks_like_dicom(path):
                continue
            return str(exc).removeprefix(f"{path}: ")
        modality = str(ds.get("Modality", "") or "").upper()
        if modality and modality != "CT":
            return f"modality {modality}, not CT"
        if "LOCALIZER" in _tags_of(ds):
            return "a localizer (scout), ImageType " + "\\".join(ds.ImageType)
        try:
            sorted_series(files, where)
        except DataError as exc:  # a CT series with a gap, mixed sizes, a damaged file
            return str(exc).removeprefix(f"{where}: ")
        return None
    return "no readable DICOM file"


def dicomdir_series(dicomdir: Path) -> dict[str, list[Path]]:
    """SeriesInstanceUID -> the files a DICOMDIR lists for it."""
    pydicom_module(dicomdir)
    from pydicom.fileset import FileSet

    try:
        fileset = FileSet(read_file(dicomdir, pixels=True))
    except (ValueError, KeyError, AttributeError) as exc:
        raise DataError(f"{dicomdir}: not a readable DICOMDIR ({exc})") from None
    series: dict[str, list[Path]] = {}
    for instance in fileset:
        if "SeriesInstanceUID" in instance:
            series.setdefault(str(instance.SeriesInstanceUID), []).append(Path(instance.path))
    if not series:
        raise DataError(f"{dicomdir}: DICOMDIR lists no image series")
    return series


def dicomdir_scans(dicomdir: Path) -> tuple[list[str], list[str]]:
    """The CT image series a DICOMDIR lists (as DICOMDIR#series=UID), and one note per skipped series."""
    scans, skipped = [], []
    for uid, files in sorted(dicomdir_series(dicomdir).items()):
        problem = series_problem(files, Path(f"{dicomdir}{SERIES_MARK}{uid}"))
        if problem is None:
            scans.append(f"{dicomdir}{SERIES_MARK}{uid}")
        else:
            skipped.append(f"{dicomdir}: series {uid} skipped: {problem}")
    return scans, skipped


@dataclass
class Plane:
    """One image plane of a series: a single-frame file, or frame `frame` of an Enhanced (multi-frame) CT
    file, whose position, orientation and rescale sit in its per-frame or shared functional groups."""

    path: Path
    ds: object
    frame: int | None = None

    @property
    def name(self) -> str:
        return self.path.name if self.frame is None else f"{self.path.name} frame {self.frame + 1}"

    def attribute(self, group: str, keyword: str):
        """The value of `keyword` (None when absent): top-level for a single frame, else from this frame's
        functional group `group`, then the shared one."""
        if self.frame is None:
            return self.ds[keyword].value if keyword in self.ds else None
        for groups in (self.ds.PerFrameFunctionalGroupsSequence[self.frame],
                       (self.ds.get("SharedFunctionalGroupsSequence") or [None])[0]):
            items = groups.get(group) if groups is not None else None
            if items and keyword in items[0]:
                return items[0][keyword].value
        return None


def _planes(path: Path, ds) -> list[Plane]:
    if "PerFrameFunctionalGroupsSequence" not in ds:
        return [Plane(path, ds)]
    return [Plane(path, ds, i) for i in range(len(ds.PerFrameFunctionalGroupsSequence))]


def _check_ct(ds, path: Path) -> None:
    modality = str(ds.get("Modality", "")).upper()
    if modality and modality != "CT":
        raise DataError(f"{path}: modality {modality}, not CT: its values are not Hounsfield units")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1 and "PerFrameFunctionalGroupsSequence" not in ds:
        raise DataError(f"{path}: multi-frame DICOM with {frames} frames but no per-frame functional groups is "
                        "not supported; convert it to one file per slice (e.g. `emf2sf` from dcm4che) or to "
                        "NIfTI (e.g. `dcm2niix`)")
    if "Rows" not in ds or "Columns" not in ds:
        raise DataError(f"{path}: DICOM file without an image (no Rows/Columns)")
    for plane in _planes(path, ds):
        _rescale(plane)


def _rescale(plane: Plane) -> tuple[float, float]:
    """RescaleSlope and RescaleIntercept as numbers; empty or non-numeric tags are refused, not NaN."""
    path = plane.path if plane.frame is None else f"{plane.path} (frame {plane.frame + 1})"
    found = [plane.attribute(RESCALE_GROUP, tag) for tag in RESCALE_TAGS]
    present = [tag in plane.ds for tag in RESCALE_TAGS] if plane.frame is None else [v is not None for v in found]
    if not all(present):
        raise DataError(f"{path}: no RescaleSlope/RescaleIntercept, so the values are not calibrated in "
                        "Hounsfield units")
    values = []
    for raw, tag in zip(found, RESCALE_TAGS):
        try:
            value = float(raw)
        except (TypeError, ValueError):
            value = float("nan")
        if not np.isfinite(value):
            shown = "empty" if raw in (None, "", b"") else f"not a number ({raw!r})"
            raise DataError(f"{path}: {tag} is {shown}, so the values cannot be calibrated in Hounsfield units")
        values.append(value)
    if values[0] == 0:
        raise DataError(f"{path}: RescaleSlope is 0, so every value would be the intercept")
    return values[0], values[1]


def _dicom_members(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and member_reader(p) is READER)


def series_files(scan: str) -> tuple[list[Path], Path]:
    """The DICOM files of a series scan (a folder, one file, or DICOMDIR#series=UID), and its name in errors."""
    dicomdir, mark, uid = scan.partition(SERIES_MARK)
    if mark:
        series = dicomdir_series(Path(dicomdir))
        if uid not in series:
            raise DataError(f"{dicomdir}: lists no series {uid}")
        return series[uid], Path(scan)
    path = Path(scan)
    if path.is_file():
        return [path], path
    return _dicom_members(path), path


def _read_all(files: list[Path], where: Path, pixels: bool) -> list:
    """(file, dataset) of every DICOM file; in a folder of several, a file that is not DICOM at all (a
    VERSION or README beside the slices) is skipped with a note."""
    datasets, strays = [], []
    for f in sorted(files):
        try:
            datasets.append((f, read_file(f, pixels)))
        except DataError:
            pydicom_module(f)  # without pydicom every file fails: name the extra, not strays
            if len(files) > 1 and not _looks_like_dicom(f):
                strays.append(f.name)
                continue
            raise
    if strays:
        note(f"{where}: skipped {len(strays)} file(s) that are not DICOM: {', '.join(strays[:5])}"
             + (" ..." if len(strays) > 5 else ""))
    if not datasets:
        raise DataError(f"{where}: no DICOM files")
    return datasets


def _looks_like_dicom(path: Path) -> bool:
    """A DICOM preamble (DICM at byte 128): such a file that fails to read is damaged, not stray."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def sorted_series(files: list[Path], where: Path, pixels: bool = False) -> list[Plane]:
    """The series' image planes (files, or frames of an Enhanced CT) in anatomical order, checked; one-line
    DataError naming the file otherwise."""
    if not files:
        raise DataError(f"{where}: no DICOM files")
    datasets = _read_all(files, where, pixels)
    first_file, first = datasets[0]
    for f, ds in datasets:
        _check_ct(ds, f)
        if ds.get("SeriesInstanceUID") != first.get("SeriesInstanceUID"):
            raise DataError(f"{where}: holds more than one series ({first_file.name} and {f.name} differ in "
                            "SeriesInstanceUID); give each series its own folder")
        if (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
            raise DataError(f"{where}: mixed slice sizes ({first_file.name} {first.Columns}x{first.Rows}, "
                            f"{f.name} {ds.Columns}x{ds.Rows})")
    planes = [plane for f, ds in datasets for plane in _planes(f, ds)]
    if len(planes) == 1:
        return planes
    orientations = [plane.attribute("PlaneOrientationSequence", "ImageOrientationPatient") for plane in planes]
    positions = [plane.attribute("PlanePositionSequence", "ImagePositionPatient") for plane in planes]
    for plane, orientation, position in zip(planes, orientations, positions):
        if position is None or orientation is None:
            raise DataError(f"{plane.path}: no ImagePositionPatient/ImageOrientationPatient"
                            f"{'' if plane.frame is None else f' for frame {plane.frame + 1}'}, so the slices "
                            "cannot be ordered")
        if not np.allclose(np.array(orientation, float), np.array(orientations[0], float), atol=1e-4):
            raise DataError(f"{where}: mixed slice orientations ({planes[0].name} and {plane.name})")
    normal = _axes(planes[0])[:, 0]
    along = np.array([np.dot(normal, np.array(p, float)) for p in positions])
    order = np.argsort(along, kind="stable")
    steps = np.diff(along[order])
    spacing = float(np.median(steps))
    if spacing <= 1e-3 or steps.min() <= 1e-3:
        i = int(np.argmin(steps))
        raise DataError(f"{where}: two slices at the same position ({planes[order[i]].name}, "
                        f"{planes[order[i + 1]].name})")
    if steps.max() > GAP_TOLERANCE * spacing:
        i = int(np.argmax(steps))
        raise DataError(f"{where}: missing slice(s): a gap of {steps[i]:.2f} mm between "
                        f"{planes[order[i]].name} and {planes[order[i + 1]].name} "
                        f"(slice spacing {spacing:.2f} mm)")
    return [planes[i] for i in order]


def _axes(plane: Plane) -> np.ndarray | None:
    """LPS directions of (slices, rows, columns): the slice normal, then ImageOrientationPatient's column
    direction (down a column: row index grows) and row direction (along a row); None without the tag."""
    orientation = plane.attribute("PlaneOrientationSequence", "ImageOrientationPatient")
    if orientation is None:
        return None
    orientation = np.array(orientation, dtype=float)
    along_row, down_column = orientation[:3], orientation[3:]
    return np.stack([np.cross(along_row, down_column), down_column, along_row], axis=1)


def _stored(ds, path: Path) -> np.ndarray:
    """The stored values of a file: (rows, columns), or (frames, rows, columns) for a multi-frame file."""
    if _pixels_cut(ds):
        raise DataError(f"{path}: DICOM file is truncated (its pixel data ends early)")
    try:
        return ds.pixel_array
    except Exception as exc:  # pydicom raises several kinds when no decoder handles the transfer syntax
        syntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
        if syntax == JPEG_EXTENDED:
            raise DataError(f"{path}: cannot decode JPEG Extended (12-bit lossy) pixel data; {CONVERT_HINT}") from None
        if syntax is not None and syntax.is_compressed:
            raise DataError(f"{path}: cannot decode {syntax.name} pixel data; install a decoder: "
                            f"{COMPRESSED_HINT}, or {CONVERT_HINT}") from None
        raise DataError(f"{path}: cannot read pixel data ({first_line(exc)})") from None


def hounsfield(plane: Plane, stored: np.ndarray) -> np.ndarray:
    """One plane in HU (float32): stored value x RescaleSlope + RescaleIntercept (`stored`: its file's values)."""
    values = stored if plane.frame is None else stored[plane.frame] if stored.ndim == 3 else stored
    if values.ndim != 2:
        raise DataError(f"{plane.path}: expected one grayscale slice, got pixel data of shape {stored.shape}")
    slope, intercept = _rescale(plane)
    return values.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def read_series(files: list[Path], where: Path) -> Volume:
    """(slices, rows, columns) float32 HU, slices ascending along the normal, and their LPS directions."""
    planes = sorted_series(files, where, pixels=True)
    stored: dict[int, np.ndarray] = {}  # a multi-frame file is decoded once for all its frames
    slices = []
    for plane in planes:
        if id(plane.ds) not in stored:
            stored[id(plane.ds)] = _stored(plane.ds, plane.path)
        slices.append(hounsfield(plane, stored[id(plane.ds)]))
    return Volume(np.stack(slices), _axes(planes[0]), "CT")


def series_header(files: list[Path], where: Path) -> Header:
    """Shape, directions and PatientID (None when empty), from the headers only: checked, not decoded."""
    planes = sorted_series(files, where)
    first = planes[0].ds
    return Header((len(planes), int(first.Rows), int(first.Columns)), _axes(planes[0]),
                  str(first.get("PatientID", "") or "").strip() or None)


def headers_in_scan_order(scan: str) -> list:
    """The series' headers (pydicom datasets, no pixels) so that slice I of the scan (orientation.py's
    contract) is entry I: what a report on the scan's slices references."""
    files, where = series_files(scan)
    planes = sorted_series(files, where)
    shape = (len(planes), int(planes[0].ds.Rows), int(planes[0].ds.Columns))
    order = slice_order(shape, _axes(planes[0]), where)
    if order is None:
        raise DataError(f"{where}: not an axial series: its slices (feet to head) are not its files' planes")
    return [plane.ds for plane in planes[::order]]


def _header(scan: str) -> Header:
    return series_header(*series_files(scan))


def _read(scan: str) -> Volume:
    return read_series(*series_files(scan))


READER = register(ScanReader("DICOM series", _header, _read, suffixes=(".dcm", ".dicom", ".ima"),
                             member_suffixes=("", ".dcm", ".dicom", ".ima"),
                             problem=lambda scan: series_problem(*series_files(scan))))
DICOMDIR_READER = register(ScanReader("DICOMDIR", _header, _read, file_names=("DICOMDIR",),
                                      expand=dicomdir_scans))


def write_series(folder: Path, hu: np.ndarray, patient_id: str, slope: float = 1.0, intercept: float = -1024.0,
                 spacing: float = 2.5, seed: int = 0, orientation=(1, 0, 0, 0, 1, 0)) -> list[Path]:
    """Write (slices, rows, columns) HU as a CT series of single-frame files (stored = (HU - intercept) / slope,
    uint16), slice i at i x spacing along the normal of `orientation` (ImageOrientationPatient), named in a
    shuffled order so that readers must sort by position. For demos and tests."""
    pydicom = pydicom_module(folder)
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    stored = np.rint((np.asarray(hu, dtype=np.float64) - intercept) / slope)
    if stored.min() < 0 or stored.max() > 65535:
        raise ValueError("HU values do not fit uint16 with this slope and intercept")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    names = np.random.default_rng(seed).permutation(len(stored))
    normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
    written = []
    for i, (plane, name) in enumerate(zip(stored.astype(np.uint16), names)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID, ds.PatientName = "CT", patient_id, patient_id
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = study, series, i + 1
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.ImagePositionPatient = [round(float(v), 3) for v in i * spacing * normal]
        ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], spacing
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "HU"
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = plane.tobytes()
        path = folder / f"IM{name:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written
