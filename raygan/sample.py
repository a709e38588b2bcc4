"""``python -m raygan.sample``: draw samples from a saved generator or mixture, as .npy or an image grid."""

from __future__ import annotations

import argparse
import io
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from raygan.errors import UserError
from raygan.files import atomic_write_bytes
from raygan.mixture import draw, load_samplable


def write_samples(checkpoint: str | Path, out: str | Path, num: int = 100, seed: int = 0) -> torch.Tensor:
    """Draw ``num`` samples from the generator or mixture in ``checkpoint`` and write them to ``out``.

    Args:
        checkpoint: a ``generator.pt`` or ``mixture.pt`` written by raygan (loaded with weights_only=True).
        out: ``.npy`` for the raw samples (N, C, H, W) in [0, 1], ``.png`` for an image grid.
        num: number of samples.
        seed: seeds the noise.

    Returns:
        The samples.

    Raises:
        UserError: a bad checkpoint, a bad count, or an unknown output extension.
    """
    out = Path(out)
    if num < 1:
        raise UserError(f"--num must be at least 1, got {num}")
    if out.suffix not in (".npy", ".png"):
        raise UserError(f"--out must end in .npy (raw samples) or .png (an image grid), got {str(out)!r}")
    samples = draw(load_samplable(checkpoint), num, seed=seed)
    if out.suffix == ".npy":
        buffer = io.BytesIO()
        np.save(buffer, samples.numpy())
        atomic_write_bytes(out, buffer.getvalue())
    else:
        import torchvision

        if samples.shape[2] == 1 and samples.shape[3] == 1:
            raise UserError("this generator makes points, not images: write them with --out FILE.npy")
        buffer = io.BytesIO()
        torchvision.utils.save_image(samples, buffer, format="png", nrow=max(1, round(math.sqrt(num))), padding=1)
        atomic_write_bytes(out, buffer.getvalue())
    return samples


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m raygan.sample``; returns the exit code."""
    p = argparse.ArgumentParser(prog="python -m raygan.sample", description="Draw samples from a raygan generator or mixture checkpoint.")
    p.add_argument("--checkpoint", required=True, help="generator.pt or mixture.pt (e.g. <storage>/<name>/best/generator.pt)")
    p.add_argument("--num", type=int, default=100, help="number of samples (default 100)")
    p.add_argument("--out", required=True, help="FILE.npy for raw samples in [0, 1], FILE.png for an image grid")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        samples = write_samples(args.checkpoint, args.out, args.num, args.seed)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(samples)} samples of shape {tuple(samples.shape[1:])} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
