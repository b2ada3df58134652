"""Real files no one here wrote: pydicom's and pydicom-data's test files (the `test-data` extra) and nibabel's
test data, read by crosssite and by the libraries' own decoding as the reference."""

import warnings
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom", reason="DICOM tests need the dicom extra: pip install -e '.[dicom]'")
nibabel = pytest.importorskip("nibabel", reason="NIfTI tests need the dicom extra: pip install -e '.[dicom]'")
from nibabel.testing import data_path as NIBABEL_DATA  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.pixels import apply_rescale  # noqa: E402

from crosssite.data import nifti, volumes  # noqa: E402
from crosssite.data.orientation import to_standard  # noqa: E402
from crosssite.errors import DataError  # noqa: E402

#: CT files of pydicom (CT_small) and pydicom-data (the rest): unsigned 14-bit, JPEG 2000 lossless, a VR of UN
CT_FILES = ["CT_small.dcm", "693_UNCI.dcm", "693_UNCR.dcm", "693_J2KR.dcm", "explicit_VR-UN.dcm"]


def _local_testdata(name: str) -> str:
    """A pydicom test file present on this machine (pydicom-data: `pip install -e '.[test-data]'`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            path = get_testdata_file(name, download=False)
        except TypeError:  # pydicom without the download flag
            path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is in pydicom-data, not installed: pip install -e '.[test-data]'")
    return path


@pytest.mark.parametrize("name", CT_FILES)
def test_real_ct_files_in_exact_hu(name):
    path = _local_testdata(name)
    ds = pydicom.dcmread(path)
    expected = apply_rescale(ds.pixel_array.astype(np.float64), ds)  # pydicom's own slope and intercept
    along_row, down_column = np.asarray(ds.ImageOrientationPatient, float).reshape(2, 3)
    expected = np.flip(expected, [a for a, d in ((1, along_row[0]), (0, down_column[1])) if d < 0])  # axial
    np.testing.assert_array_equal(volumes.read_hu(path)[0], expected)


def test_real_enhanced_ct_reads_its_frames_with_the_functional_groups_rescale():
    path = _local_testdata("eCT_Supplemental.dcm")  # Enhanced CT, 2 frames, rescale in the shared groups
    ds = pydicom.dcmread(path)
    groups = ds.SharedFunctionalGroupsSequence[0]
    rescale = groups.PixelValueTransformationSequence[0]
    expected = ds.pixel_array * float(rescale.RescaleSlope) + float(rescale.RescaleIntercept)
    z = [float(f.PlanePositionSequence[0].ImagePositionPatient[2]) for f in ds.PerFrameFunctionalGroupsSequence]
    expected = expected[np.argsort(z)]  # feet to head
    if groups.PlaneOrientationSequence[0].ImageOrientationPatient[0] < 0:  # columns run to the right: flip
        expected = expected[:, :, ::-1]
    assert volumes.scan_header(path) == (2, ds.PatientID or None)
    np.testing.assert_array_equal(volumes.read_hu(path), expected)


@pytest.mark.parametrize("name", ["anatomical.nii", "reoriented_anat_moved.nii", "resampled_anat_moved.nii",
                                  "standard.nii.gz"])
def test_real_nifti_values_and_orientation_match_nibabel(name):
    path = Path(NIBABEL_DATA) / name
    image = nibabel.load(path)
    volume = nifti.read(str(path))
    np.testing.assert_array_equal(volume.values, image.get_fdata(dtype=np.float32))  # scaled as nibabel scales
    canonical = nibabel.as_closest_canonical(image).get_fdata(dtype=np.float32)  # x, y, z to R, A, S
    expected = np.flip(canonical.transpose(2, 1, 0), (1, 2))  # RAS -> slices S, rows P, columns L
    np.testing.assert_array_equal(to_standard(volume.values, volume.axes, name), expected)
    assert volumes.scan_header(str(path))[0] == expected.shape[0]


def test_real_4d_nifti_is_refused_in_one_line():
    with pytest.raises(DataError, match=r"functional\.nii: NIfTI of shape \(17, 21, 3, 20\); expected a 2D slice"):
        volumes.scan_header(str(Path(NIBABEL_DATA) / "functional.nii"))
