"""What every training method shares: its network(s), one Adam optimiser and a guarded update step.

A method is a small `nn.Module` in the style of DomainBed's algorithms:
`update(minibatches)` takes one (images, labels) pair per site, in site order
(None for a site without a batch in this step), and takes one optimiser step; `predict(x, site)` returns logits for images of
one site. Everything else (data, schedules, checkpoints) lives in the trainer.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..config import TrainConfig
from ..errors import CrossSiteError, DivergedError
from ..models import create_model

#: one (images, labels) pair per site, in site order; None for a site that has no batch in this step
Minibatches = list[tuple[torch.Tensor, torch.Tensor] | None]


def present(minibatches: Minibatches) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """(site index, images, labels) of the sites that have a batch in this step."""
    return [(site, *batch) for site, batch in enumerate(minibatches) if batch is not None]


class Method(nn.Module):
    """Base class; subclasses build their networks in `__init__` and call `_finish_init()`."""

    name: str = ""
    #: backbones the method can be built on; the first is its default
    backbones: tuple[str, ...] = ("covidnet-redesign",)
    #: True where each site has a network of its own sharing nothing (then each site's best epoch is its own)
    independent_sites: bool = False

    def __init__(self, num_sites: int, config: TrainConfig):
        super().__init__()
        self.check_backbone(config.backbone)
        self.num_sites = num_sites
        self.config = config

    @classmethod
    def check_backbone(cls, backbone: str) -> None:
        if backbone not in cls.backbones:
            raise CrossSiteError(f"method {cls.name!r} runs on backbone(s) {', '.join(cls.backbones)}, not {backbone!r}")

    def make_backbone(self, projection: bool = False) -> nn.Module:
        """A fresh backbone as configured; `projection` keeps the contrastive projection head."""
        c = self.config
        return create_model(
            c.backbone, width=c.width, image_size=c.image_size, pepx_relu=c.pepx_relu, projection=projection,
            **({"projection_head": c.projection_head} if projection else {}),
        )

    def _finish_init(self) -> None:
        # fused: one kernel per step instead of several passes per parameter tensor (~4x faster on a CPU)
        self.optimizer = torch.optim.Adam(
            self.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay, fused=True
        )

    def clip_groups(self) -> list[list[nn.Parameter]]:
        """Parameter groups whose gradient norm is clipped together (one per independent network)."""
        return [list(self.parameters())]

    def step(self, loss: torch.Tensor) -> None:
        """Backward, clip, Adam step; refuse a non-finite loss before it reaches the weights."""
        if not torch.isfinite(loss):
            raise DivergedError(f"loss became {loss.item()}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for group in self.clip_groups():
            torch.nn.utils.clip_grad_norm_(group, self.config.grad_clip)
        self.optimizer.step()

    def release_gradients(self) -> None:
        """Free the last step's gradients before this step's forward pass, which builds up the activations
        (otherwise they live until the backward pass: ~0.2 GB more peak memory at 224 px)."""
        self.optimizer.zero_grad(set_to_none=True)

    def loss(self, minibatches: Minibatches) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss of one step, and the values to log (no optimiser step)."""
        raise NotImplementedError

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        """One optimiser step on one step's minibatches; returns the logged values."""
        self.release_gradients()
        loss, stats = self.loss(minibatches)
        self.step(loss)
        return stats

    def predict(self, x: torch.Tensor, site: int) -> torch.Tensor:
        raise NotImplementedError

    def network(self, site: int) -> nn.Module:
        """The network that predicts for `site` (a COVIDNet, maybe with site batch norm).

        Tools that look inside the model (Grad-CAM hooks its `last_stage`) use this and
        `site_scope` instead of special cases per method.
        """
        self.check_site(site)
        return self.net

    def site_state_prefix(self, site: int) -> str:
        """State-dict key prefix of `network(site)` (for methods with `independent_sites`)."""
        net = self.network(site)
        return next(name for name, module in self.named_modules() if module is net) + "."

    def site_scope(self, site: int) -> contextlib.AbstractContextManager:
        """Context in which `self.network(site)(x)` returns the logits of `predict(x, site)`."""
        return contextlib.nullcontext()

    def check_site(self, site: int) -> None:
        if not 0 <= site < self.num_sites:
            raise IndexError(f"site index {site} out of range 0..{self.num_sites - 1}")
