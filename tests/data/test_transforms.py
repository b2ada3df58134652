import numpy as np
import pytest
import torch

from crosssite.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, random_crop_flip, resize_shorter,
                                       resize_square, to_tensor, train_resize)


def test_train_resize():
    assert train_resize(224) == 256
    assert train_resize(112) == 128


def test_resize_shapes():
    img = np.zeros((100, 150), np.uint8)
    assert resize_shorter(img, 50).shape == (50, 75)
    assert resize_shorter(img.T, 50).shape == (75, 50)
    assert resize_square(img, 32).shape == (32, 32)


def test_to_tensor_constant_image():
    x = to_tensor(np.full((2, 8, 8), 255, np.uint8))
    assert x.shape == (2, 3, 8, 8) and x.dtype == torch.float32 and x.is_contiguous()
    for c in range(3):
        assert torch.allclose(x[:, c], torch.tensor((1 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]))
    assert torch.allclose(to_tensor(np.zeros((1, 4, 4), np.uint8))[0, 0], torch.tensor(-0.485 / 0.229))


def test_crop_shapes_and_content():
    rng = np.random.default_rng(0)
    img = np.arange(20 * 30, dtype=np.int64).reshape(20, 30).astype(np.uint8)
    out = random_crop_flip([img, img, img], 16, rng)
    assert out.shape == (3, 16, 16) and out.dtype == np.uint8
    with pytest.raises(ValueError):
        random_crop_flip([np.zeros((10, 10), np.uint8)], 16, rng)


def test_flips_happen():
    img = np.zeros((8, 8), np.uint8)
    img[0, 0] = 255  # a mark in the top-left corner: its crop position tells which flips were applied
    corners = set()
    for seed in range(40):
        out = random_crop_flip([img], 8, np.random.default_rng(seed))[0]
        corners.add(tuple(int(v) for v in np.argwhere(out == 255)[0]))
    assert corners == {(0, 0), (0, 7), (7, 0), (7, 7)}
