"""Figure 2 of Goodfellow et al. (2014): fair random samples, each beside its nearest training example.

The samples are not cherry-picked: they are the first ``--num`` samples drawn with a fixed
seed. Beside each (in a yellow frame, as in the paper) is the training image nearest to it in
L2 distance: a generator that memorised its training set would show the same digit twice.
The distance to that neighbour is saved with the figure's numbers, next to the typical
distance between two different training images.

    python experiments/figure2_samples.py          # the last iterate of Table 1's default mnist5k run
    python experiments/figure2_samples.py --checkpoint ~/raygan_results/raygan/best/generator.pt --dataset mnist5k
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import common
import numpy as np
import torch
from PIL import Image, ImageDraw

from raygan.data import load_dataset
from raygan.models import generate, load_generator

DEFAULT_CHECKPOINT = common.RESULTS_DIR / "table1" / "mnist5k" / "default_final_generator.pt"
YELLOW = np.array([255, 215, 0], dtype=np.uint8)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Figure 2: samples with their nearest training examples.")
    p.add_argument("--checkpoint", type=Path, nargs="+", default=[DEFAULT_CHECKPOINT],
                   help="raygan generator.pt files; each gets its own block of the figure")
    p.add_argument("--labels", nargs="+", help="a caption per checkpoint (default: the file's path)")
    p.add_argument("--dataset", default="mnist5k", help="the training set the generator was trained on")
    p.add_argument("--data-root", help="where the data set's files are (mnist, fashion-mnist)")
    p.add_argument("--num", type=int, default=30, help="samples shown (the first ones from --seed)")
    p.add_argument("--pairs-per-row", type=int, default=6)
    p.add_argument("--seed", type=int, default=0, help="seeds the noise: the samples are the first --num from it")
    p.add_argument("--scale", type=int, default=2, help="pixel upscaling of the PNG")
    p.add_argument("--out", type=Path, default=common.DOCS_DIR / "figure2_samples.png")
    p.add_argument("--results", type=Path, default=common.RESULTS_DIR / "figure2_samples.json")
    return p.parse_args(argv)


def nearest(samples: torch.Tensor, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of each sample's nearest training image (L2) and the distance to it."""
    s = samples.reshape(len(samples), -1).double()
    best_d = torch.full((len(s),), float("inf"), dtype=torch.float64)
    best_i = torch.zeros(len(s), dtype=torch.long)
    for start in range(0, len(train), 10_000):
        t = torch.from_numpy(train[start : start + 10_000]).reshape(-1, s.shape[1]).double()
        d, i = torch.cdist(s, t).min(1)
        better = d < best_d
        best_d[better], best_i[better] = d[better], i[better] + start
    return best_i.numpy(), best_d.numpy()


def _tile(image: np.ndarray, frame: np.ndarray, scale: int) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H', W', 3) uint8 with a 1-pixel coloured frame, upscaled."""
    rgb = np.repeat(image, 3, axis=0) if image.shape[0] == 1 else image
    tile = (np.clip(rgb.transpose(1, 2, 0), 0, 1) * 255).astype(np.uint8)
    tile = np.pad(tile, ((1, 1), (1, 1), (0, 0)))
    tile[0, :], tile[-1, :], tile[:, 0], tile[:, -1] = frame, frame, frame, frame
    return tile.repeat(scale, 0).repeat(scale, 1)


def compose(samples: np.ndarray, neighbours: np.ndarray, pairs_per_row: int, scale: int, caption: str) -> Image.Image:
    """Rows of (sample, nearest training image) pairs, a gap between pairs, a caption on top."""
    grey = np.array([60, 60, 60], dtype=np.uint8)
    tiles = [np.concatenate([_tile(s, grey, scale), _tile(n, YELLOW, scale)], axis=1) for s, n in zip(samples, neighbours)]
    h, w = tiles[0].shape[:2]
    gap = 3 * scale
    rows = -(-len(tiles) // pairs_per_row)
    top = 14
    canvas = np.full((top + rows * (h + gap), pairs_per_row * (w + gap), 3), 255, dtype=np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, pairs_per_row)
        canvas[top + r * (h + gap) : top + r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = tile
    image = Image.fromarray(canvas)
    ImageDraw.Draw(image).text((2, 1), caption, fill=(0, 0, 0))
    return image


def block(checkpoint: Path, label: str, ds: Any, args: argparse.Namespace) -> tuple[Image.Image, dict[str, Any]]:
    """One checkpoint's pairs and its nearest-neighbour distances."""
    samples = generate(load_generator(checkpoint), args.num, seed=args.seed)
    index, dist = nearest(samples, ds.train)
    caption = f"{label}: first {args.num} samples (seed {args.seed}) | nearest training image (yellow)"
    image = compose(samples.numpy(), ds.train[index], args.pairs_per_row, args.scale, caption)
    return image, {"checkpoint": str(checkpoint), "label": label, "nearest_index": index.tolist(), "nearest_l2": dist.tolist(),
                   "median_sample_to_nearest_train_l2": float(np.median(dist)),
                   "distinct_nearest": len(set(index.tolist()))}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: draw the samples and their neighbours, save the PNG and the distances."""
    args = parse_args(argv)
    torch.set_num_threads(1)
    labels = args.labels or [str(c) for c in args.checkpoint]
    if len(labels) != len(args.checkpoint):
        raise SystemExit("give one --labels entry per --checkpoint")
    ds = load_dataset(args.dataset, args.data_root)
    blocks = [block(c, lab, ds, args) for c, lab in zip(args.checkpoint, labels)]
    width = max(b[0].width for b in blocks)
    image = Image.new("RGB", (width, sum(b[0].height + 6 for b in blocks)), (255, 255, 255))
    y = 0
    for b, _ in blocks:
        image.paste(b, (0, y))
        y += b.height + 6
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.out, optimize=True)
    rng = np.random.default_rng(0)  # typical distances, for scale
    a, b = rng.choice(len(ds.train), (2, 500))
    keep = a != b
    train_pairs = np.linalg.norm((ds.train[a[keep]] - ds.train[b[keep]]).reshape(keep.sum(), -1), axis=1)
    held_out = nearest(torch.from_numpy(ds.valid[:200]), ds.train)[1]  # a held-out image to its nearest training image
    stats = {
        "dataset": args.dataset,
        "num": args.num,
        "seed": args.seed,
        "blocks": [s for _, s in blocks],
        "median_valid_to_nearest_train_l2": float(np.median(held_out)),
        "median_train_to_random_train_l2": float(np.median(train_pairs)),
    }
    common.write_json(args.results, stats)
    for s in stats["blocks"]:
        print(f"{s['label']}: median L2 sample -> nearest training image {s['median_sample_to_nearest_train_l2']:.2f}, "
              f"{s['distinct_nearest']} distinct neighbours of {args.num}")
    print(f"for scale: held-out image -> nearest training image {stats['median_valid_to_nearest_train_l2']:.2f}, "
          f"two random training images {stats['median_train_to_random_train_l2']:.2f}; wrote {args.out} ({args.out.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
