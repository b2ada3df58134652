"""The table of scan readers: one entry per CT format (DICOM series, DICOMDIR, NIfTI, MetaImage).

An entry says which paths it reads (file suffixes, exact file names, folders of its files) and how to
read a scan's header (stored shape and directions, patient id) and its voxels (a `Volume`: values plus the patient
direction of each array axis). `volumes.py` dispatches by this table, builds its suffix lists and its
messages from it, and applies the one orientation contract (`orientation.py`) and the one value check
to every reader's output. A format is one module that calls `register(ScanReader(...))`, imported by
`volumes.py` (tests/data/test_reader_recipe.py adds one in a test).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

SERIES_MARK = "#series="  # DICOMDIR#series=UID: one series a DICOMDIR lists


@dataclass
class Volume:
    """Voxel values as stored and where each array axis points in the patient (LPS: x to the patient's
    left, y to posterior, z to head; column a of `axes` is array axis a's direction; None: unknown,
    taken as already (slices, rows, columns) = (feet->head, anterior->posterior, right->left)).
    `modality`: the header's own word where the format has one (DICOM, MetaImage), else None."""

    values: np.ndarray
    axes: np.ndarray | None = None
    modality: str | None = None


@dataclass
class Header:
    """What a scan's headers say: the stored array's shape (3 axes; a 2D image has a last axis of 1),
    where those axes point (as Volume.axes) and the patient id (None where the format has none)."""

    shape: tuple[int, int, int]
    axes: np.ndarray | None = None
    patient: str | None = None


@dataclass(frozen=True)
class ScanReader:
    """One scan format. `header(scan)` -> Header, from headers only; `read(scan)` -> Volume. `expand(path)`,
    for a file that lists several scans (DICOMDIR), gives their names and the skipped ones' reasons;
    `problem(scan)`, from the headers, says why a scan found in a folder is no CT image scan (None: it is one)."""

    name: str                                  # in user messages: "NIfTI volume"
    header: Callable[[str], Header]
    read: Callable[[str], Volume]
    suffixes: tuple[str, ...] = ()             # lower-case file endings it reads on their own
    file_names: tuple[str, ...] = ()           # exact file names it reads (DICOMDIR)
    member_suffixes: tuple[str, ...] = ()      # a folder of such files is one scan of this format
    expand: Callable[[Path], tuple[list[str], list[str]]] | None = None
    problem: Callable[[str], str | None] = lambda scan: None  # why a found scan is skipped (a localizer)


READERS: dict[str, ScanReader] = {}
_noted: set[str] = set()


def note(message: str) -> None:
    """One line on stderr about input that was skipped, once per process (headers are read twice)."""
    if message not in _noted:
        _noted.add(message)
        print(f"crosssite: note: {message}", file=sys.stderr)


def register(reader: ScanReader) -> ScanReader:
    if reader.name in READERS:
        raise ValueError(f"scan reader {reader.name!r} registered twice")
    READERS[reader.name] = reader
    return reader


def suffix(path: Path) -> str:
    """The lower-case ending that names a format: '.nii.gz' counts as one."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(path).suffix.lower()


def _hidden(path: Path) -> bool:
    return path.name.startswith(".")


def file_reader(path: Path) -> ScanReader | None:
    """The reader of a file named on its own (a volume, a DICOM file, a DICOMDIR), None if none."""
    path = Path(path)
    if _hidden(path):
        return None
    return (next((r for r in READERS.values() if path.name in r.file_names), None)
            or next((r for r in READERS.values() if suffix(path) in r.suffixes), None))


def member_reader(path: Path) -> ScanReader | None:
    """The reader whose folders hold this file as one slice of a scan (DICOM files without an ending)."""
    path = Path(path)
    if _hidden(path) or any(path.name in r.file_names for r in READERS.values()):
        return None
    return next((r for r in READERS.values() if suffix(path) in r.member_suffixes), None)


def folder_reader(folder: Path) -> ScanReader | None:
    """The reader whose scans are folders of this folder's files, None when it holds none of them."""
    members = {member_reader(p) for p in Path(folder).iterdir() if p.is_file()} - {None}
    return next(iter(members), None)


def reader_for(scan: str) -> ScanReader | None:
    """The reader of a scan name as find_scans gives it."""
    base = Path(scan.partition(SERIES_MARK)[0])
    if base.is_dir():
        return folder_reader(base) or next((r for r in READERS.values() if r.member_suffixes), None)
    return file_reader(base)


def formats() -> str:
    """'DICOM series (a folder, .dcm ...), DICOMDIR, NIfTI volume (.nii .nii.gz) or ...': the table, for messages."""
    def described(r: ScanReader) -> str:
        kinds = ", ".join((["a folder"] if r.member_suffixes else []) + [" ".join(r.suffixes)] * bool(r.suffixes))
        return f"{r.name} ({kinds})" if kinds else r.name

    names = [described(r) for r in READERS.values()]
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else "".join(names)
