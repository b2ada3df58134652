"""DICOM CT series (pydicom, the `dicom` extra): slices in anatomical order, exact Hounsfield units.

A series is a list of single-frame CT files with one SeriesInstanceUID. They are ordered by their
position along the slice normal (ImagePositionPatient projected on the cross product of the two
ImageOrientationPatient directions, as DICOM PS3.3 C.7.6.2 defines the patient frame), and checked for
mixed sizes, orientations and gaps; HU = stored value x RescaleSlope + RescaleIntercept, slice by slice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from crosssite.errors import DataError

EXTRA_HINT = "pip install 'crosssite[dicom]'"
COMPRESSED_HINT = "pip install 'crosssite[dicom-jpeg]' (python-gdcm)"
GAP_TOLERANCE = 1.5  # a step this many times the median slice spacing means a slice is missing


def pydicom_module(path):
    try:
        import pydicom
    except ImportError:
        raise DataError(f"{path}: reading DICOM needs pydicom: {EXTRA_HINT}") from None
    return pydicom


def read_file(path: Path, pixels: bool):
    pydicom = pydicom_module(path)
    try:
        return pydicom.dcmread(path, stop_before_pixels=not pixels)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: not a readable DICOM file ({str(exc).splitlines()[0] if str(exc) else exc})") from None


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


def _check_ct(ds, path: Path) -> None:
    modality = str(ds.get("Modality", "")).upper()
    if modality and modality != "CT":
        raise DataError(f"{path}: modality {modality}, not CT: its values are not Hounsfield units")
    if "RescaleSlope" not in ds or "RescaleIntercept" not in ds:
        raise DataError(f"{path}: no RescaleSlope/RescaleIntercept, so the values are not calibrated in "
                        "Hounsfield units")
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise DataError(f"{path}: multi-frame DICOM is not supported; export the series as one file per slice")
    if "Rows" not in ds or "Columns" not in ds:
        raise DataError(f"{path}: DICOM file without an image (no Rows/Columns)")


def sorted_series(files: list[Path], where: Path, pixels: bool = False) -> list:
    """The series' datasets in anatomical order, checked; one-line DataError naming the file otherwise."""
    if not files:
        raise DataError(f"{where}: no DICOM files")
    datasets = [(f, read_file(f, pixels)) for f in sorted(files)]
    first_file, first = datasets[0]
    for f, ds in datasets:
        _check_ct(ds, f)
        if ds.get("SeriesInstanceUID") != first.get("SeriesInstanceUID"):
            raise DataError(f"{where}: holds more than one series ({first_file.name} and {f.name} differ in "
                            "SeriesInstanceUID); give each series its own folder")
        if (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
            raise DataError(f"{where}: mixed slice sizes ({first_file.name} {first.Columns}x{first.Rows}, "
                            f"{f.name} {ds.Columns}x{ds.Rows})")
    if len(datasets) == 1:
        return [datasets[0][1]]
    for f, ds in datasets:
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            raise DataError(f"{f}: no ImagePositionPatient/ImageOrientationPatient, so the slices cannot be ordered")
        if not np.allclose(np.array(ds.ImageOrientationPatient, float), np.array(first.ImageOrientationPatient, float),
                           atol=1e-4):
            raise DataError(f"{where}: mixed slice orientations ({first_file.name} and {f.name})")
    orientation = np.array(first.ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    positions = np.array([np.dot(normal, np.array(ds.ImagePositionPatient, float)) for _, ds in datasets])
    order = np.argsort(positions, kind="stable")
    steps = np.diff(positions[order])
    spacing = float(np.median(steps))
    if spacing <= 1e-3 or steps.min() <= 1e-3:
        i = int(np.argmin(steps))
        raise DataError(f"{where}: two slices at the same position ({datasets[order[i]][0].name}, "
                        f"{datasets[order[i + 1]][0].name})")
    if steps.max() > GAP_TOLERANCE * spacing:
        i = int(np.argmax(steps))
        raise DataError(f"{where}: missing slice(s): a gap of {steps[i]:.2f} mm between "
                        f"{datasets[order[i]][0].name} and {datasets[order[i + 1]][0].name} "
                        f"(slice spacing {spacing:.2f} mm)")
    return [datasets[i][1] for i in order]


def hounsfield(ds, path: Path) -> np.ndarray:
    """One slice in HU (float32): stored value x RescaleSlope + RescaleIntercept."""
    try:
        stored = ds.pixel_array
    except Exception as exc:  # pydicom raises several kinds when no decoder handles the transfer syntax
        syntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
        if syntax is not None and syntax.is_compressed:
            raise DataError(f"{path}: cannot decode {syntax.name} pixel data; install a decoder: "
                            f"{COMPRESSED_HINT}") from None
        raise DataError(f"{path}: cannot read pixel data ({str(exc).splitlines()[0] if str(exc) else exc})") from None
    if stored.ndim != 2:
        raise DataError(f"{path}: expected one grayscale slice, got pixel data of shape {stored.shape}")
    return (stored.astype(np.float32) * np.float32(ds.RescaleSlope) + np.float32(ds.RescaleIntercept))


def read_series(files: list[Path], where: Path) -> np.ndarray:
    """(slices, rows, columns) float32 HU in anatomical order."""
    datasets = sorted_series(files, where, pixels=True)
    return np.stack([hounsfield(ds, Path(ds.filename)) for ds in datasets])


def series_header(files: list[Path], where: Path) -> tuple[int, str | None]:
    """Number of slices and PatientID (None when empty), from the headers only: checked, not decoded."""
    datasets = sorted_series(files, where)
    return len(datasets), str(datasets[0].get("PatientID", "") or "").strip() or None


def write_series(folder: Path, hu: np.ndarray, patient_id: str, slope: float = 1.0, intercept: float = -1024.0,
                 spacing: float = 2.5, seed: int = 0) -> list[Path]:
    """Write (slices, rows, columns) HU as a CT series of single-frame files (stored = (HU - intercept) / slope,
    uint16), named in a shuffled order so that readers must sort by position. For demos and tests."""
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
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, round(i * spacing, 3)]
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
