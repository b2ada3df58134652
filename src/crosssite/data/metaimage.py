"""A small reader for MetaImage volumes (.mha with the data inside, .mhd with a detached .raw/.zraw).

Written here instead of depending on SimpleITK (tens of MB) because crosssite needs only the part of the
format that CT volumes use: one channel, 2 or 3 dimensions, a numeric element type, raw or zlib-compressed
data in one block. Key names follow the MetaIO documentation (itk.org, "MetaIO").
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from crosssite.errors import DataError

_ELEMENT_TYPES = {
    "MET_CHAR": "i1", "MET_UCHAR": "u1", "MET_SHORT": "i2", "MET_USHORT": "u2", "MET_INT": "i4",
    "MET_UINT": "u4", "MET_LONG": "i8", "MET_ULONG": "u8", "MET_FLOAT": "f4", "MET_DOUBLE": "f8",
}
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


def read_metaimage(path: Path) -> np.ndarray:
    """The voxel values as float32 (slices, rows, columns), axes flipped where TransformMatrix is -1."""
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
    if fields.get("CompressedData", "False").lower() == "true":
        try:
            data = zlib.decompress(data)
        except zlib.error as exc:
            raise DataError(f"{path}: MetaImage data is not valid zlib data ({exc})") from None
    expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if len(data) != expected:
        raise DataError(f"{path}: MetaImage holds {len(data)} bytes of voxel data, DimSize and ElementType "
                        f"say {expected}")
    volume = np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder(">" if msb else "<")).reshape(shape)
    return _flip_negative_axes(volume, fields.get("TransformMatrix"), path).astype(np.float32)


def _flip_negative_axes(volume: np.ndarray, matrix: str | None, path: Path) -> np.ndarray:
    """Axis-aligned directions pointing the other way are flipped so rows run to posterior, columns to
    the patient's left (ITK's LPS, as DICOM shows an axial slice); other directions are taken as stored."""
    if not matrix:
        return volume
    try:
        values = np.array([float(v) for v in matrix.split()])
    except ValueError:
        raise DataError(f"{path}: MetaImage TransformMatrix is not numeric ({matrix})") from None
    n = int(round(np.sqrt(values.size)))
    direction = values.reshape(n, n)
    if not np.allclose(np.abs(direction), np.eye(n)):
        return volume
    signs = np.diag(direction)[::-1]  # x y z -> array axes columns, rows, slices reversed
    axes = tuple(axis + volume.ndim - n for axis in range(n) if signs[axis] < 0)
    return np.flip(volume, axes) if axes else volume
