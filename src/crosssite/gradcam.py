"""Grad-CAM (Selvaraju et al., ICCV 2017) on the last convolutional stage, and its overlays.

The map of class c is ReLU(sum_k w_k A_k), A the last stage's feature map and w_k the spatial mean
of d logit_c / d A_k; it is upsampled to the original image's size and scaled to [0, 1].
`Method.network(site)` and `Method.site_scope(site)` give the network that predicts for a site,
so this works for every method without special cases.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure  # the object API: no pyplot state, no display backend needed

from .checkpoint import load_trained
from .data.sampling import eval_batches
from .data.transforms import to_tensor
from .errors import CrossSiteError
from .io import atomic_write
from .metrics import LABEL_NAMES, label_name
from .inputs import expand_inputs
from .preprocessing import Preprocessing

COVID = 1


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


def draw_overlay(ax, result: dict, title: str) -> None:
    ax.imshow(result["image"], cmap="gray")
    ax.imshow(result["cam"], cmap="jet", alpha=0.4, vmin=0.0, vmax=1.0)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def prediction_title(result: dict) -> str:
    return f"{result['path'].name}\npredicted {label_name(result['p_covid'])}, P(COVID)={result['p_covid']:.3f}"


def save_figure(fig: Figure, path: Path) -> None:
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))


def gradcam_images(checkpoint: Path, site: str, images: list[Path], out: Path, target: int = COVID) -> list[Path]:
    """Write one overlay PNG per image into `out`, named after the image; return the PNG paths."""
    if not images:
        raise CrossSiteError("no images given")
    trained = load_trained(checkpoint)
    paths = [p for _, scan_paths in expand_inputs(images, trained.config.slices) for p in scan_paths]
    results = explain(trained.method, trained.config, trained.site_index(site), paths, target)
    written = []
    for i, result in enumerate(results):
        name = f"{result['path'].stem}.png"
        if Path(out) / name in written:  # two images of the same name in different folders
            name = f"{result['path'].stem}-{i}.png"
        fig = Figure(figsize=(4, 4.4))
        ax = fig.subplots()
        draw_overlay(ax, result, f"{prediction_title(result)}\nGrad-CAM of {LABEL_NAMES[target]}, site {site}")
        save_figure(fig, Path(out) / name)
        written.append(Path(out) / name)
    return written
