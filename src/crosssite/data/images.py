"""Decoding images to 8-bit grayscale, once per run."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from crosssite.data.readers import SERIES_MARK
from crosssite.data.transforms import resize_shorter, resize_square, train_resize
from crosssite.data.volumes import load_slice, parse_slice
from crosssite.errors import DataError
from crosssite.io import atomic_write

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

    def save(self, path: Path) -> None:
        """Write every decoded array to `path` (an .npz, atomically), stamped with the settings and each source
        file's size and modification time, so that another process of the same run loads instead of decoding:
        under Flower a federated site gets a fresh process for every message."""
        train, evaluated = sorted(self._train), sorted(self._eval)
        shapes = np.array([self._train[k].shape for k in train], dtype=np.int64).reshape(-1, 2)
        arrays = {
            "stamp": np.array(self._stamp(train + evaluated)),
            "train_paths": np.array(train, dtype=str), "train_shapes": shapes,
            "train_pixels": np.concatenate([self._train[k].ravel() for k in train]) if train else np.zeros(0, np.uint8),
            "eval_paths": np.array(evaluated, dtype=str),
            "eval_pixels": (np.stack([self._eval[k] for k in evaluated]) if evaluated
                            else np.zeros((0, self.image_size, self.image_size), np.uint8)),
        }

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: np.savez would add .npz to a name
                np.savez(f, **arrays)

        atomic_write(Path(path), write)

    def load(self, path: Path) -> bool:
        """Take the arrays of a `save`d file whose stamp still holds (same image size, window, and source files
        unchanged); return whether it did. A missing, unreadable or stale file is ignored: decoding again is
        always correct."""
        try:
            with np.load(path, allow_pickle=False) as stored:
                train, evaluated = list(stored["train_paths"]), list(stored["eval_paths"])
                if str(stored["stamp"]) != self._stamp(train + evaluated):
                    return False
                sizes = np.prod(stored["train_shapes"], axis=1)
                pieces = np.split(stored["train_pixels"], np.cumsum(sizes)[:-1]) if len(sizes) else []
                self._train.update({k: v.reshape(shape) for k, v, shape in zip(train, pieces, stored["train_shapes"])})
                self._eval.update(zip(evaluated, stored["eval_pixels"]))
                return True
        except (OSError, KeyError, ValueError, zipfile.BadZipFile):
            return False

    def _stamp(self, paths: list[str]) -> str:
        """A digest of the settings and of the size and modification time of every file the paths read (a
        scan's whole folder)."""
        sources = sorted({parse_slice(p)[0] if parse_slice(p) else p for p in paths})
        digest = hashlib.sha256(json.dumps([self.image_size, list(self.window)]).encode())
        for source in sources:
            digest.update(source.encode())
            for file in _files_of(source):
                info = file.stat()
                digest.update(f"{file}:{info.st_size}:{info.st_mtime_ns}".encode())
        return digest.hexdigest()


def _files_of(source: str) -> list[Path]:
    """The files a source path reads: itself, every file under a folder (a DICOM series) or beside a DICOMDIR
    (one of its series); a missing path has none, so a stamp over it changes when it appears."""
    dicomdir, mark, _ = source.partition(SERIES_MARK)
    path = Path(dicomdir).parent if mark else Path(source)
    if path.is_dir():
        return sorted(Path(root) / name for root, _, names in os.walk(path) for name in names)
    return [path] if path.exists() else []
