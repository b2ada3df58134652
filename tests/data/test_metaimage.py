"""The small MetaImage reader (no extra needed): layouts, compression, byte order, flips, bad files."""

import numpy as np
import pytest

from crosssite.data.metaimage import read_metaimage
from crosssite.data.volumes import read_hu
from crosssite.errors import DataError

VOLUME = np.random.default_rng(0).integers(-1024, 2000, (3, 5, 7)).astype(np.int16)


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("detached", [False, True])
def test_round_trip(tmp_path, metaimage_writer, compressed, detached):
    path = metaimage_writer(tmp_path / ("v.mhd" if detached else "v.mha"), VOLUME, compressed=compressed,
                           detached=detached)
    out = read_metaimage(path).values
    assert out.dtype == np.float32 and out.shape == (3, 5, 7)
    np.testing.assert_array_equal(out, VOLUME)


def test_negative_directions_are_flipped_to_lps(tmp_path, metaimage_writer):
    path = metaimage_writer(tmp_path / "v.mha", VOLUME, matrix="-1 0 0 0 1 0 0 0 -1")
    np.testing.assert_array_equal(read_hu(str(path)), VOLUME[::-1, :, ::-1])


def test_big_endian(tmp_path, metaimage_writer):
    path = tmp_path / "v.mha"
    header = "NDims = 3\nDimSize = 7 5 3\nElementType = MET_SHORT\nBinaryDataByteOrderMSB = True\nElementDataFile = LOCAL\n"
    path.write_bytes(header.encode() + VOLUME.astype(">i2").tobytes())
    np.testing.assert_array_equal(read_metaimage(path).values, VOLUME)


def test_truncated_data_names_file_and_sizes(tmp_path, metaimage_writer):
    path = metaimage_writer(tmp_path / "v.mha", VOLUME)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"v\.mha: MetaImage truncated: holds 200 bytes .* say 210"):
        read_metaimage(path)


def test_not_a_metaimage(tmp_path, metaimage_writer):
    (tmp_path / "v.mha").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(DataError, match=r"v\.mha: not a MetaImage header"):
        read_metaimage(tmp_path / "v.mha")


def test_missing_detached_data(tmp_path, metaimage_writer):
    path = metaimage_writer(tmp_path / "v.mhd", VOLUME, detached=True)
    (tmp_path / "v.raw").unlink()
    with pytest.raises(DataError, match=r"v\.mhd: cannot read MetaImage data v\.raw"):
        read_metaimage(path)


def _header(dims="7 5 3", element="MET_SHORT", extra=""):
    return f"ObjectType = Image\nNDims = 3\n\nDimSize = {dims}\nElementType = {element}\n{extra}"


@pytest.mark.parametrize("header_size", [16, -1])
def test_header_size_skips_bytes_of_the_data_file(tmp_path, header_size):
    (tmp_path / "v.raw").write_bytes(b"\xff" * 16 + VOLUME.astype("<i2").tobytes())
    (tmp_path / "v.mhd").write_text(_header(extra=f"HeaderSize = {header_size}\nElementDataFile = v.raw\n"))
    np.testing.assert_array_equal(read_metaimage(tmp_path / "v.mhd").values, VOLUME)


@pytest.mark.parametrize("element, dtype", [("MET_LONG", "<i4"), ("MET_ULONG", "<u4"), ("MET_LONG_LONG", "<i8")])
def test_element_sizes_follow_metaio(tmp_path, element, dtype):
    values = np.abs(VOLUME) if dtype.startswith("<u") else VOLUME
    path = tmp_path / "v.mha"  # the header has a blank line, as MetaIO allows
    path.write_bytes(_header(element=element, extra="ElementDataFile = LOCAL\n").encode() + values.astype(dtype).tobytes())
    np.testing.assert_array_equal(read_metaimage(path).values, values)
