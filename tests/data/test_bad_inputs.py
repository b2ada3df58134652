"""Inputs that were silently wrong, refused whole or refused with the wrong reason: each is now read, or
refused in one line that names the file and the real cause."""

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom", reason="DICOM tests need the dicom extra: pip install -e '.[dicom]'")
nibabel = pytest.importorskip("nibabel", reason="NIfTI tests need the dicom extra: pip install -e '.[dicom]'")
from pydicom.data import get_testdata_file  # noqa: E402

from crosssite.data import volumes  # noqa: E402
from crosssite.data.dicom import write_series  # noqa: E402
from crosssite.errors import DataError  # noqa: E402

HU = np.random.default_rng(3).integers(-1024, 1200, (4, 10, 12)).astype(np.float32)


@pytest.mark.parametrize("value, shown", [("", "empty"), ("abc", "not a number")])
def test_empty_or_non_numeric_rescale_is_one_line_not_nan(tmp_path, edit_dicom, value, shown):
    f = write_series(tmp_path / "s", HU[:1], "P1")[0]

    def as_a_broken_exporter_writes_it(ds):
        ds["RescaleSlope"] = pydicom.DataElement(0x00281053, "LO", value)

    edit_dicom(f, as_a_broken_exporter_writes_it)
    with pytest.raises(DataError, match=rf"IM0000\.dcm: RescaleSlope is {shown}"):
        volumes.read_hu(str(tmp_path / "s"))


def test_non_finite_volume_values_are_refused(tmp_path, metaimage_writer):
    volume = HU.copy()
    volume[1, 2, 3] = np.nan
    path = metaimage_writer(tmp_path / "v.mha", volume, element_type="MET_FLOAT")
    with pytest.raises(DataError, match=r"v\.mha: volume has non-finite values"):
        volumes.read_hu(str(path))


@pytest.mark.parametrize("where, cut", [("header", 600), ("pixel data", -100)])
def test_truncated_dicom_says_truncated(tmp_path, where, cut):
    f = write_series(tmp_path / "s", HU[:1], "P1")[0]
    f.write_bytes(f.read_bytes()[:cut])
    with pytest.raises(DataError, match=r"IM0000\.dcm: DICOM file is truncated") as error:
        volumes.read_hu(str(f))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", ["v.nii", "v.nii.gz"])
def test_truncated_nifti_says_truncated(tmp_path, name):
    nibabel.save(nibabel.Nifti1Image(HU.astype(np.int16).transpose(2, 1, 0), np.eye(4)), tmp_path / name)
    data = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=rf"{name.replace('.', '[.]')}: NIfTI .*truncated") as error:
        volumes.read_hu(str(tmp_path / name))
    assert "\n" not in str(error.value)
    (tmp_path / name).write_bytes(data[:200])  # inside the 348-byte header
    with pytest.raises(DataError, match=r"truncated|not a readable NIfTI"):
        volumes.scan_header(str(tmp_path / name))


def test_12_bit_jpeg_extended_says_how_to_convert(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("JPEG-lossy.dcm"))  # real 12-bit JPEG Extended file
    ds.Modality, ds.RescaleSlope, ds.RescaleIntercept = "CT", 1, -1024
    ds.save_as(tmp_path / "j.dcm")
    with pytest.raises(DataError, match=r"j\.dcm: cannot decode JPEG Extended \(12-bit lossy\).*gdcmconv --raw.*dcmdjpeg"):
        volumes.read_hu(str(tmp_path / "j.dcm"))


def test_multi_frame_without_functional_groups_names_multi_frame_not_rescale(tmp_path):
    f = write_series(tmp_path / "s", HU[:2], "P1")[0]
    ds = pydicom.dcmread(f)
    del ds.RescaleSlope, ds.RescaleIntercept
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    ds.save_as(tmp_path / "multi.dcm")
    with pytest.raises(DataError, match=r"multi\.dcm: multi-frame DICOM with 2 frames but no per-frame functional "
                                        r"groups is not supported"):
        volumes.scan_header(str(tmp_path / "multi.dcm"))


def test_study_folder_uses_its_ct_series_and_says_why_others_are_skipped(tmp_path, capsys, edit_dicom):
    study = tmp_path / "study"
    write_series(study / "ct", HU, "P1")
    (study / "ct" / "VERSION").write_text("1.0\n")  # a stray file beside the slices
    for f in write_series(study / "scout", HU[:1], "P1"):
        edit_dicom(f, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    for f in write_series(study / "mr", HU[:2], "P1"):
        edit_dicom(f, Modality="MR")
    assert volumes.find_scans(study) == [str(study / "ct")]
    np.testing.assert_array_equal(volumes.read_hu(str(study / "ct")), HU)
    notes = capsys.readouterr().err.splitlines()
    assert any("scout: skipped: a localizer (scout)" in n for n in notes)
    assert any("mr: skipped: modality MR, not CT" in n for n in notes)
    assert any("ct: skipped 1 file(s) that are not DICOM: VERSION" in n for n in notes)
    assert all(n.startswith("crosssite: note: ") for n in notes)


def test_a_study_without_ct_series_is_an_error(tmp_path, edit_dicom):
    for f in write_series(tmp_path / "study" / "mr", HU[:2], "P1"):
        edit_dicom(f, Modality="MR")
    with pytest.raises(DataError, match=r"study: no CT series in it \(1 skipped: modality MR, not CT\)"):
        volumes.find_scans(tmp_path / "study")


def test_metaimage_modality_other_than_ct_is_refused(tmp_path, metaimage_writer):
    path = metaimage_writer(tmp_path / "mr.mha", HU)
    path.write_bytes(b"Modality = MET_MOD_MR\n" + path.read_bytes())
    with pytest.raises(DataError, match=r"mr\.mha: modality MR, not CT"):
        volumes.read_hu(str(path))
