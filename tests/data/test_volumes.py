"""CT scans as windowed slices: the window, slice names and selection, decode-once, NIfTI, missing extra."""

import sys
from pathlib import Path

import numpy as np
import pytest

from crosssite.data import volumes
from crosssite.data.images import DecodedCache
from crosssite.data.volumes import LUNG_WINDOW, apply_window, parse_slice, parse_slices, read_hu, scan_slices, slice_path
from crosssite.errors import CrossSiteError, DataError

HU = np.random.default_rng(1).integers(-1024, 1500, (6, 16, 20)).astype(np.int16)


def test_lung_window_maps_level_and_ends():
    out = apply_window(np.array([-1350.0, -750.0, 150.0, -3000.0, 3000.0]))
    assert out.tolist() == [0, 102, 255, 0, 255]  # -750: 600 HU above the lower end x 255 / 1500
    assert apply_window(np.array([140.0]), (400, 40)).tolist() == [191]  # 300 x 255 / 400 = 191.25


def test_slice_names_round_trip():
    assert parse_slice(slice_path("/d/series 1", 12)) == ("/d/series 1", 12)
    assert parse_slice(Path("/d/img#1.png")) is None


@pytest.mark.parametrize("spec, expected", [("all", list(range(10))), ("::4", [0, 4, 8]), ("2:5", [2, 3, 4]),
                                            ("-3:", [7, 8, 9]), ("1:9:3", [1, 4, 7])])
def test_slice_selection(spec, expected):
    assert list(range(10))[parse_slices(spec)] == expected


@pytest.mark.parametrize("spec", ["every", "1:2:3:4", "::0", "a:b"])
def test_bad_slice_selection(spec):
    with pytest.raises(CrossSiteError, match="slices"):
        parse_slices(spec)


def test_selection_of_no_slice_names_the_scan(tmp_path, metaimage_writer):
    scan = str(metaimage_writer(tmp_path / "v.mha", HU))
    with pytest.raises(DataError, match=r"v\.mha: --slices 50:60 selects none of its 6 slices"):
        scan_slices(scan, "50:60")


def test_scan_is_decoded_once_for_all_its_slices(tmp_path, metaimage_writer, monkeypatch):
    scans = [str(metaimage_writer(tmp_path / f"v{i}.mha", HU + i)) for i in range(2)]
    calls = []
    read_hu = volumes.read_hu
    monkeypatch.setattr(volumes, "read_hu", lambda scan: calls.append(scan) or read_hu(scan))
    volumes._windowed_scan.cache_clear()
    paths = [p for scan in scans for p in scan_slices(scan, "::2")[0]]
    cache = DecodedCache(32, LUNG_WINDOW)
    cache.preload(paths, "test", progress=False)
    assert calls == scans  # one decode per scan, for both variants of all its slices
    expected = apply_window(HU[2].astype(np.float32))
    np.testing.assert_array_equal(cache.original(paths[1]), expected)
    assert cache.eval_image(paths[1]).shape == (32, 32)


def test_window_of_the_cache_is_applied(tmp_path, metaimage_writer):
    scan = str(metaimage_writer(tmp_path / "v.mha", HU))
    soft = DecodedCache(32, (400, 40)).original(slice_path(scan, 0))
    np.testing.assert_array_equal(soft, apply_window(HU[0].astype(np.float32), (400, 40)))


def test_volume_without_air_is_not_hounsfield(tmp_path, metaimage_writer):
    path = metaimage_writer(tmp_path / "mr.mha", np.full((2, 8, 8), 100, np.uint8), element_type="MET_UCHAR")
    with pytest.raises(DataError, match=r"mr\.mha: values 100 to 100 are not Hounsfield units"):
        read_hu(str(path))


def test_dicom_without_the_extra_names_it(tmp_path, monkeypatch):
    (tmp_path / "s1").mkdir()
    (tmp_path / "s1" / "IM0001.dcm").write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom now raises ImportError
    with pytest.raises(DataError, match=r"IM0001\.dcm: reading DICOM needs the \[dicom\] extra: pip install 'crosssite\[dicom\]'"):
        volumes.scan_header(str(tmp_path / "s1"))


def test_nifti_without_the_extra_names_it(tmp_path, monkeypatch):
    (tmp_path / "v.nii.gz").write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "nibabel", None)
    with pytest.raises(DataError, match=r"v\.nii\.gz: reading NIfTI needs the \[dicom\] extra: pip install 'crosssite\[dicom\]'"):
        volumes.scan_header(str(tmp_path / "v.nii.gz"))


def test_nifti_in_hu_reads_in_the_orientation_of_dicom(tmp_path):
    nibabel = pytest.importorskip("nibabel", reason="NIfTI needs the dicom extra: pip install -e '.[dicom]'")
    # voxel (i, j, k) -> LPS rows/columns as DICOM shows them: an LPS affine is diag(-1, -1, 1) in RAS
    data = np.ascontiguousarray(HU.transpose(2, 1, 0))  # NIfTI x y z from (slices, rows, columns)
    lps = nibabel.Nifti1Image(data, np.diag([-0.7, -0.7, 2.5, 1.0]))
    nibabel.save(lps, tmp_path / "lps.nii.gz")
    ras = nibabel.Nifti1Image(data[::-1, ::-1].copy(), np.diag([0.7, 0.7, 2.5, 1.0]))
    nibabel.save(ras, tmp_path / "ras.nii")
    for name in ("lps.nii.gz", "ras.nii"):
        assert volumes.scan_header(str(tmp_path / name)) == (6, None)
        np.testing.assert_array_equal(read_hu(str(tmp_path / name)), HU)


def test_nifti_scaled_to_hu(tmp_path):
    nibabel = pytest.importorskip("nibabel", reason="NIfTI needs the dicom extra: pip install -e '.[dicom]'")
    image = nibabel.Nifti1Image((HU + 1024).astype(np.uint16).transpose(2, 1, 0), np.diag([-1, -1, 1, 1.0]))
    image.header.set_slope_inter(1.0, -1024.0)
    nibabel.save(image, tmp_path / "v.nii")
    np.testing.assert_array_equal(read_hu(str(tmp_path / "v.nii")), HU)


def test_nibabel_examples_that_are_not_ct_are_refused():
    nibabel = pytest.importorskip("nibabel", reason="NIfTI needs the dicom extra: pip install -e '.[dicom]'")
    data = Path(nibabel.__file__).parent / "tests" / "data"
    with pytest.raises(DataError, match=r"standard\.nii\.gz: values 0 to 255 are not Hounsfield units"):
        read_hu(str(data / "standard.nii.gz"))  # 8-bit values, no air at -1000
    with pytest.raises(DataError, match=r"example4d\.nii\.gz: NIfTI of shape \(128, 96, 24, 2\)"):
        volumes.scan_header(str(data / "example4d.nii.gz"))
