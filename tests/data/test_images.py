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
