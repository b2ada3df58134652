"""What methods and tools use of a backbone: the contract a new network meets to be trained by crosssite.

A backbone is an `nn.Module` built by a factory registered with `models.register_backbone(name, factory,
capabilities)`. Methods build it through `Method.make_backbone()`, which calls
`factory(width=..., image_size=..., pepx_relu=..., projection=...[, projection_head=...])`: a factory
takes every one of these keywords, may ignore those that mean nothing to its network, and raises
ValueError for a value it cannot build (e.g. `projection=True` without a projection head).

Image-size rule: a backbone accepts every `image_size` that `TrainConfig` accepts (a multiple of
IMAGE_SIZE_STEP = 16, at least MIN_IMAGE_SIZE = 32; `image_size_problem` says why a size breaks it) and
predicts from images of that side.

Capabilities say what a method may do to the network beyond the contract; a method names the ones it
needs (`Method.needs`) and runs on every registered backbone that has them.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor, nn

#: the network has batch norms (a method may make them site-specific: sepnorm, contrastive, ms-net)
BATCH_NORM = "batch-norm"
#: `project(emb)` works when built with `projection=True` (contrastive)
PROJECTION = "projection"
#: COVID-Net's PEPX blocks and a classifier ending in nn.Linear (series- and parallel-adapter attach to them)
PEPX_BLOCKS = "pepx-blocks"
CAPABILITY_NAMES = (BATCH_NORM, PROJECTION, PEPX_BLOCKS)

#: the image-size rule, the one source of it: TrainConfig checks it, every backbone builds for it
IMAGE_SIZE_STEP = 16
MIN_IMAGE_SIZE = 2 * IMAGE_SIZE_STEP


def image_size_problem(size) -> str | None:
    """Why `size` breaks the image-size rule, or None when it is an accepted side."""
    if isinstance(size, bool) or not isinstance(size, int) or size < MIN_IMAGE_SIZE or size % IMAGE_SIZE_STEP:
        return f"image_size must be a multiple of {IMAGE_SIZE_STEP}, at least {MIN_IMAGE_SIZE}, got {size!r}"
    return None


@runtime_checkable
class Backbone(Protocol):
    """The attributes every method and tool may use (COVIDNet's names)."""

    #: input side in pixels, as configured
    image_size: int
    #: size D of the embedding `features` returns
    embedding_dim: int
    #: the head `classify` runs (ms-net copies it into per-site auxiliary heads)
    classifier: nn.Module

    @property
    def has_projection(self) -> bool:
        """Whether `project` works (built with `projection=True`)."""
        ...

    @property
    def last_stage(self) -> nn.Module:
        """The module whose output is the last convolutional feature map (Grad-CAM hooks it)."""
        ...

    def features(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) images -> (B, D) embeddings."""
        ...

    def classify(self, emb: Tensor) -> Tensor:
        """(B, D) embeddings -> (B, num_classes) logits."""
        ...

    def project(self, emb: Tensor) -> Tensor:
        """(B, D) embeddings -> the contrastive projection; RuntimeError without a projection head."""
        ...

    def forward(self, x: Tensor) -> Tensor:
        """Logits, `classify(features(x))`: what `predict`, inference and export run."""
        ...
