"""Decoding images to 8-bit grayscale, once per run."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from crosssite.data.transforms import resize_shorter, resize_square, train_resize
from crosssite.data.volumes import load_slice, parse_slice
from crosssite.errors import DataError

MIN_SIDE = 8
_TO_L = {"1", "L", "P", "LA", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "La", "RGBa"}


def load_grayscale(path: Path) -> np.ndarray:
    """uint8 H x W. Colour is reduced with ITU-R 601 luma (as the prepared data); high bit depth
    images are stretched by their own min/max since they carry no window."""
    try:
        with Image.open(path) as img:
            img.load()  # decode now so a truncated file fails here, not later in a batch
            if img.mode in _TO_L:
                arr = np.asarray(img.convert("L"), dtype=np.uint8)
            else:  # I;16*, I, F
                arr = np.asarray(img, dtype=np.float64)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from None
    if arr.ndim != 2:
        raise DataError(f"{path}: cannot read image (unexpected array shape {arr.shape})")
    if min(arr.shape) < MIN_SIDE:
        raise DataError(f"{path}: image too small ({arr.shape[1]}x{arr.shape[0]} px, "
                        f"need at least {MIN_SIDE} px per side)")
    if arr.dtype != np.uint8:
        if not np.isfinite(arr).all():
            raise DataError(f"{path}: image has non-finite pixel values")
        lo, hi = arr.min(), arr.max()
        arr = np.zeros(arr.shape, np.uint8) if hi == lo else np.rint((arr - lo) * 255.0 / (hi - lo)).astype(np.uint8)
    return arr


def load_image(path, window) -> np.ndarray:
    """uint8 H x W of an image file, or of a CT slice (`SCAN#slice=I`, see volumes.py) through `window`."""
    return load_slice(path, window) if parse_slice(path) else load_grayscale(Path(path))


class DecodedCache:
    """Decodes each image once per run and keeps the resized uint8 array (train-size and eval-size variants).

    Only the resized uint8 arrays are kept (about 85 kB train / 50 kB eval per image at 224), never the
    decoded originals, which can be 20x larger. CT slices go through `window` (width, level in HU); a scan
    is decoded once for all its slices when they are read one after another (as preload does).
    """

    def __init__(self, image_size: int, window):
        self.image_size = image_size
        self.window = tuple(window)
        self._train: dict[str, np.ndarray] = {}
        self._eval: dict[str, np.ndarray] = {}

    def _decode(self, path, train: bool, eval: bool) -> None:
        img = self.original(path)
        if train:
            self._train[str(path)] = resize_shorter(img, train_resize(self.image_size))
        if eval:
            self._eval[str(path)] = resize_square(img, self.image_size)

    def original(self, path) -> np.ndarray:
        """The image (or windowed slice) at its own size, not cached."""
        return load_image(path, self.window)

    def train_image(self, path) -> np.ndarray:
        """Shorter side resized to train_resize(image_size), aspect kept (ready for random_crop_flip)."""
        if str(path) not in self._train:
            self._decode(path, train=True, eval=False)
        return self._train[str(path)]

    def eval_image(self, path) -> np.ndarray:
        """Resized to image_size x image_size."""
        if str(path) not in self._eval:
            self._decode(path, train=False, eval=True)
        return self._eval[str(path)]

    def eval_batch(self, paths) -> np.ndarray:
        return np.stack([self.eval_image(p) for p in paths])

    def preload(
        self, paths: Iterable, desc: str, variants: tuple[str, ...] = ("train", "eval"), progress: bool = True
    ) -> None:
        """Decode up front with a progress bar, each file once for all requested variants."""
        want_train, want_eval = "train" in variants, "eval" in variants
        for p in tqdm(list(paths), desc=desc, unit="img", leave=False, disable=not progress):
            train = want_train and str(p) not in self._train
            eval_ = want_eval and str(p) not in self._eval
            if train or eval_:
                self._decode(p, train, eval_)
