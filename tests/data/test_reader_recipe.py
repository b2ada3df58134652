"""Adding a scan format is one ScanReader entry (DEVELOPERS.md, "Adding a scan format"): a made-up format
registered here only is found in folders, named in messages, oriented by the contract and predicted."""

import numpy as np
import pytest

from crosssite.data import readers, volumes
from crosssite.data.readers import Header, ScanReader, Volume, register
from crosssite.errors import DataError

TOY_AXES = np.diag([1.0, 1.0, -1.0])  # LPS directions of the stored x, y, z
HU = np.random.default_rng(5).integers(-1024, 400, (4, 32, 32)).astype(np.int16)  # (slices, rows, columns)


def _read_toy(scan: str) -> Volume:
    """A .toy file: a .npy array stored x, y, z (columns, rows, slices) with z pointing to the feet."""
    return Volume(np.load(scan).astype(np.float32), TOY_AXES)


def _write_toy(path, hu):
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(hu[::-1].transpose(2, 1, 0)))
    return path


@pytest.fixture
def toy_format():
    reader = register(ScanReader("Toy volume", lambda scan: Header(np.load(scan, mmap_mode="r").shape, TOY_AXES),
                                 _read_toy, suffixes=(".toy",)))
    yield reader
    del readers.READERS[reader.name]


def test_a_registered_format_is_found_read_in_the_contract_and_named(tmp_path, toy_format):
    (tmp_path / "study").mkdir()
    scan = str(_write_toy(tmp_path / "study" / "a.toy", HU))
    assert volumes.find_scans(tmp_path / "study") == [scan]
    assert volumes.is_scan_path(scan) and volumes.scan_header(scan) == (4, None)
    np.testing.assert_array_equal(volumes.read_hu(scan), HU)  # z flipped back to feet -> head by the contract
    assert "Toy volume (.toy)" in volumes.formats()
    _write_toy(scan, np.full(HU.shape, np.nan, np.float32))
    with pytest.raises(DataError, match=r"a\.toy: volume has non-finite values"):  # the one value check
        volumes.read_hu(scan)


def test_a_registered_format_is_predicted(tmp_path, toy_format, tiny_run):
    from crosssite.predict import predict_images

    scan = _write_toy(tmp_path / "a.toy", HU)
    rows = predict_images(tiny_run / "best.pt", "covid-ct", [scan])
    assert [r["path"] for r in rows] == [str(scan)] and len(rows[0]["slices"]) == 4
    assert 0.0 <= rows[0]["p_covid"] <= 1.0
