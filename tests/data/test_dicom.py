"""DICOM series (the dicom extra): real pydicom test files and series written here."""

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom", reason="DICOM tests need the dicom extra: pip install -e '.[dicom]'")
from pydicom.data import get_testdata_file  # noqa: E402

from crosssite.data import volumes  # noqa: E402
from crosssite.data.dicom import write_series  # noqa: E402
from crosssite.errors import DataError  # noqa: E402

HU = np.random.default_rng(2).integers(-1024, 1500, (5, 12, 10)).astype(np.float32)


def test_real_ct_slice_in_exact_hu():
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    expected = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert volumes.scan_header(path) == (1, "1CT1")
    np.testing.assert_array_equal(volumes.read_hu(path)[0], expected)


def test_shuffled_series_with_slope_is_sorted_and_exact(tmp_path):
    files = write_series(tmp_path / "s", HU, "P7", slope=0.5, intercept=-1024.0, seed=3)
    assert [f.name for f in files] != sorted(f.name for f in files)  # written out of order
    assert volumes.scan_header(str(tmp_path / "s")) == (5, "P7")
    np.testing.assert_array_equal(volumes.read_hu(str(tmp_path / "s")), HU)


def test_rle_compressed_series_decodes(tmp_path, edit_dicom):
    files = write_series(tmp_path / "s", HU, "P1")
    for f in files:
        edit_dicom(f, lambda ds: ds.compress(pydicom.uid.RLELossless))
    assert pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
    np.testing.assert_array_equal(volumes.read_hu(str(tmp_path / "s")), HU)


def test_missing_slice(tmp_path):
    files = write_series(tmp_path / "s", HU, "P1", spacing=2.0, seed=0)
    middle = next(f for f in files if float(pydicom.dcmread(f).ImagePositionPatient[2]) == 4.0)
    middle.unlink()
    with pytest.raises(DataError, match=r"s: missing slice\(s\): a gap of 4\.00 mm between .* \(slice spacing 2\.00 mm\)"):
        volumes.scan_header(str(tmp_path / "s"))


def test_mixed_sizes(tmp_path):
    write_series(tmp_path / "s", HU, "P1")
    other = write_series(tmp_path / "other", HU[:1, :8], "P1")[0]
    ds = pydicom.dcmread(other)
    ds.SeriesInstanceUID = pydicom.dcmread(next((tmp_path / "s").iterdir())).SeriesInstanceUID
    ds.save_as(tmp_path / "s" / "IMextra.dcm")
    with pytest.raises(DataError, match=r"s: mixed slice sizes \(.* 10x12, IMextra\.dcm 10x8\)"):
        volumes.read_hu(str(tmp_path / "s"))


def test_two_series_in_one_folder(tmp_path):
    write_series(tmp_path / "s", HU[:2], "P1")
    write_series(tmp_path / "s2", HU[:2], "P1")[0].rename(tmp_path / "s" / "IMother.dcm")
    with pytest.raises(DataError, match=r"s: holds more than one series"):
        volumes.scan_header(str(tmp_path / "s"))


def test_no_calibration(tmp_path, edit_dicom):
    f = write_series(tmp_path / "s", HU[:1], "P1")[0]
    edit_dicom(f, RescaleSlope=None, RescaleIntercept=None)
    with pytest.raises(DataError, match=r"IM0000\.dcm: no RescaleSlope/RescaleIntercept"):
        volumes.scan_header(str(tmp_path / "s"))


def test_empty_folder_is_no_scan(tmp_path):
    assert volumes.find_scans(tmp_path) == []


def test_unsupported_compression_names_the_extra(tmp_path):
    """JPEG Lossless (Process 14) has no decoder among crosssite's dependencies (Pillow does not decode it;
    highdicom's pyjpegls decodes JPEG-LS only): one line naming the file, the syntax and the extra. A real
    compressed file, relabelled with that syntax, reaches the decoders exactly as such a file would."""
    from pydicom.uid import JPEGLosslessSV1

    ds = pydicom.dcmread(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.Modality, ds.RescaleSlope, ds.RescaleIntercept = "CT", 1, -1024
    ds.save_as(tmp_path / "ll.dcm", enforce_file_format=True)
    try:
        import gdcm  # noqa: F401
        pytest.skip("python-gdcm is installed, so JPEG Lossless decodes")
    except ImportError:
        pass
    with pytest.raises(DataError, match=r"ll\.dcm: cannot decode JPEG Lossless.*crosssite\[dicom-jpeg\]"):
        volumes.read_hu(str(tmp_path / "ll.dcm"))


def test_real_dicomdir_skips_its_non_ct_series_with_a_note_each(capsys):
    dicomdir = get_testdata_file("DICOMDIR")  # a real CD export: CR, MR, a CT localizer and two CT series
    scans = volumes.find_scans(dicomdir)
    notes = capsys.readouterr().err.splitlines()
    assert len(scans) == 1 and "#series=" in scans[0]
    assert len(notes) == 12 and sum("modality MR, not CT" in n for n in notes) == 7
    assert sum("modality CR, not CT" in n for n in notes) == 3 and sum("localizer (scout)" in n for n in notes) == 1
    assert sum("skipped: missing slice(s): a gap of" in n for n in notes) == 1  # a CT series with a gap
    assert volumes.scan_header(scans[0]) == (5, "98890234")
    assert volumes.read_hu(scans[0]).shape == (5, 16, 16)
