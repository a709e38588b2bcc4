"""The same generator's samples raw, corrected by rejection sampling (DRS) with D alone and class by
class (the default: by class and the classifier's confidence, ``refine.confident``), and by
Metropolis-Hastings alike.

Each panel is ``python -m raygan.sample --checkpoint CKPT --seed 0 [--refine METHOD --(no-)by-class]``
exactly as a user runs it (the run's own calibration data and refine settings), drawn side by side:

    python experiments/figure_refine.py --checkpoint ~/raygan_results/raygan/best/generator.pt
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import common
import numpy as np
import torch

from raygan.images import tile

PANELS = (("raw", None), ("DRS, D alone", ["drs", "--no-by-class"]), ("DRS by class", ["drs", "--by-class"]),
          ("MH by class", ["mh", "--by-class"]))  # by class: and by confidence, the run's refine.confident


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Raw, DRS and MH samples of one generator, side by side.")
    p.add_argument("--checkpoint", type=Path, required=True, help="a raygan generator.pt that carries its discriminator")
    p.add_argument("--num", type=int, default=64, help="samples per panel (a square number)")
    p.add_argument("--out", type=Path, default=common.DOCS_DIR / "refine_mnist5k.png")
    p.add_argument("--confident", type=float, default=None, metavar="P",
                   help="passed to raygan.sample for the panels by class (default: the run's refine.confident)")
    return p.parse_args(argv)


def draw(checkpoint: Path, refine: list[str] | None, num: int, folder: Path, confident: float | None = None) -> np.ndarray:
    out = folder / f"{'-'.join(refine or ['raw'])}.npy"
    split = [] if confident is None or not refine or "--by-class" not in refine else ["--confident", str(confident)]
    argv = [sys.executable, "-m", "raygan.sample", "--checkpoint", str(checkpoint), "--num", str(num), "--seed", "0",
            "--out", str(out)] + (["--refine", *refine, *split] if refine else [])
    subprocess.run(argv, check=True)
    return np.load(out)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with tempfile.TemporaryDirectory() as folder:
        panels = [(title, draw(args.checkpoint, refine, args.num, Path(folder), args.confident)) for title, refine in PANELS]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.3))
    for ax, (title, samples) in zip(axes, panels):
        grid = tile(torch.from_numpy(samples), nrow=int(np.ceil(np.sqrt(len(samples)))), padding=1, pad_value=1.0)
        ax.imshow(grid[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
