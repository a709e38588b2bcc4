"""A labelled folder of RGB images drawn from shapes and colours: "your data" without a download.

    python experiments/make_shapes.py --out /tmp/shapes            # 3,000 32x32 PNGs in discs/ squares/ crosses/
    python -m raygan.tune --dataset /tmp/shapes --config experiments/shapes_plugin.yaml

Class k is shape k (a disc, a square, a cross) in colour k (red, green, blue), at a random place
and size on a dark noisy ground; ``--unlabelled`` writes the same images loose. The test suite
draws its data sets with the same functions (tests/conftest.py).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("discs", "squares", "crosses")


def draw(n: int, side: int = 32, seed: int = 0, grey: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images (n, side, side, 3), or (n, side, side) when ``grey``; int64 labels (n,))."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES)
    rng.shuffle(labels)
    y, x = np.mgrid[0:side, 0:side]
    images = rng.integers(0, 40, size=(n, side, side, 3)).astype(np.float64)
    for i, k in enumerate(labels):
        cx, cy = rng.uniform(side * 0.3, side * 0.7, 2)
        r = rng.uniform(side * 0.15, side * 0.3)
        dx, dy = np.abs(x - cx), np.abs(y - cy)
        mask = [dx**2 + dy**2 < r**2, (dx < r) & (dy < r), ((dx < r / 3) & (dy < r)) | ((dy < r / 3) & (dx < r))][k]
        colour = np.full(3, 30.0)
        colour[k] = rng.uniform(180, 255)
        images[i][mask] = colour
    images = images.round().clip(0, 255).astype(np.uint8)
    return (images.mean(axis=3).round().astype(np.uint8) if grey else images), labels.astype(np.int64)


def write(root: str | Path, images: np.ndarray, labels: np.ndarray | None = None, classes: Sequence[str] = CLASSES,
          suffix: str = ".png", start: int = 0) -> list[Path]:
    """Write images (N, H, W[, 3]) as files under ``root``, one subfolder per class (none where
    ``labels`` is None), named by their zero-padded index; returns the paths in index order."""
    root = Path(root)
    paths = []
    for i, image in enumerate(images):
        folder = root if labels is None else root / classes[int(labels[i])]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{start + i:05d}{suffix}"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write a folder of generated shape images (a labelled data set for --dataset PATH).")
    p.add_argument("--out", required=True, help="the folder to write (must not exist)")
    p.add_argument("--num", type=int, default=3000)
    p.add_argument("--side", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--unlabelled", action="store_true", help="write the images loose, without class folders")
    args = p.parse_args(argv)
    if Path(args.out).exists():
        print(f"error: {args.out!r} exists; pass a new folder", file=sys.stderr)
        return 2
    images, labels = draw(args.num, args.side, args.seed)
    write(args.out, images, None if args.unlabelled else labels)
    print(f"wrote {args.num} {args.side}x{args.side} RGB images to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
