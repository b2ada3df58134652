"""A small reader for MetaImage volumes (.mha with the data inside, .mhd with a detached .raw/.zraw).

Written here instead of depending on SimpleITK (tens of MB) because crosssite needs only the part of the
format that CT volumes use: one channel, 2 or 3 dimensions, a numeric element type, raw or zlib-compressed
data in one block. Key names, element sizes (MET_LONG is 4 bytes, MET_LONG_LONG 8) and HeaderSize (N bytes
to skip before the data; -1: the data are the file's last bytes) follow the MetaIO documentation (itk.org,
"MetaIO") and its reference implementation. The direction matrix (TransformMatrix, or its synonyms
Orientation and Rotation) holds one axis direction per NDims values, x first, in ITK's LPS patient frame.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from crosssite.data.readers import Header, ScanReader, Volume, register
from crosssite.errors import DataError

_ELEMENT_TYPES = {
    "MET_CHAR": "i1", "MET_UCHAR": "u1", "MET_SHORT": "i2", "MET_USHORT": "u2", "MET_INT": "i4",
    "MET_UINT": "u4", "MET_LONG": "i4", "MET_ULONG": "u4", "MET_LONG_LONG": "i8", "MET_ULONG_LONG": "u8",
    "MET_FLOAT": "f4", "MET_DOUBLE": "f8",
}
_DIRECTION_KEYS = ("TransformMatrix", "Orientation", "Rotation")
_MAX_HEADER = 1 << 16  # a MetaImage header is a few hundred bytes of text


def read_header(path: Path) -> tuple[dict[str, str], int]:
    """The `Key = Value` fields and the byte offset where the data of a .mha starts (after ElementDataFile)."""
    try:
        with open(path, "rb") as f:
            head = f.read(_MAX_HEADER)
    except OSError as exc:
        raise DataError(f"{path}: cannot read MetaImage ({exc.strerror or exc})") from None
    fields: dict[str, str] = {}
    offset = 0
    for raw_line in head.splitlines(keepends=True):
        offset += len(raw_line)
        if not raw_line.strip():
            continue  # MetaIO skips blank lines
        key, sep, value = raw_line.decode("latin-1").partition("=")
        if not sep:
            raise DataError(f"{path}: not a MetaImage header (line {raw_line[:40]!r})")
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            return fields, offset
    raise DataError(f"{path}: MetaImage header has no ElementDataFile line")


def shape_of(fields: dict[str, str], path: Path) -> tuple[int, int, int]:
    """(slices, rows, columns): MetaImage stores x fastest, so its DimSize x y z is read backwards."""
    try:
        dims = [int(v) for v in fields["DimSize"].split()]
        ndims = int(fields.get("NDims", len(dims)))
    except (KeyError, ValueError):
        raise DataError(f"{path}: MetaImage header needs integer NDims and DimSize") from None
    if ndims not in (2, 3) or len(dims) != ndims or min(dims) < 1:
        raise DataError(f"{path}: MetaImage of {ndims} dimensions {dims}; expected a 2D slice or a 3D volume")
    if int(fields.get("ElementNumberOfChannels", "1")) != 1:
        raise DataError(f"{path}: MetaImage with several channels per voxel; expected one (CT)")
    x, y, *z = dims
    return (z[0] if z else 1), y, x


def read_metaimage(path: Path) -> Volume:
    """The voxel values as float32 (z, y, x: MetaImage stores x fastest) and their LPS directions."""
    path = Path(path)
    fields, offset = read_header(path)
    shape = shape_of(fields, path)
    dtype = _ELEMENT_TYPES.get(fields.get("ElementType", ""))
    if dtype is None:
        raise DataError(f"{path}: MetaImage ElementType {fields.get('ElementType')!r} is not supported "
                        f"({', '.join(_ELEMENT_TYPES)})")
    msb = fields.get("BinaryDataByteOrderMSB", fields.get("ElementByteOrderMSB", "False")).lower() == "true"
    data_file = fields["ElementDataFile"]
    try:
        if data_file == "LOCAL":
            data = path.read_bytes()[offset:]
        elif data_file.startswith("LIST") or "%" in data_file:
            raise DataError(f"{path}: MetaImage with one data file per slice ({data_file}) is not supported")
        else:
            data = (path.parent / data_file).read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read MetaImage data {data_file} ({exc.strerror or exc})") from None
    expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
    compressed = fields.get("CompressedData", "False").lower() == "true"
    data = _skip_header_bytes(data, fields.get("HeaderSize"), expected, compressed, path)
    if compressed:
        try:
            data = zlib.decompress(data)
        except zlib.error as exc:
            raise DataError(f"{path}: MetaImage data is truncated or not valid zlib data ({exc})") from None
    if len(data) != expected:
        what = "truncated: " if len(data) < expected else ""
        raise DataError(f"{path}: MetaImage {what}holds {len(data)} bytes of voxel data, DimSize and ElementType "
                        f"say {expected}")
    volume = np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder(">" if msb else "<")).reshape(shape)
    modality = fields.get("Modality", "").upper().removeprefix("MET_MOD_")  # MET_MOD_CT, MET_MOD_MR, ...
    return Volume(volume.astype(np.float32), _axes(fields, path), None if modality in ("", "UNKNOWN") else modality)


def _skip_header_bytes(data: bytes, header_size: str | None, expected: int, compressed: bool, path: Path) -> bytes:
    """The data block after HeaderSize bytes (-1: the last `expected` bytes, uncompressed data only)."""
    if header_size is None:
        return data
    try:
        skip = int(header_size)
    except ValueError:
        raise DataError(f"{path}: MetaImage HeaderSize is not an integer ({header_size})") from None
    if skip == -1 and not compressed:
        return data[max(len(data) - expected, 0):]
    if skip < 0:
        raise DataError(f"{path}: MetaImage HeaderSize {skip}; expected a byte count or -1")
    return data[skip:]


def _axes(fields: dict[str, str], path: Path) -> np.ndarray | None:
    """LPS directions of the array axes (z, y, x) as columns; None without a direction matrix."""
    matrix = next((fields[k] for k in _DIRECTION_KEYS if k in fields), None)
    if not matrix:
        return None
    try:
        values = np.array([float(v) for v in matrix.split()])
    except ValueError:
        raise DataError(f"{path}: MetaImage TransformMatrix is not numeric ({matrix})") from None
    n = int(round(np.sqrt(values.size)))
    if n * n != values.size or n not in (2, 3):
        raise DataError(f"{path}: MetaImage TransformMatrix has {values.size} values; expected 4 or 9")
    per_axis = values.reshape(n, n)  # row i: direction of axis i (x, y[, z]) in LPS
    axes = np.eye(3)
    axes[:n, :n] = per_axis.T
    return axes[:, ::-1]  # array axes are z, y, x


def header(scan: str) -> Header:
    path = Path(scan)
    fields, _ = read_header(path)
    return Header(shape_of(fields, path), _axes(fields, path))


READER = register(ScanReader("MetaImage volume", header, lambda scan: read_metaimage(Path(scan)),
                             suffixes=(".mha", ".mhd")))
