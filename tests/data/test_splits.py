import json

import numpy as np
import pytest

from crosssite.data.sites import discover_sites, read_sars_cov_2_ct
from crosssite.data.splits import fold_split, load_splits, make_splits, official_split, save_splits
from crosssite.data.volumes import LUNG_WINDOW
from crosssite.errors import CrossSiteError, DataError


def _check_folds(site, n_folds=4, tol=0.06):
    y, groups = site.labels(), site.groups()
    tests = []
    for fold in range(n_folds):
        s = fold_split(site, fold, n_folds, seed=0)
        parts = [set(s[p]) for p in ("train", "val", "test")]
        assert sum(map(len, parts)) == len(site) and set().union(*parts) == set(range(len(site)))
        if groups is not None:
            g = [set(groups[list(p)]) for p in parts]
            assert not (g[0] & g[1] or g[0] & g[2] or g[1] & g[2]), f"patient leak in fold {fold}"
        assert abs(y[s["test"]].mean() - y.mean()) < tol
        assert 0.1 < len(s["val"]) / (len(s["train"]) + len(s["val"])) < 0.3
        tests.append(s["test"])
    all_test = np.concatenate(tests)
    assert sorted(all_test.tolist()) == list(range(len(site)))


def test_folds_on_sample(sample_dir):
    site = discover_sites(sample_dir)["covid-ct"]
    for fold in range(4):
        s = fold_split(site, fold)
        g = site.groups()
        assert not set(g[s["test"]]) & set(g[s["train"] + s["val"]])


def test_folds_full(shared_data):
    for site in discover_sites(shared_data).values():
        _check_folds(site)


def test_deterministic(sample_dir):
    site = read_sars_cov_2_ct(sample_dir / "sars-cov-2-ct")
    assert fold_split(site, 1, seed=3) == fold_split(site, 1, seed=3)
    assert fold_split(site, 1, seed=3) != fold_split(site, 1, seed=4)


@pytest.mark.parametrize("fold", [-1, 4])
def test_fold_out_of_range(sample_dir, fold):
    site = read_sars_cov_2_ct(sample_dir / "sars-cov-2-ct")
    with pytest.raises(CrossSiteError, match="out of range"):
        fold_split(site, fold, 4)


def test_official(sample_dir):
    sites = discover_sites(sample_dir)
    assert len(official_split(sites["covid-ct"])["test"]) == 40
    with pytest.raises(CrossSiteError, match="sars-cov-2-ct"):
        official_split(sites["sars-cov-2-ct"])
    with pytest.raises(CrossSiteError, match="sites with one: covid-ct"):
        make_splits(sites, "official", 0, 4, 0)
    with pytest.raises(CrossSiteError, match="unknown split kind"):
        make_splits(sites, "random", 0, 4, 0)


def test_save_load_roundtrip(sample_dir, tmp_path):
    sites = discover_sites(sample_dir)
    splits = make_splits(sites, "fold", 2, 4, 0)
    out = tmp_path / "run" / "splits.json"
    save_splits(out, sites, splits, settings={"kind": "fold", "fold": 2})
    doc = json.loads(out.read_text())
    assert doc["settings"]["fold"] == 2
    assert doc["sites"]["covid-ct"]["test"][0] == str(sites["covid-ct"].samples[splits["covid-ct"]["test"][0]].path)
    assert load_splits(out, sites) == splits
    assert not list(out.parent.glob("*.tmp"))


def test_load_unknown_path(sample_dir, tmp_path):
    sites = discover_sites(sample_dir)
    out = tmp_path / "splits.json"
    save_splits(out, sites, make_splits(sites, "fold", 0, 4, 0))
    doc = json.loads(out.read_text())
    doc["sites"]["covid-ct"]["val"].append("elsewhere/x.png")
    out.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="elsewhere/x.png") as e:
        load_splits(out, sites)
    assert str(out) in str(e.value)


def _near_pairs(site, threshold=0.95):
    from crosssite.data.duplicates import fingerprints, similar_pairs

    _, thumbs = fingerprints([s.path for s in site.samples], LUNG_WINDOW)
    i, j, _ = similar_pairs(thumbs, threshold)
    return list(zip(i.tolist(), j.tolist()))


def _straddling(split, pairs):
    part = {i: p for p, idx in split.items() for i in idx}
    return [(a, b) for a, b in pairs if part[a] != part[b]]


def test_grouped_folds_keep_near_duplicates_together(tmp_path):
    from PIL import Image

    from crosssite.data.sites import read_generic

    rng = np.random.default_rng(0)
    for label in ("COVID", "NonCOVID"):
        (tmp_path / label).mkdir()
        for c in range(12):  # 12 "patients" per class, 3 near-identical slices each
            base = rng.random((40, 40)) * 255
            for k in range(3):
                img = np.clip(base + rng.normal(0, 5, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(tmp_path / label / f"{c}_{k}.png")
    site = read_generic(tmp_path, "synthetic")
    pairs = _near_pairs(site)
    assert len(pairs) == 2 * 12 * 3
    plain = [fold_split(site, f, 4, seed=0) for f in range(4)]
    assert any(_straddling(s, pairs) for s in plain)  # image-level folds split the clusters
    for fold in range(4):
        s = fold_split(site, fold, 4, seed=0, group_duplicates=0.95, window=LUNG_WINDOW)
        assert not _straddling(s, pairs)
        assert sorted(s["train"] + s["val"] + s["test"]) == list(range(len(site)))


def test_grouped_folds_full(shared_data):
    site = discover_sites(shared_data)["sars-cov-2-ct"]
    pairs = _near_pairs(site)
    assert _straddling(make_splits({"a": site}, "fold", 0, 4, 0)["a"], pairs)
    grouped = make_splits({"a": site}, "fold", 0, 4, 0, group_duplicates=0.95, window=LUNG_WINDOW)["a"]
    assert not _straddling(grouped, pairs)


def _twins(site):
    """(i, j) of the slices of scans pKa / pKb (see conftest.window_twins_site)."""
    index = {str(s.path).replace("a.mha#", "b.mha#"): i for i, s in enumerate(site.samples) if "a.mha#" in str(s.path)}
    return [(index[str(s.path)], j) for j, s in enumerate(site.samples) if str(s.path) in index]


def test_grouped_folds_see_ct_slices_through_the_run_window(window_twins_site):
    from crosssite.data.duplicates import duplicate_groups
    from crosssite.data.sites import read_generic

    site = read_generic(window_twins_site, "ct")
    twins, paths = _twins(site), [s.path for s in site.samples]
    lung, bone = (1500.0, -600.0), (2000.0, 1000.0)
    assert len(twins) == 16 and len(site) == 32
    assert len(set(duplicate_groups(paths, 0.95, window=lung))) == 16
    assert len(set(duplicate_groups(paths, 0.95, window=bone))) == 32

    def folds(window):
        return [make_splits({"ct": site}, "fold", f, 4, 0, 0.95, window=window)["ct"] for f in range(4)]

    assert not any(_straddling(s, twins) for s in folds(lung))
    with pytest.raises(ValueError, match="window"):  # no default window a caller could silently miss
        fold_split(site, 0, 4, 0, group_duplicates=0.95)
    assert any(_straddling(s, twins) for s in folds(bone))  # through a bone window twins are unrelated
