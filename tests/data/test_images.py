import os

import numpy as np
import pytest
from PIL import Image

from crosssite.data.images import DecodedCache, load_grayscale
from crosssite.data.sites import SAMPLE_DATA
from crosssite.data.volumes import LUNG_WINDOW
from crosssite.errors import DataError


def test_rgb_to_luma(tmp_path):
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "x.png")
    out = load_grayscale(tmp_path / "x.png")
    assert out.shape == (10, 12) and out.dtype == np.uint8
    assert out[0, 0] == round(200 * 299 / 1000)


def test_16bit_scaled_by_own_range(tmp_path):
    arr = np.full((9, 9), 1000, np.uint16)
    arr[0, 0] = 3000
    Image.fromarray(arr).save(tmp_path / "x.png")
    out = load_grayscale(tmp_path / "x.png")
    assert out.dtype == np.uint8 and out.max() == 255 and out.min() == 0


def test_truncated_png(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(tmp_path / "x.png")
    data = (tmp_path / "x.png").read_bytes()
    (tmp_path / "x.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cannot read image") as e:
        load_grayscale(tmp_path / "x.png")
    assert str(tmp_path / "x.png") in str(e.value)


@pytest.mark.parametrize("content", [b"", b"not an image at all"])
def test_not_an_image(tmp_path, content):
    (tmp_path / "x.png").write_bytes(content)
    with pytest.raises(DataError, match="cannot read image") as e:
        load_grayscale(tmp_path / "x.png")
    assert str(tmp_path / "x.png") in str(e.value)


def test_too_small(tmp_path):
    Image.fromarray(np.zeros((5, 40), np.uint8)).save(tmp_path / "x.png")
    with pytest.raises(DataError, match="too small") as e:
        load_grayscale(tmp_path / "x.png")
    assert str(tmp_path / "x.png") in str(e.value)


def test_cache_sizes_and_reuse():
    paths = sorted((SAMPLE_DATA / "covid-ct" / "CT_COVID").glob("*.png"))[:3]
    cache = DecodedCache(64, LUNG_WINDOW)
    cache.preload(paths, "test")
    train = cache.train_image(paths[0])
    assert min(train.shape) == 73 and train.dtype == np.uint8
    assert cache.train_image(paths[0]) is train
    assert cache.eval_batch(paths).shape == (3, 64, 64)


def test_saved_decodings_load_in_another_cache_without_decoding(tmp_path, monkeypatch):
    paths = sorted((SAMPLE_DATA / "covid-ct" / "CT_COVID").glob("*.png"))[:4]
    cache = DecodedCache(64, LUNG_WINDOW)
    cache.preload(paths[:2], "train", variants=("train",), progress=False)
    cache.preload(paths[2:], "eval", variants=("eval",), progress=False)
    cache.save(tmp_path / "decoded.npz")
    fresh = DecodedCache(64, LUNG_WINDOW)  # as a new process of the same run would make it
    assert fresh.load(tmp_path / "decoded.npz")
    monkeypatch.setattr(DecodedCache, "original", lambda self, path: pytest.fail(f"decoded {path} again"))
    for path in paths[:2]:
        np.testing.assert_array_equal(fresh.train_image(path), cache.train_image(path))
    np.testing.assert_array_equal(cache.eval_batch(paths[2:]), fresh.eval_batch(paths[2:]))


def test_a_stale_or_foreign_save_is_ignored(tmp_path):
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((40, 50), 90, np.uint8)).save(tmp_path / name)
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    cache = DecodedCache(32, LUNG_WINDOW)
    cache.preload(paths, "all", progress=False)
    cache.save(tmp_path / "decoded.npz")
    assert not DecodedCache(48, LUNG_WINDOW).load(tmp_path / "decoded.npz")  # other settings
    assert not DecodedCache(32, (400.0, 40.0)).load(tmp_path / "decoded.npz")
    Image.fromarray(np.full((40, 50), 200, np.uint8)).save(tmp_path / "b.png")  # an image replaced in place
    assert not DecodedCache(32, LUNG_WINDOW).load(tmp_path / "decoded.npz")
    (tmp_path / "torn.npz").write_bytes((tmp_path / "decoded.npz").read_bytes()[:100])
    assert not DecodedCache(32, LUNG_WINDOW).load(tmp_path / "torn.npz")
    assert not DecodedCache(32, LUNG_WINDOW).load(tmp_path / "missing.npz")


def test_a_ct_slice_save_goes_stale_when_any_file_of_its_series_changes(tmp_path, dicom_series):
    import shutil

    from crosssite.data.volumes import SLICE_MARK

    series = tmp_path / "series"
    shutil.copytree(dicom_series, series)
    slices = [f"{series}{SLICE_MARK}{i}" for i in range(3)]
    cache = DecodedCache(32, LUNG_WINDOW)
    cache.preload(slices, "slices", progress=False)
    cache.save(tmp_path / "decoded.npz")
    fresh = DecodedCache(32, LUNG_WINDOW)
    assert fresh.load(tmp_path / "decoded.npz")
    np.testing.assert_array_equal(fresh.eval_batch(slices), cache.eval_batch(slices))
    last = sorted(series.iterdir())[-1]  # a slice that was not decoded, but belongs to the scan
    last.write_bytes(last.read_bytes())
    os.utime(last, ns=(last.stat().st_atime_ns, last.stat().st_mtime_ns + 10**9))
    assert not DecodedCache(32, LUNG_WINDOW).load(tmp_path / "decoded.npz")
