"""The paper's preprocessing (its reference code used torchvision), in Pillow + numpy + torch.

train: Resize(256) on the shorter side -> RandomCrop(224) -> RandomHorizontalFlip -> RandomVerticalFlip
eval:  Resize((224, 224))
both:  ToTensor, gray replicated to 3 channels, ImageNet Normalize.
`image_size` replaces 224 and scales 256 with it, so smaller demo runs keep the same geometry.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def train_resize(image_size: int) -> int:
    """Shorter-side size before the random crop: 256 for the paper's 224."""
    return round(image_size * 256 / 224)


def _resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    if img.shape == (height, width):
        return img
    return np.asarray(Image.fromarray(img).resize((width, height), Image.Resampling.BILINEAR))


def resize_shorter(img: np.ndarray, size: int) -> np.ndarray:
    """Shorter side -> size, aspect kept (longer side truncated, as torchvision's Resize(int))."""
    h, w = img.shape
    if h <= w:
        return _resize(img, int(size * w / h), size)
    return _resize(img, size, int(size * h / w))


def resize_square(img: np.ndarray, size: int) -> np.ndarray:
    return _resize(img, size, size)


def random_crop_flip(images: list[np.ndarray], size: int, rng: np.random.Generator) -> np.ndarray:
    """Random size x size crop of each image, each flipped horizontally and vertically with p=0.5."""
    out = np.empty((len(images), size, size), dtype=np.uint8)
    for i, img in enumerate(images):
        h, w = img.shape
        if h < size or w < size:
            raise ValueError(f"image of {w}x{h} is smaller than the crop size {size}")
        top, left = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
        crop = img[top:top + size, left:left + size]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        if rng.random() < 0.5:
            crop = crop[::-1, :]
        out[i] = crop
    return out


def to_tensor(batch: np.ndarray) -> torch.Tensor:
    """(B, s, s) uint8 -> (B, 3, s, s) float32 in ImageNet-normalised units."""
    if batch.ndim != 3 or batch.dtype != np.uint8:
        raise ValueError(f"expected a (B, H, W) uint8 batch, got {batch.dtype} of shape {batch.shape}")
    return normalize(torch.from_numpy(np.ascontiguousarray(batch)))


def normalize(x: torch.Tensor) -> torch.Tensor:
    """(B, s, s) uint8 tensor -> (B, 3, s, s) float32 in ImageNet-normalised units, on x's device
    (training sends the uint8 crops to the GPU, a quarter of the float traffic, and normalises there)."""
    x = x.to(torch.float32).div_(255.0).unsqueeze(1)
    mean, std = _mean_std(x.device)
    return ((x - mean) / std).contiguous()


@functools.cache
def _mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet's mean and std as (1, 3, 1, 1) tensors on `device`, made once: a copy from the host inside
    a step that is being recorded as a CUDA graph (crosssite.capture) would fail."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return mean, std
