"""Grad-CAM (Selvaraju et al., ICCV 2017) on the last convolutional stage: the maps, at the image's size.

The map of class c is ReLU(sum_k w_k A_k), A the last stage's feature map and w_k the spatial mean
of d logit_c / d A_k; it is upsampled to the original image's size and scaled to [0, 1].
`Method.network(site)` and `Method.site_scope(site)` give the network that predicts for a site,
so this works for every method without special cases. Drawn by the `gradcam` command, the report's
figures and the DICOM Secondary Captures (crosssite.dicom_gradcam).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data.sampling import eval_batches
from .data.transforms import to_tensor
from .preprocessing import Preprocessing

COVID = 1
#: how maps are drawn over the grayscale image (the gradcam command, the report, DICOM Secondary Captures)
COLOUR_MAP, ALPHA = "jet", 0.4


def grad_cam(method, site: int, x: torch.Tensor, target: int = COVID) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM maps (B, h, w) of class `target` at the last stage's resolution, and the logits (B, 2)."""
    method.eval()  # batch norms on running statistics: each image's map depends on that image only
    net = method.network(site)
    captured = []
    handle = net.last_stage.register_forward_hook(lambda module, inputs, output: captured.append(output))
    try:
        with method.site_scope(site), torch.enable_grad():
            logits = net(x)
            (grads,) = torch.autograd.grad(logits[:, target].sum(), captured[0])
    finally:
        handle.remove()
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * captured[0]).sum(dim=1))
    return cam.detach(), logits.detach()


def upsample(cam: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """One (h, w) map bilinearly resized to `size` (H, W) and scaled to [0, 1] (all zero stays zero).

    The map is first rounded to 1e-6 of its peak, so summation-order noise (another thread count) does not
    change the drawn figure."""
    peak = cam.max()
    if peak > 0:
        cam = torch.round(cam / peak, decimals=6)
    big = F.interpolate(cam[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    peak = big.max()
    return (big / peak if peak > 0 else big).numpy()


def explain(method, config, site: int, paths: list[Path], target: int = COVID) -> list[dict]:
    """Per image: the grayscale original, its Grad-CAM map at the original's size, and P(COVID)."""
    cache = Preprocessing.of(config).cache()
    dtype = next(method.parameters()).dtype
    parts = [grad_cam(method, site, to_tensor(cache.eval_batch([paths[i] for i in idx])).to(dtype), target)
             for idx in eval_batches(len(paths), config.eval_batch_size)]
    cams = torch.cat([cam for cam, _ in parts])
    probs = torch.softmax(torch.cat([logits for _, logits in parts]), dim=1)[:, COVID].numpy()
    results = []
    for path, cam, p in zip(paths, cams, probs):
        image = cache.original(path)
        results.append({"path": Path(path), "image": image, "cam": upsample(cam, image.shape), "p_covid": float(p)})
    return results
