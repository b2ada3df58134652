"""How an image or a CT slice becomes the network's input: one value, built from a run's config.

Training, prediction, Grad-CAM, adaptation and export decode their inputs with it, and what an export's
metadata and a model card say about preprocessing is this value written out, so the three cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass

from .data.images import DecodedCache
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .data.volumes import LUNG_WINDOW

DESCRIPTION = ("gray image resized to image_size x image_size (bilinear), scaled to [0, 1], replicated to 3 "
               "channels, (x - mean) / std per channel; a CT scan's slices (slices: 'all' or START:STOP[:STEP]) "
               "are gray through the HU window [width, level]: level - width/2 -> 0, level + width/2 -> 255")


@dataclass(frozen=True)
class Preprocessing:
    """Image size (pixels, square), CT window (width, level in HU) and CT slice selection."""

    image_size: int
    window: tuple[float, float] = LUNG_WINDOW
    slices: str = "all"

    def __post_init__(self):
        object.__setattr__(self, "window", tuple(float(v) for v in self.window))

    @classmethod
    def of(cls, config) -> Preprocessing:
        """A run's preprocessing, from its TrainConfig."""
        return cls(config.image_size, config.window, config.slices)

    def cache(self) -> DecodedCache:
        """A decoder of images and CT slices at this size and window."""
        return DecodedCache(self.image_size, self.window)

    def to_dict(self) -> dict:
        """What export metadata and model cards write (JSON-ready)."""
        return {"image_size": self.image_size, "preprocessing": DESCRIPTION, "mean": list(IMAGENET_MEAN),
                "std": list(IMAGENET_STD), "window": list(self.window), "slices": self.slices}

    @classmethod
    def from_dict(cls, values: dict) -> Preprocessing:
        return cls(values["image_size"], values["window"], values["slices"])
