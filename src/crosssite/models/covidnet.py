"""COVID-Net backbones: the original network and the paper's redesign.

Architecture facts checked against the reference code (med-air/Contrastive-COVIDNet
``code/model.py``, which builds on the PyTorch port iliasprc/COVIDNet
``model/covidnet.py``):

* stem: conv 7x7 stride 2 padding 3 (64 ch) -> [BN] -> ReLU -> max pool 2x2;
* PEPX block (C_in -> out): 1x1 (C_in // 2) -> 1x1 (int(3 C_in / 4)) ->
  depthwise 3x3 (int(3 C_in / 4), padding 1) -> 1x1 (C_in // 2) -> 1x1 (out),
  with no activation between the convolutions (the reference's quirk; our
  ``pepx_relu=True`` adds a ReLU after each inner conv for an experiment);
* four stages of 3, 4, 6, 3 PEPX blocks at widths 256/512/1024/2048. Each
  stage has an "upper" 1x1 conv branch: stage 1 takes the (pooled) stem
  output, later stages take the previous stage's summed map and max pool it.
  Inside a stage each block reads the sum of the upper output and all earlier
  block outputs of the stage; the stage's output is the sum of everything;
* redesign (the reference's ``bnd=True, bna=True``): BN + ReLU after the stem
  conv and after each upper 1x1 conv (before its max pool), adaptive average
  pooling to 2x2 (8192-d), dense head Linear 1024 -> BN1d -> ReLU ->
  Linear 256 -> BN1d -> ReLU -> Linear(num_classes), projection head
  Linear 1024 -> BN1d -> ReLU -> Linear 128 -> BN1d -> ReLU (the reference's
  ``feature1``/``fbn5``/``feature2``/``fbn6``: so the contrastive embedding is
  non-negative).

Where this module deliberately differs from the reference code:

* the reference's ``pexp4_1`` input sums ``pepx32`` twice and never ``pepx33``
  (a copy-paste defect inherited from iliasprc/COVIDNet); here every block
  output of stage 3 is summed exactly once;
* the reference feeds the next stage ``sum(maxpool(t) for t in terms)``; we
  follow the issue's specification, ``maxpool(sum(terms))`` (the same summed
  map that also feeds the next upper 1x1 conv). Max pooling does not commute
  with addition, so the two are not numerically identical;
* the reference redesign pools only ``pepx43`` (the last block output) for the
  head; we pool the stage-4 sum (all stage-4 block outputs + upper branch), as
  the original COVID-Net / iliasprc's large net flatten the stage-4 sum;
* the reference keeps one BN per site inside the model (``bn0``/``bn0new`` ...);
  here the model has one BN per layer and site-specific BN is added by
  :func:`crosssite.models.site_bn.convert_to_site_bn`;
* the reference's classifier ends with a Sigmoid; ours returns raw logits.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .contract import image_size_problem
from .layers import MaxPool2x2, PointwiseConv, ReLUMaxPool2x2

STEM_CHANNELS = 64
STAGE_CHANNELS = (256, 512, 1024, 2048)
STAGE_BLOCKS = (3, 4, 6, 3)
HIDDEN_1 = 1024
HIDDEN_2 = 256
PROJ_HIDDEN = 1024
PROJ_DIM = 128
REDESIGN_POOL = 2  # adaptive average pooling output side (2x2)
DOWNSAMPLE = 32  # total stride of the backbone
# input sizes: contract.image_size_problem's multiples of 16 (the last max pool floors an odd side, e.g.
# 112 px -> 3x3 at stage 4, which is image_size // DOWNSAMPLE for every multiple of 16), so 112 px works as
# well as 224


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


#: endings of the contrastive projection head: the reference code's, and a plain linear one
PROJECTION_HEADS = ("bn-relu", "linear")


def dense_head(dims: list[int], *, batch_norm: bool, act_last: bool = False) -> nn.Sequential:
    """Linear layers through `dims`, each followed by [BatchNorm1d +] ReLU except the last (unless `act_last`)."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims, dims[1:])):
        layers.append(nn.Linear(d_in, d_out))
        if act_last or i < len(dims) - 2:
            layers += [nn.BatchNorm1d(d_out)] if batch_norm else []
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class PEPX(nn.Module):
    """Projection-expansion-projection-extension block (no BN)."""

    def __init__(self, in_channels: int, out_channels: int, *, relu: bool = False):
        super().__init__()
        proj = max(1, in_channels // 2)
        expand = max(1, (3 * in_channels) // 4)
        # ModuleList (not Sequential with ReLU modules) so parameter names are the
        # same with and without ``relu``: network.0 .. network.4.
        self.network = nn.ModuleList(
            [
                PointwiseConv(in_channels, proj),
                PointwiseConv(proj, expand),
                nn.Conv2d(expand, expand, kernel_size=3, padding=1, groups=expand),
                PointwiseConv(expand, proj),
                PointwiseConv(proj, out_channels),
            ]
        )
        self.relu = bool(relu)

    def forward(self, x: Tensor) -> Tensor:
        last = len(self.network) - 1
        for i, conv in enumerate(self.network):
            x = conv(x)
            if self.relu and i < last:
                x = F.relu(x)
        return x


class Stage(nn.Module):
    """One COVID-Net stage; its output is the summed feature map of the stage.

    ``x`` is the pooled stem output (first stage, ``downsample=False``) or the
    previous stage's summed map (``downsample=True``: the upper branch is max
    pooled after its conv and the first block reads ``maxpool(x)``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_blocks: int,
        *,
        downsample: bool,
        batch_norm: bool,
        pepx_relu: bool,
    ):
        super().__init__()
        # the upper branch: 1x1 conv [-> BN -> ReLU] [-> 2x2 max pool], the pool fused with the ReLU
        upper: list[nn.Module] = [PointwiseConv(in_channels, out_channels)]
        if batch_norm:
            upper += [nn.BatchNorm2d(out_channels), ReLUMaxPool2x2() if downsample else nn.ReLU()]
        elif downsample:
            upper.append(MaxPool2x2())
        self.upper = nn.Sequential(*upper)
        # the previous stage's map, max pooled for the first block (a module, like every layer here)
        self.pool_input = MaxPool2x2() if downsample else nn.Identity()
        self.blocks = nn.ModuleList(
            [PEPX(in_channels, out_channels, relu=pepx_relu)]
            + [PEPX(out_channels, out_channels, relu=pepx_relu) for _ in range(num_blocks - 1)]
        )

    def forward(self, x: Tensor) -> Tensor:
        total = self.upper(x)
        x = self.pool_input(x)
        total = total + self.blocks[0](x)
        for block in self.blocks[1:]:
            total = total + block(total)
        return total


class COVIDNet(nn.Module):
    """COVID-Net (``redesign=False``) or the paper's redesigned net (``redesign=True``)."""

    def __init__(
        self,
        *,
        redesign: bool,
        width: float = 1.0,
        image_size: int = 224,
        num_classes: int = 2,
        pepx_relu: bool = False,
        projection: bool | None = None,
        projection_head: str = "bn-relu",
    ):
        """``projection`` (extension used by crosssite.methods): build the contrastive
        projection head; default = ``redesign``. Only the redesign can have one.
        ``projection_head``: "bn-relu" ends the head in BN + ReLU as the reference code does
        (non-negative embeddings); "linear" ends it in the bare linear layer (an ablation of ours)."""
        super().__init__()
        problem = image_size_problem(image_size)
        if problem:
            raise ValueError(problem)
        if not isinstance(width, (int, float)) or isinstance(width, bool) or not width > 0:
            raise ValueError(f"width must be a positive number, got {width!r}")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.redesign = bool(redesign)
        self.width = float(width)
        self.image_size = image_size
        self.num_classes = num_classes
        self.pepx_relu = bool(pepx_relu)
        if projection is None:
            projection = self.redesign
        if projection_head not in PROJECTION_HEADS:
            raise ValueError(f"projection_head must be one of {', '.join(PROJECTION_HEADS)}, got {projection_head!r}")
        if projection and not self.redesign:
            raise ValueError("projection=True needs the redesigned net (covidnet-redesign); covidnet has no projection head")

        stem_ch = _scaled(STEM_CHANNELS, width)
        stem: list[nn.Module] = [nn.Conv2d(3, stem_ch, kernel_size=7, stride=2, padding=3)]
        if self.redesign:
            stem.append(nn.BatchNorm2d(stem_ch))
        stem.append(ReLUMaxPool2x2())
        self.stem = nn.Sequential(*stem)

        stages = []
        c_in = stem_ch
        for i, (base, n) in enumerate(zip(STAGE_CHANNELS, STAGE_BLOCKS)):
            c_out = _scaled(base, width)
            stages.append(
                Stage(c_in, c_out, n, downsample=i > 0, batch_norm=self.redesign, pepx_relu=self.pepx_relu)
            )
            c_in = c_out
        self.stages = nn.ModuleList(stages)
        self.feature_channels = c_in

        if self.redesign:
            self.pool: nn.Module = nn.AdaptiveAvgPool2d(REDESIGN_POOL)
            self.embedding_dim = c_in * REDESIGN_POOL * REDESIGN_POOL
            self.classifier = dense_head([self.embedding_dim, HIDDEN_1, HIDDEN_2, num_classes], batch_norm=True)
            self.projection: nn.Module | None = None
            if projection:
                self.projection = dense_head(
                    [self.embedding_dim, PROJ_HIDDEN, PROJ_DIM], batch_norm=True, act_last=projection_head == "bn-relu"
                )
        else:
            self.pool = nn.Identity()
            side = image_size // DOWNSAMPLE
            self.embedding_dim = c_in * side * side
            self.classifier = dense_head([self.embedding_dim, HIDDEN_1, HIDDEN_2, num_classes], batch_norm=False)
            self.projection = None

    @property
    def has_projection(self) -> bool:
        return self.projection is not None

    @property
    def last_stage(self) -> nn.Module:
        """Module whose output is the last conv feature map (stage-4 sum); hook it for Grad-CAM."""
        return self.stages[-1]

    def feature_map(self, x: Tensor) -> Tensor:
        """The last conv feature map, (B, C, H/32, W/32)."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected input of shape (B, 3, H, W), got {tuple(x.shape)}")
        if not self.redesign and tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"the original COVID-Net head needs {self.image_size}x{self.image_size} input "
                f"(image_size), got {x.shape[-2]}x{x.shape[-1]}"
            )
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def features(self, x: Tensor) -> Tensor:
        """(B, D) embedding: flattened map (original) or 2x2-average-pooled flattened map (redesign)."""
        return torch.flatten(self.pool(self.feature_map(x)), 1)

    def classify(self, emb: Tensor) -> Tensor:
        return self.classifier(emb)

    def project(self, emb: Tensor) -> Tensor:
        if self.projection is None:
            raise RuntimeError(
                "this model has no projection head (the original COVID-Net never has one; "
                "build covidnet-redesign with projection=True)"
            )
        return self.projection(emb)

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(self.features(x))
