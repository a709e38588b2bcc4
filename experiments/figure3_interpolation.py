"""Figure 3 of Goodfellow et al. (2014): digits from linear interpolation between points in z space.

Each row starts at one random z and ends at another (both drawn from the generator's own
prior with a fixed seed, not chosen by hand); the columns are G((1 - t) z_0 + t z_1) for t
evenly spaced in [0, 1]. Smooth rows mean G maps nearby noise to nearby images.

    python experiments/figure3_interpolation.py          # the last iterate of Table 1's default mnist5k run
    python experiments/figure3_interpolation.py --checkpoint ~/raygan_results/raygan/best/generator.pt
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import common
import torch
import torchvision

from raygan.models import load_generator
from raygan.priors import sample_noise

DEFAULT_CHECKPOINT = common.RESULTS_DIR / "table1" / "mnist5k" / "default_final_generator.pt"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Figure 3: linear interpolation in z space.")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="a raygan generator.pt")
    p.add_argument("--rows", type=int, default=8, help="pairs of z")
    p.add_argument("--steps", type=int, default=11, help="images per row, ends included")
    p.add_argument("--seed", type=int, default=0, help="seeds the z pairs")
    p.add_argument("--scale", type=int, default=2, help="pixel upscaling of the PNG")
    p.add_argument("--out", type=Path, default=common.DOCS_DIR / "figure3_interpolation.png")
    return p.parse_args(argv)


@torch.no_grad()
def interpolate(generator: torch.nn.Module, rows: int, steps: int, seed: int) -> torch.Tensor:
    """(rows * steps, C, H, W): row r is G on the segment from z_0[r] to z_1[r]."""
    gen = torch.Generator().manual_seed(seed)
    z0 = sample_noise(generator.config.prior, rows, generator.config.noise_dim, gen)
    z1 = sample_noise(generator.config.prior, rows, generator.config.noise_dim, gen)
    t = torch.linspace(0, 1, steps).view(1, steps, 1)
    z = (1 - t) * z0.unsqueeze(1) + t * z1.unsqueeze(1)  # (rows, steps, noise_dim)
    generator.eval()
    return generator(z.reshape(rows * steps, -1))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: draw the interpolation grid."""
    args = parse_args(argv)
    torch.set_num_threads(1)
    images = interpolate(load_generator(args.checkpoint), args.rows, args.steps, args.seed)
    if args.scale > 1:
        images = images.repeat_interleave(args.scale, 2).repeat_interleave(args.scale, 3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torchvision.utils.save_image(images, args.out, nrow=args.steps, padding=args.scale, pad_value=1.0)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB): {args.rows} rows x {args.steps} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
