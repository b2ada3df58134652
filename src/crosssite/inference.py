"""Fast inference: a frozen copy of one site's network, batch norms folded away, channels_last.

In eval mode a batch norm is a fixed per-channel affine map, so `conv -> BN` equals a single
conv with rescaled weights and a shifted bias (likewise `linear -> BN`). Folding removes one
full pass over every activation it follows; for site-specific batch norm the chosen site's copy
is folded. The copy runs in channels_last memory layout, which oneDNN's CPU convolutions prefer.
`predict_proba` predicts through `inference_network`, so `crosssite evaluate`,
`crosssite predict` and the trainer's validation all take this path. The copy computes the same
function as `method.predict(x, site)` up to float rounding (tests/test_inference.py).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from .config import EVAL_BATCH_SIZE
from .data.sampling import eval_batches
from .data.transforms import to_tensor
from .distributed import spread
from .models.site_bn import SiteBatchNorm
from .runtime import prepare_input, prepare_model


def site_network(method, site: int) -> nn.Module:
    """A frozen eval-mode copy of the network behind `method.predict(x, site)`, with plain batch norms."""
    with method.site_scope(site):
        net = copy.deepcopy(method.network(site))  # the copy keeps the site selected inside the scope
    _replace_site_batch_norms(net)
    net.eval()
    net.requires_grad_(False)
    return net


def _replace_site_batch_norms(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, SiteBatchNorm):
            setattr(module, name, child.active())
        else:
            _replace_site_batch_norms(child)


def fold_batch_norms(net: nn.Module) -> nn.Module:
    """Fold every eval-mode batch norm that directly follows a Conv2d or Linear in a Sequential (in place)."""
    for seq in [m for m in net.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            layer, bn = seq[i], seq[i + 1]
            if not isinstance(bn, _BatchNorm) or bn.training or bn.running_mean is None:
                continue
            if isinstance(layer, nn.Conv2d):
                seq[i] = fuse_conv_bn_eval(layer, bn)
            elif isinstance(layer, nn.Linear):
                seq[i] = fuse_linear_bn_eval(layer, bn)
            else:
                continue
            seq[i + 1] = nn.Identity()
    return net


class InferenceNetwork(nn.Module):
    """Wraps the folded copy: moves input to its device and memory layout, returns logits."""

    def __init__(self, net: nn.Module, compile: bool = False):
        super().__init__()
        self.device = next(net.parameters()).device
        self.net = prepare_model(net, self.device)
        # freezing: the weights are constants, so inductor can pre-pack them for oneDNN. Compiling takes
        # a while on a CPU and pays only for long prediction jobs (README "Speed")
        self.run = torch.compile(self.net, options={"freezing": True}) if compile else self.net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(prepare_input(x, self.device))


def inference_network(method, site: int, compile: bool = False) -> InferenceNetwork:
    """The fast predictor for one site; `compile` adds torch.compile."""
    return InferenceNetwork(fold_batch_norms(site_network(method, site)), compile=compile)


@torch.no_grad()
def predict_proba(method, images: np.ndarray, site: int, batch_size: int = EVAL_BATCH_SIZE,
                  compile: bool = False) -> np.ndarray:
    """P(COVID) for a (N, s, s) uint8 array of eval-size images of one site.

    Runs the fast copy of `method.predict(., site)` (`inference_network`); `compile` adds torch.compile.
    Under torchrun the processes share the images.
    """
    method.eval()
    net = inference_network(method, site, compile=compile)

    def run(part: np.ndarray) -> np.ndarray:
        probs = [np.zeros(0, dtype=np.float32)]
        for idx in eval_batches(len(part), batch_size):
            logits = net(to_tensor(part[idx]))
            probs.append(torch.softmax(logits, dim=1)[:, 1].cpu().numpy())
        return np.concatenate(probs)

    return spread(images, run)  # under torchrun each process predicts its share
