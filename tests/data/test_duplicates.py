"""Exact and near duplicates on synthetic images whose relations are known by construction."""

import numpy as np
import pytest
from PIL import Image

from crosssite.data.duplicates import duplicate_groups, exact_pairs, fingerprints, similar_pairs
from crosssite.data.volumes import LUNG_WINDOW


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    base = (rng.random((64, 80)) * 255).astype(np.uint8)
    noisy = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
    other = (rng.random((64, 80)) * 255).astype(np.uint8)
    paths = {"base": tmp_path / "base.png", "copy": tmp_path / "copy.bmp", "noisy": tmp_path / "noisy.png",
             "other": tmp_path / "other.png", "rgb": tmp_path / "rgb.png"}
    Image.fromarray(base).save(paths["base"])
    Image.fromarray(base).save(paths["copy"])  # same pixels, other file format and bytes
    Image.fromarray(noisy).save(paths["noisy"])
    Image.fromarray(other).save(paths["other"])
    Image.fromarray(np.stack([other] * 3, -1)).save(paths["rgb"])  # same gray pixels stored as RGB
    return paths


def test_exact_pairs_compare_pixels_not_bytes(images):
    names = list(images)
    hashes, _ = fingerprints(list(images.values()), LUNG_WINDOW)
    found = {frozenset((names[a], names[b])) for a, b in exact_pairs(hashes)}
    assert found == {frozenset(("base", "copy")), frozenset(("other", "rgb"))}


def test_near_pairs_above_threshold_only(images):
    names = list(images)
    _, thumbs = fingerprints(list(images.values()), LUNG_WINDOW)
    i, j, c = similar_pairs(thumbs, 0.95)
    found = {frozenset((names[a], names[b])): s for a, b, s in zip(i, j, c)}
    assert set(found) == {frozenset(p) for p in (("base", "copy"), ("base", "noisy"), ("copy", "noisy"),
                                                 ("other", "rgb"))}
    assert found[frozenset(("base", "copy"))] == pytest.approx(1.0)
    assert 0.95 <= found[frozenset(("base", "noisy"))] < 1.0
    assert len(similar_pairs(thumbs, 1.0 + 1e-6)[0]) == 0


def test_blockwise_correlation_matches_dense(monkeypatch):
    import crosssite.data.duplicates as dup

    rng = np.random.default_rng(1)
    thumbs = rng.normal(size=(50, 16)).astype(np.float32)
    thumbs[10] = thumbs[3] + 0.01
    thumbs -= thumbs.mean(1, keepdims=True)
    thumbs /= np.linalg.norm(thumbs, axis=1, keepdims=True)
    dense = thumbs @ thumbs.T
    expected = {(a, b) for a in range(50) for b in range(a + 1, 50) if dense[a, b] >= 0.5}
    monkeypatch.setattr(dup, "_BLOCK", 7)  # several blocks, the last one short
    i, j, _ = dup.similar_pairs(thumbs, 0.5)
    assert set(zip(i.tolist(), j.tolist())) == expected and expected


def test_groups_join_near_duplicates_and_patients(images):
    paths = list(images.values())  # base, copy, noisy, other, rgb
    groups = duplicate_groups(paths, 0.95, window=LUNG_WINDOW)
    assert groups[0] == groups[1] == groups[2] and groups[3] == groups[4] and groups[0] != groups[3]
    # a patient link joins the two clusters into one
    joined = duplicate_groups(paths, 0.95, np.array(["p1", "p2", "p3", "p1", "p4"], dtype=object), window=LUNG_WINDOW)
    assert len(set(joined)) == 1


def test_slices_of_a_ct_volume_are_fingerprinted_through_the_window(tmp_path, metaimage_writer):
    """`audit` and `--group-duplicates` read CT slices as training does (HU through the lung window)."""
    from crosssite.data.volumes import scan_slices

    hu = np.full((3, 16, 16), -1000, np.int16)
    hu[:, 4:12, 4:12] = -400
    hu[2, 2:6, 8:14] = 40  # the third slice differs
    volume = metaimage_writer(tmp_path / "v.mha", hu)
    hashes, thumbs = fingerprints(scan_slices(str(volume))[0], LUNG_WINDOW)
    assert hashes[0] == hashes[1] != hashes[2]
    assert np.isclose(thumbs[0] @ thumbs[1], 1.0) and thumbs[0] @ thumbs[2] < 0.99
