import os
import shutil

import numpy as np
import pytest

from crosssite.data.sites import (COVID, NON_COVID, discover_sites, load_sites, read_covid_ct,
                                  read_generic, read_sars_cov_2_ct, read_site, refuse_shared_images)
from crosssite.errors import CrossSiteError, DataError


def test_sample_sites(sample_dir):
    sites = discover_sites(sample_dir)
    assert list(sites) == ["sars-cov-2-ct", "covid-ct"]
    a, b = sites["sars-cov-2-ct"], sites["covid-ct"]
    assert len(a) == 160 and a.labels().sum() == 80 and a.labels().dtype == np.int64
    assert a.groups() is None and a.official_split is None
    assert len(b) == 160 and b.labels().sum() == 80
    assert all(s.patient for s in b.samples)
    assert {k: len(v) for k, v in b.official_split.items()} == {"train": 80, "val": 40, "test": 40}
    assert [str(s.path) for s in b.samples] == sorted(str(s.path) for s in b.samples)
    for s in b.samples:
        assert s.label == (COVID if s.path.parent.name == "CT_COVID" else NON_COVID)


def test_official_split_is_patient_disjoint_on_sample(sample_dir):
    site = read_covid_ct(sample_dir / "covid-ct")
    groups = site.groups()
    parts = [set(groups[site.official_split[p]]) for p in ("train", "val", "test")]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])


def test_full_data(shared_data):
    sites = discover_sites(shared_data)
    a, b = sites["sars-cov-2-ct"], sites["covid-ct"]
    assert (int(a.labels().sum()), int((a.labels() == 0).sum())) == (1252, 1229)
    assert (int(b.labels().sum()), int((b.labels() == 0).sum())) == (349, 397)
    y = b.labels()
    counts = {p: (int(y[i].sum()), int((y[i] == 0).sum())) for p, i in b.official_split.items()}
    assert counts == {"train": (191, 234), "val": (60, 58), "test": (98, 105)}
    assert len(set(b.groups())) == 213 + 171


def test_discover_by_layout_not_name(sample_dir, tmp_path):
    shutil.copytree(sample_dir / "covid-ct", tmp_path / "hospital-b")
    sites = discover_sites(tmp_path)
    assert list(sites) == ["covid-ct"]
    assert list(discover_sites(tmp_path / "hospital-b")) == ["covid-ct"]


