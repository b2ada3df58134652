"""Write a copy of a split's test images with another intensity window: a simulated new scanner.

    python scripts/simulate_scanner.py RUN_FOLDER SITE OUT_FOLDER [--low 0.15 --high 0.85 --gamma 0.7]

Every test image of SITE in RUN_FOLDER/split.json is read as gray, re-windowed to [low, high] of its
range, raised to `gamma` and saved under OUT_FOLDER/COVID or OUT_FOLDER/NonCOVID, so `crosssite evaluate
--site NAME=OUT_FOLDER` can score it and `crosssite adapt` can read it (labels ignored there).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from crosssite.data.images import load_grayscale
from crosssite.data.sites import LABEL_NAMES, read_site


def rewindow(img: np.ndarray, low: float, high: float, gamma: float) -> np.ndarray:
    x = np.clip((img / 255.0 - low) / (high - low), 0, 1) ** gamma
    return np.rint(x * 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("site")
    parser.add_argument("out")
    parser.add_argument("--site-path", help="the site's folder (default: found from the split's paths)")
    parser.add_argument("--low", type=float, default=0.15)
    parser.add_argument("--high", type=float, default=0.85)
    parser.add_argument("--gamma", type=float, default=0.7)
    args = parser.parse_args()
    test = [Path(p) for p in json.loads((Path(args.run) / "split.json").read_text())["sites"][args.site]["test"]]
    site_path = Path(args.site_path) if args.site_path else test[0].parents[1]
    labels = {str(s.path): s.label for s in read_site(site_path, args.site).samples}
    for p in test:
        folder = Path(args.out) / LABEL_NAMES[labels[str(p)]]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rewindow(load_grayscale(p), args.low, args.high, args.gamma)).save(folder / (p.stem + ".png"))
    print(f"{len(test)} images of {args.site} (test part of {args.run}) written to {args.out}")


if __name__ == "__main__":
    main()
