"""The one orientation contract: the same volume written as a DICOM series, a NIfTI file and a MetaImage,
in several orientations, reads as one array and predicts one P(COVID)."""

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom", reason="DICOM tests need the dicom extra: pip install -e '.[dicom]'")
nibabel = pytest.importorskip("nibabel", reason="NIfTI tests need the dicom extra: pip install -e '.[dicom]'")

from crosssite.data import volumes  # noqa: E402
from crosssite.data.dicom import write_series  # noqa: E402
from crosssite.errors import DataError  # noqa: E402

X, Y, Z = np.eye(3)  # LPS: to the patient's left, posterior, head
#: the contract's (slices, rows, columns) = (feet -> head, anterior -> posterior, right -> left)
STANDARD = np.random.default_rng(7).integers(-1024, 600, (5, 12, 16)).astype(np.int16)

#: how a scanner may store it: the LPS direction of each stored array axis (slices, rows, columns);
#: DICOM derives the slice direction from the other two (its files are sorted by position)
ORIENTATIONS = {
    "axial": (Z, Y, X),
    "axial, rows and columns flipped": (Z, -Y, -X),  # ImageOrientationPatient [-1,0,0,0,-1,0]
    "axial, head to feet": (-Z, Y, X),
    "coronal": (Y, -Z, X),  # [1,0,0,0,0,-1]
    "sagittal": (-X, -Z, Y),  # [0,1,0,0,0,-1]
    "permuted and flipped": (X, Z, -Y),
}
FORMATS = ("dicom", "nifti", "metaimage")


def stored_as(axes):
    """STANDARD as an array whose axis a points along axes[a]."""
    standard_axis = {2: 0, 1: 1, 0: 2}  # patient axis z, y, x -> the contract's slices, rows, columns
    patient = [int(np.argmax(np.abs(d))) for d in axes]
    out = STANDARD.transpose([standard_axis[p] for p in patient])
    return np.flip(out, [a for a, d in enumerate(axes) if d[patient[a]] < 0])


def write(fmt: str, folder, axes, metaimage_writer) -> str:
    if fmt == "dicom":  # the slice axis is cross(row, column) direction, slices placed along it
        axes = (np.cross(axes[2], axes[1]), axes[1], axes[2])
        write_series(folder / "series", stored_as(axes), "P1", orientation=(*axes[2], *axes[1]))
        return str(folder / "series")
    data = stored_as(axes)
    if fmt == "nifti":  # voxel i, j, k = columns, rows, slices; affine in RAS
        affine = np.eye(4)
        affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ np.stack([axes[2], axes[1], axes[0]], axis=1) * 0.8
        nibabel.save(nibabel.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)), affine), folder / "v.nii.gz")
        return str(folder / "v.nii.gz")
    matrix = " ".join(f"{v:g}" for v in np.concatenate([axes[2], axes[1], axes[0]]))  # x, y, z directions
    return str(metaimage_writer(folder / "v.mha", data, matrix=matrix))


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_every_format_and_orientation_reads_as_one_array(tmp_path, orientation, metaimage_writer):
    for fmt in FORMATS:
        (tmp_path / fmt).mkdir()
        scan = write(fmt, tmp_path / fmt, ORIENTATIONS[orientation], metaimage_writer)
        assert volumes.scan_header(scan)[0] == len(STANDARD), fmt
        np.testing.assert_array_equal(volumes.read_hu(scan), STANDARD, err_msg=f"{fmt}, {orientation}")


@pytest.mark.parametrize("affine", [np.diag([-0.7, -0.7, 2.5, 1]), np.diag([0.7, 0.7, 2.5, 1]),
                                    np.diag([0.7, -0.7, 2.5, 1])], ids=["LPS", "RAS", "LAS"])
def test_a_2d_nifti_is_oriented_by_its_affine(tmp_path, affine):
    axes = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :3]  # LPS direction of i, j, k
    flips = [a for a in (0, 1) if axes[a, a] < 0]
    plane = np.flip(STANDARD[0].T, flips)  # i, j = columns, rows
    nibabel.save(nibabel.Nifti1Image(np.ascontiguousarray(plane), affine), tmp_path / "s.nii")
    assert volumes.scan_header(str(tmp_path / "s.nii")) == (1, None)
    np.testing.assert_array_equal(volumes.read_hu(str(tmp_path / "s.nii")), STANDARD[:1])


def test_one_coronal_slice_is_refused_in_one_line(tmp_path):
    nibabel.save(nibabel.Nifti1Image(STANDARD[0].T.copy(), np.diag([-1, 1, 1, 1.0])[:, [0, 2, 1, 3]]),
                 tmp_path / "c.nii")
    with pytest.raises(DataError, match=r"c\.nii: one coronal slice; crosssite reads axial slices"):
        volumes.read_hu(str(tmp_path / "c.nii"))


@pytest.mark.parametrize("orientation", ["axial, rows and columns flipped", "coronal"])
def test_predict_gives_one_p_covid_for_the_three_formats(tmp_path, orientation, tiny_run, metaimage_writer):
    from crosssite.predict import predict_images

    scans = []
    for fmt in FORMATS:
        (tmp_path / fmt).mkdir()
        scans.append(write(fmt, tmp_path / fmt, ORIENTATIONS[orientation], metaimage_writer))
    rows = predict_images(tiny_run / "best.pt", "covid-ct", scans)
    assert [r["path"] for r in rows] == scans
    assert len({r["p_covid"] for r in rows}) == 1
    assert len({tuple(s["p_covid"] for s in r["slices"]) for r in rows}) == 1