def test_discover_nothing(tmp_path):
    with pytest.raises(DataError, match="expected sars-cov-2-ct layout") as e:
        discover_sites(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_load_sites_adds_and_overrides(sample_dir):
    sites = load_sites(sample_dir, [f"extra={sample_dir / 'sars-cov-2-ct'}",
                                    f"covid-ct={sample_dir / 'sars-cov-2-ct'}"])
    assert list(sites) == ["sars-cov-2-ct", "covid-ct", "extra"]
    assert sites["covid-ct"].official_split is None


def test_sites_sharing_a_file_are_refused(sample_dir, tmp_path):
    refuse_shared_images(load_sites(sample_dir, []))  # the two shipped sites share nothing
    link = tmp_path / "linked"
    link.symlink_to(sample_dir / "sars-cov-2-ct")  # the same files under another path
    with pytest.raises(CrossSiteError, match="belongs to both site 'sars-cov-2-ct' and site 'extra'") as e:
        refuse_shared_images(load_sites(sample_dir, [f"extra={link}"]))
    assert "\n" not in str(e.value) and str(link) in str(e.value)


@pytest.mark.parametrize("arg", ["nopath", "=x", "name="])
def test_bad_site_arg(arg):
    with pytest.raises(CrossSiteError, match="NAME=PATH") as e:
        load_sites(None, [arg])
    assert arg in str(e.value)


def test_split_file_naming_missing_image(sample_dir, tmp_path):
    root = tmp_path / "covid-ct"
    shutil.copytree(sample_dir / "covid-ct", root)
    split = root / "Data-split" / "NonCOVID" / "valCT_NonCOVID.txt"
    split.write_text(split.read_text() + "ghost.jpg\n")
    with pytest.raises(DataError, match="ghost.jpg") as e:
        read_covid_ct(root)
    assert str(split) in str(e.value)


def test_no_split_folder_is_fine(sample_dir, tmp_path):
    root = tmp_path / "covid-ct"
    shutil.copytree(sample_dir / "covid-ct", root)
    shutil.rmtree(root / "Data-split")
    assert read_covid_ct(root).official_split is None


def test_missing_metadata(sample_dir, tmp_path):
    root = tmp_path / "covid-ct"
    shutil.copytree(sample_dir / "covid-ct", root)
    (root / "NonCOVID-CT-MetaInfo.csv").unlink()
    with pytest.raises(DataError, match="NonCOVID-CT-MetaInfo.csv"):
        read_covid_ct(root)


def test_missing_class_folder(sample_dir, tmp_path):
    root = tmp_path / "a"
    shutil.copytree(sample_dir / "sars-cov-2-ct" / "COVID", root / "COVID")
    with pytest.raises(DataError, match="no NonCOVID images") as e:
        read_sars_cov_2_ct(root)
    assert str(root / "non-COVID") in str(e.value)
    with pytest.raises(DataError, match="no NonCOVID images"):
        read_site(root, "a")


def test_empty_folder(tmp_path):
    (tmp_path / "covid").mkdir()
    (tmp_path / "normal").mkdir()
    with pytest.raises(DataError, match="no COVID images") as e:
        read_generic(tmp_path, "x")
    assert str(tmp_path) in str(e.value)


def test_missing_site_path(tmp_path):
    with pytest.raises(DataError, match="does not exist") as e:
        read_site(tmp_path / "nope", "x")
    assert str(tmp_path / "nope") in str(e.value)


def test_generic_folder_case_insensitive(sample_dir, tmp_path):
    shutil.copytree(sample_dir / "sars-cov-2-ct" / "COVID", tmp_path / "Positive")
    shutil.copytree(sample_dir / "sars-cov-2-ct" / "non-COVID", tmp_path / "NORMAL")
    site = read_site(tmp_path, "c")
    assert len(site) == 160 and site.labels().sum() == 80 and site.groups() is None


def _write_csv(tmp_path, sample_dir, rows):
    src = sorted((sample_dir / "sars-cov-2-ct" / "COVID").glob("*.png"))[:2]
    for i, p in enumerate(src):
        shutil.copy(p, tmp_path / f"img{i}.png")
    csv_path = tmp_path / "site.csv"
    csv_path.write_text("path,label,patient_id\n" + "".join(rows))
    return csv_path


def test_generic_csv(sample_dir, tmp_path):
    csv_path = _write_csv(tmp_path, sample_dir, ["img0.png,COVID,p1\n", "img1.png,0,\n"])
    site = read_site(csv_path, "csv")
    assert site.labels().tolist() == [1, 0]
    assert site.samples[0].path == tmp_path / "img0.png"
    groups = site.groups()
    assert groups[0] == "p1" and groups[1] != "p1"


def test_generic_csv_unknown_label(sample_dir, tmp_path):
    csv_path = _write_csv(tmp_path, sample_dir, ["img0.png,COVID,\n", "img1.png,maybe,\n"])
    with pytest.raises(DataError, match="unknown label 'maybe'") as e:
        read_site(csv_path, "csv")
    assert str(csv_path) in str(e.value)


@pytest.mark.parametrize("second, expected", [
    ("img0.png,COVID,p1\n", r"site\.csv:4: img0\.png is already listed on line 2; list each image once"),
    ("./img0.png,0,p1\n", r"site\.csv:4: \./img0\.png is already listed on line 2 with label COVID, here NonCOVID"),
])
def test_generic_csv_refuses_an_image_listed_twice(sample_dir, tmp_path, second, expected):
    """One image twice (even spelled differently, or with two labels) could land in train and test."""
    csv_path = _write_csv(tmp_path, sample_dir, ["img0.png,COVID,p1\n", "img1.png,0,\n", second])
    with pytest.raises(DataError, match=expected):
        read_site(csv_path, "csv")


def test_file_name_that_is_not_utf8_is_read(sample_dir, tmp_path):
    """Legal on Linux (Latin-1 names from old exports): Python holds the name with surrogates."""
    shutil.copytree(sample_dir / "sars-cov-2-ct", tmp_path / "site")
    image = next((tmp_path / "site" / "COVID").iterdir())
    bad = image.with_name(os.fsdecode(b"scan-\xe9.png"))
    image.rename(bad)
    assert bad in [s.path for s in read_site(tmp_path / "site", "s").samples]


def test_csv_of_dicom_series_gives_slices_with_patient_ids(ct_series_site):
    from crosssite.data.sites import read_site

    site = read_site(ct_series_site, "hosp", slices="::2")
    assert len(site) == 8 * 3  # 8 series of 6 slices, every 2nd
    assert {s.scan for s in site.samples} == {str(ct_series_site.parent / p.name) for p in
                                              ct_series_site.parent.iterdir() if p.is_dir()}
    assert len(set(site.groups())) == 8 and all(g.startswith("demo-") for g in site.groups())


def test_csv_naming_a_missing_series(tmp_path, ct_series_site):
    from crosssite.data.sites import read_site

    bad = tmp_path / "bad.csv"
    root = ct_series_site.parent
    bad.write_text(f"path,label\n{root / 'covid-00'},COVID\n{root / 'gone-series'},NonCOVID\n")
    with pytest.raises(DataError, match=r"bad\.csv:3: .*gone-series not found"):
        read_site(bad, "hosp")


def test_class_folders_of_volumes_group_slices_by_scan(tmp_path, metaimage_writer):
    from crosssite.data.sites import read_site

    hu = np.full((4, 16, 16), -1000, np.int16)
    for cls in ("COVID", "NonCOVID"):
        (tmp_path / cls).mkdir()
        for k in range(2):
            metaimage_writer(tmp_path / cls / f"v{k}.mha", hu)
    site = read_site(tmp_path, "vols")
    assert len(site) == 16 and len(set(site.groups())) == 4
