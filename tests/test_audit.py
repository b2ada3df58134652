"""`crosssite audit`: synthetic duplicates planted beside the shipped sample, and the known facts of ../shared/data."""

import csv
import shutil

import numpy as np
import pytest
from PIL import Image

from crosssite.audit import FIELDS
from crosssite.cli import main


def read_pairs(out):
    with open(out / "pairs.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_sample_with_planted_duplicates(sample_dir, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(sample_dir, data)
    covid = sorted((data / "sars-cov-2-ct" / "COVID").iterdir())[0]
    noncovid_dir = data / "sars-cov-2-ct" / "non-COVID"
    # an exact copy in the other class (re-encoded: same pixels, other bytes) and a brightened near copy
    pixels = np.asarray(Image.open(covid).convert("L"))
    Image.fromarray(pixels).save(noncovid_dir / "planted_copy.bmp")
    Image.fromarray(np.clip(pixels.astype(int) + 3, 0, 255).astype(np.uint8)).save(noncovid_dir / "planted_near.png")
    # a copy of a Site B image as a third site
    third = tmp_path / "third" / "COVID"
    third.mkdir(parents=True)
    (tmp_path / "third" / "NonCOVID").mkdir()
    site_b = sorted((data / "covid-ct" / "CT_COVID").iterdir())[0]
    shutil.copy(site_b, third / "b_copy.png")
    shutil.copy(sorted((data / "covid-ct" / "CT_NonCOVID").iterdir())[0], tmp_path / "third" / "NonCOVID" / "x.png")

    out = tmp_path / "audit"
    assert main(["audit", "--data", str(data), "--site", f"third={tmp_path / 'third'}", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    pairs = read_pairs(out)
    assert pairs and list(pairs[0]) == list(FIELDS)
    by_images = {frozenset((p["image_a"], p["image_b"])): p for p in pairs}
    exact = by_images[frozenset((str(covid), str(noncovid_dir / "planted_copy.bmp")))]
    assert exact["kind"] == "exact" and exact["classes"] == "COVID/NonCOVID" and float(exact["score"]) == 1.0
    near = by_images[frozenset((str(covid), str(noncovid_dir / "planted_near.png")))]
    assert near["kind"] == "near" and float(near["score"]) >= 0.95
    cross = by_images[frozenset((str(site_b), str(third / "b_copy.png")))]
    assert cross["sites"] == "covid-ct/third" and cross["kind"] == "exact"
    assert "across sites" in printed and "planted_copy.bmp" in printed


def test_split_straddling_pairs(sample_dir, tmp_path, capsys):
    from crosssite.data.sites import discover_sites
    from crosssite.data.splits import make_splits, save_splits

    data = tmp_path / "data"
    shutil.copytree(sample_dir / "sars-cov-2-ct", data / "sars-cov-2-ct")
    first = sorted((data / "sars-cov-2-ct" / "COVID").iterdir())[0]
    shutil.copy(first, first.with_name("zz copy.png"))
    sites = discover_sites(data)
    splits = make_splits(sites, "fold", 0, 4, 0)
    run = tmp_path / "run"
    save_splits(run / "split.json", sites, splits)
    assert main(["audit", "--data", str(data), "--split", str(run), "--out", str(tmp_path / "a")]) == 0
    (pair,) = [p for p in read_pairs(tmp_path / "a") if p["kind"] == "exact"]
    part = {str(sites["sars-cov-2-ct"].samples[i].path): p for p, idx in splits["sars-cov-2-ct"].items() for i in idx}
    assert pair["splits"] == f"{part[pair['image_a']]}/{part[pair['image_b']]}"
    assert "pairs straddling the parts" in capsys.readouterr().out


def test_known_facts_of_shared_data(shared_data, tmp_path):
    assert main(["audit", "--data", str(shared_data), "--out", str(tmp_path)]) == 0
    pairs = read_pairs(tmp_path)
    names = lambda p: frozenset((p["image_a"].split("/")[-1], p["image_b"].split("/")[-1]))  # noqa: E731
    exact = {names(p) for p in pairs if p["kind"] == "exact"}
    assert exact == {frozenset(("Covid (128).png", "Covid (129).png")), frozenset(("Covid (134).png", "Covid (135).png"))}
    cross_class = {names(p): float(p["score"]) for p in pairs if p["classes"] in ("COVID/NonCOVID", "NonCOVID/COVID")}
    assert set(cross_class) == {frozenset(("kjr-21-e24-p5-29.png", "71%0.png")),
                                frozenset(("kjr-21-e24-p5-31.png", "71%1.png"))}
    assert all(s >= 0.98 for s in cross_class.values())
    assert not [p for p in pairs if p["sites"].split("/")[0] != p["sites"].split("/")[1]]
    assert sum(p["sites"] == "sars-cov-2-ct/sars-cov-2-ct" and p["kind"] == "near" for p in pairs) > 100


@pytest.mark.parametrize("threshold", ["0", "1.5"])
def test_bad_threshold(tmp_path, sample_dir, capsys, threshold):
    assert main(["audit", "--data", str(sample_dir), "--threshold", threshold, "--out", str(tmp_path)]) == 2
    assert "--threshold" in capsys.readouterr().err
