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


@pytest.fixture
def scan_site(tmp_path, metaimage_writer):
    """A site CSV naming two MetaImage volumes; what training would see of their slices (lung window):
    COVID slices 0 and 1 are near copies, COVID 2 = NonCOVID 0, and COVID 3 = NonCOVID 1 except for a
    block at 200 vs 250 HU, which the lung window clips to the same white (another window would not)."""
    rng = np.random.default_rng(0)
    covid = rng.uniform(-1000, 300, (4, 32, 32))
    covid[1] = covid[0] + rng.uniform(-20, 20, (32, 32))
    covid[3, 8:24, 8:24] = 200
    noncovid = np.stack([covid[2], covid[3], rng.uniform(-1000, 300, (32, 32))])
    noncovid[1, 8:24, 8:24] = 250
    metaimage_writer(tmp_path / "covid.mha", covid.round())
    metaimage_writer(tmp_path / "noncovid.mha", noncovid.round())
    (tmp_path / "site.csv").write_text("path,label\ncovid.mha,COVID\nnoncovid.mha,NonCOVID\n")
    return tmp_path / "site.csv"


def test_scan_site_is_audited_as_training_reads_its_slices(scan_site, tmp_path, capsys):
    covid, noncovid = (str(scan_site.parent / name) for name in ("covid.mha", "noncovid.mha"))

    def audit(*flags):
        out = tmp_path / "audit"
        assert main(["audit", "--site", f"ct={scan_site}", *flags, "--out", str(out)]) == 0
        return {frozenset((p["image_a"], p["image_b"])): p for p in read_pairs(out)}, capsys.readouterr().out

    pairs, printed = audit()
    copy = pairs[frozenset((f"{covid}#slice=2", f"{noncovid}#slice=0"))]
    assert copy["kind"] == "exact" and copy["classes"] == "COVID/NonCOVID"
    assert pairs[frozenset((f"{covid}#slice=3", f"{noncovid}#slice=1"))]["kind"] == "exact"  # same in the window
    neighbours = pairs[frozenset((f"{covid}#slice=0", f"{covid}#slice=1"))]
    assert neighbours["kind"] == "near" and float(neighbours["score"]) >= 0.95
    assert "7 images (2 CT scans' slices among them)" in printed and "same scan" in printed
    assert len(pairs) == 3

    pairs, _ = audit("--window", "400,40")  # 200 and 250 HU now differ
    assert pairs[frozenset((f"{covid}#slice=3", f"{noncovid}#slice=1"))]["kind"] == "near"
    assert pairs[frozenset((f"{covid}#slice=2", f"{noncovid}#slice=0"))]["kind"] == "exact"

    pairs, printed = audit("--slices", "::2")
    assert set(pairs) == {frozenset((f"{covid}#slice=2", f"{noncovid}#slice=0"))} and "4 images" in printed


def test_split_of_a_scan_run_brings_its_window(scan_site, tmp_path, capsys):
    from crosssite.config import TrainConfig, save_config
    from crosssite.data.sites import load_sites
    from crosssite.data.splits import save_splits

    run = tmp_path / "run"
    config = TrainConfig(sites=[f"ct={scan_site}"], window=[400.0, 40.0])
    save_config(config, run / "config.yaml")
    sites = load_sites(None, config.sites)  # 7 slices: the COVID scan's 4 first, by path
    save_splits(run / "split.json", sites, {"ct": {"train": [0, 1, 2, 3], "val": [4], "test": [5, 6]}})
    assert main(["audit", "--split", str(run), "--out", str(tmp_path / "a")]) == 0
    kinds = {frozenset((p["image_a"], p["image_b"])): p["kind"] for p in read_pairs(tmp_path / "a")}
    covid, noncovid = (str(scan_site.parent / name) for name in ("covid.mha", "noncovid.mha"))
    assert kinds[frozenset((f"{covid}#slice=3", f"{noncovid}#slice=1"))] == "near"  # the run's window, not the lung's
    assert "pairs straddling the parts" in capsys.readouterr().out
