"""`crosssite gradcam`: Grad-CAM overlays of images and scan slices as PNG figures (maps: crosssite.saliency)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure  # the object API: no pyplot state, no display backend needed

from .checkpoint import load_trained
from .errors import CrossSiteError
from .inputs import expand_inputs
from .io import atomic_write
from .metrics import LABEL_NAMES, label_name
from .saliency import ALPHA, COLOUR_MAP, COVID, explain


def draw_overlay(ax, result: dict, title: str) -> None:
    ax.imshow(result["image"], cmap="gray")
    ax.imshow(result["cam"], cmap=COLOUR_MAP, alpha=ALPHA, vmin=0.0, vmax=1.0)
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
