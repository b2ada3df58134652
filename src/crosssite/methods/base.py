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
from ..errors import CrossSiteError
from ..models import CAPABILITIES, Backbone, create_model
from ..models.site_bn import SiteBatchNorm, add_site

#: one (images, labels) pair per site, in site order; None for a site that has no batch in this step
Minibatches = list[tuple[torch.Tensor, torch.Tensor] | None]


def present(minibatches: Minibatches) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """(site index, images, labels) of the sites that have a batch in this step."""
    return [(site, *batch) for site, batch in enumerate(minibatches) if batch is not None]


class Method(nn.Module):
    """Base class; subclasses build their networks in `__init__` and call `_finish_init()`."""

    name: str = ""
    #: what the method does to its backbone beyond the contract (capability names, models.contract)
    needs: frozenset[str] = frozenset()
    #: True where each site has a network of its own sharing nothing (then each site's best epoch is its own)
    independent_sites: bool = False

    def __init__(self, num_sites: int, config: TrainConfig):
        super().__init__()
        self.check_backbone(config.backbone)
        self.num_sites = num_sites
        self.config = config

    @classmethod
    def supported_backbones(cls) -> tuple[str, ...]:
        """The registered backbones that have every capability the method needs; the default first."""
        names = [name for name, offers in CAPABILITIES.items() if cls.needs <= offers]
        return tuple(sorted(names, key=lambda name: name != TrainConfig.backbone))

    @classmethod
    def check_backbone(cls, backbone: str) -> None:
        backbones = cls.supported_backbones()
        if backbone not in backbones:
            raise CrossSiteError(f"method {cls.name!r} runs on backbone(s) {', '.join(backbones)}, not {backbone!r}")

    def make_backbone(self, projection: bool = False) -> nn.Module:
        """A fresh backbone as configured; `projection` keeps the contrastive projection head."""
        c = self.config
        net = create_model(
            c.backbone, width=c.width, image_size=c.image_size, pepx_relu=c.pepx_relu, projection=projection,
            **({"projection_head": c.projection_head} if projection else {}),
        )
        if not isinstance(net, Backbone):
            raise TypeError(f"backbone {c.backbone!r} does not meet crosssite.models.contract.Backbone")
        return net

    def _finish_init(self) -> None:
        # fused: one kernel per step instead of several passes per parameter tensor (~4x faster on a CPU);
        # it also skips its update where `found_inf` is set, which `step` uses to keep divergence out
        self.optimizer = torch.optim.Adam(
            self.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay, fused=True
        )
        # the divergence mark, on the method's device (buffers move with .to(); not part of checkpoints)
        self.register_buffer("steps_taken", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("diverged_at", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("diverged_loss", torch.zeros(()), persistent=False)
        self.register_buffer("skip_updates", torch.zeros(()), persistent=False)

    def clip_groups(self) -> list[list[nn.Parameter]]:
        """Parameter groups whose gradient norm is clipped together (one per independent network)."""
        return [list(self.parameters())]

    def step(self, loss: torch.Tensor, finite: torch.Tensor | None = None) -> None:
        """Backward, clip, Adam step, without waiting for the device (no host synchronisation).

        A non-finite loss or gradient norm never reaches the weights: it marks the method as diverged,
        on the device, and from then on Adam skips every update (`found_inf`); `divergence()` reads the
        mark. `finite`: a flag agreed on beforehand (torchrun: all processes), instead of the loss's own.
        """
        ok = torch.isfinite(loss.detach()) if finite is None else finite
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for group in self.clip_groups():
            ok = ok & torch.isfinite(torch.nn.utils.clip_grad_norm_(group, self.config.grad_clip))
        # in place, so that a captured step (crosssite.capture) keeps updating the same tensors
        self.steps_taken.add_(1)
        self.diverged_at.copy_(torch.where(ok | (self.diverged_at > 0), self.diverged_at, self.steps_taken))
        self.diverged_loss.copy_(torch.where(self.diverged_at == self.steps_taken, loss.detach().float(),
                                             self.diverged_loss))
        self.skip_updates.copy_(self.diverged_at > 0)
        self.optimizer.found_inf = self.skip_updates
        self.optimizer.step()

    def divergence(self) -> tuple[int, float] | None:
        """(the number of the first update, counted from 1 in this process, whose loss or gradient norm was
        not finite; that loss), or None. Reads the device (a synchronisation): call it once in a while."""
        at = int(self.diverged_at)
        return None if at == 0 else (at, float(self.diverged_loss))

    def release_gradients(self) -> None:
        """Free the last step's gradients before this step's forward pass, which builds up the activations
        (otherwise they live until the backward pass: ~0.2 GB more peak memory at 224 px)."""
        self.optimizer.zero_grad(set_to_none=True)

    def loss(self, minibatches: Minibatches) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training loss of one step, and the values to log as detached tensors (no optimiser step)."""
        raise NotImplementedError

    def update(self, minibatches: Minibatches) -> dict[str, torch.Tensor]:
        """One optimiser step on one step's minibatches; returns the logged values (tensors on the device)."""
        self.release_gradients()
        with self.precision():
            loss, stats = self.loss(minibatches)
        self.step(loss)
        return stats

    def precision(self) -> contextlib.AbstractContextManager:
        """Where the loss is computed: bf16 autocast on a CUDA GPU for `--precision bf16`, else fp32
        (backward, clipping and Adam stay outside, in the parameters' fp32)."""
        if self.config.precision == "bf16":
            return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)  # no cache: CUDA graphs
        return contextlib.nullcontext()

    def predict(self, x: torch.Tensor, site: int) -> torch.Tensor:
        raise NotImplementedError

    def network(self, site: int) -> nn.Module:
        """The network that predicts for `site` (a `models.Backbone`, maybe with site batch norm).

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

    def site_batch_norms(self, site: int) -> list[nn.Module]:
        """`site`'s copy of every site-specific batch norm, in module order (none for shared batch norm)."""
        return [m.bns[site] for m in self.modules() if isinstance(m, SiteBatchNorm)]

    def add_site(self) -> int:
        """Add a site seen only after training (crosssite.adapt): one more copy of every site batch norm
        (models.site_bn.add_site); returns its index. ValueError where the method has no site batch norm
        or other site-specific layers, which unlabelled images cannot fit."""
        index = add_site(self)
        self.num_sites += 1
        return index

    def check_site(self, site: int) -> None:
        if not 0 <= site < self.num_sites:
            raise IndexError(f"site index {site} out of range 0..{self.num_sites - 1}")
