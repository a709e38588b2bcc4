"""``python -m raygan.sample``: draw samples from a saved generator or mixture, as .npy or an image grid.

A conditional generator (``model.conditional``) takes ``--label 3`` (every sample a 3) or
``--labels 0,1,...`` (the samples shared out over those classes, one grid row per class); by
default it draws every class, one grid row per class.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raygan import images, refine
from raygan.config import RefineConfig, dataset_argument
from raygan.errors import UserError
from raygan.evaluate import add_refine_flags, refine_classes, refine_config, refine_data
from raygan.files import atomic_write_bytes
from raygan.mixture import draw, load_samplable
from raygan.models import LabelError


def class_rows(num: int, classes: Sequence[int]) -> tuple[torch.Tensor, int]:
    """Labels for ``num`` samples in one block per class (in the order given), and the grid's row length.

    Each class gets ceil(num / len(classes)) samples (the last ones fewer when it does not divide),
    a row of the grid; a single class makes a square-ish grid.
    """
    per = math.ceil(num / len(classes))
    labels = torch.as_tensor(list(classes), dtype=torch.int64).repeat_interleave(per)[:num]
    return labels, per if len(classes) > 1 else max(1, round(math.sqrt(num)))


def parse_labels(text: str) -> list[int]:
    """``"0,1,7"`` -> [0, 1, 7].

    Raises:
        LabelError: not a comma-separated list of whole numbers.
    """
    try:
        labels = [int(part) for part in text.split(",")]
    except ValueError:
        raise LabelError(f"--labels must be comma-separated class numbers such as 0,1,2, got {text!r}") from None
    return labels


def write_samples(
    checkpoint: str | Path, out: str | Path, num: int = 100, seed: int = 0, classes: Sequence[int] | None = None,
    refine_with: str | None = None, data: Any = None, refine_config: RefineConfig | None = None,
    class_shares: refine.ClassShares | None = None,
) -> torch.Tensor:
    """Draw ``num`` samples from the generator or mixture in ``checkpoint`` and write them to ``out``.

    Args:
        checkpoint: a ``generator.pt`` or ``mixture.pt`` written by raygan (loaded with weights_only=True).
        out: ``.npy`` for the raw samples (N, C, H, W) in [0, 1], ``.png`` for an image grid.
        num: number of samples.
        seed: seeds the noise.
        classes: for a conditional model, the classes to draw, one block (grid row) each, in this
            order; None: every class of a conditional model, nothing for an unconditional one.
        refine_with: "drs" or "mh": correct the samples with the discriminator(s) saved in the file
            (:mod:`raygan.refine`), calibrated on ``data``'s validation split; None: G's own samples.
        data: the data set the model was trained on (for ``refine_with``).
        refine_config: the refined samplers' settings (None: the defaults).
        class_shares: refine an unconditional model class by class (:func:`raygan.evaluate.refine_classes`).

    Returns:
        The samples.

    Raises:
        UserError: a bad checkpoint, a bad count, an unknown output extension, classes the
            model does not take (an unconditional model, or a class it does not have), or a
            refinement the file cannot give (no discriminator saved).
    """
    out = Path(out)
    if num < 1:
        raise UserError(f"--num must be at least 1, got {num}")
    if out.suffix not in (".npy", ".png"):
        raise UserError(f"--out must end in .npy (raw samples) or .png (an image grid), got {str(out)!r}")
    model = load_samplable(checkpoint)
    k = model.num_classes
    if classes is None and k is not None:
        classes = range(k)
    labels, nrow = (None, max(1, round(math.sqrt(num)))) if classes is None else class_rows(num, classes)
    if refine_with is None:
        samples = draw(model, num, seed=seed, labels=labels)  # LabelError for labels it cannot take
    else:
        refined, _ = refine.sample_file(checkpoint, data, num, refine_with, refine_config or RefineConfig(), seed=seed, labels=labels,
                                        classes=class_shares)
        samples = refined.samples
    if out.suffix == ".npy":
        buffer = io.BytesIO()
        np.save(buffer, samples.numpy())
        atomic_write_bytes(out, buffer.getvalue())
    else:
        if samples.shape[2] == 1 and samples.shape[3] == 1:
            raise UserError("this generator makes points, not images: write them with --out FILE.npy")
        atomic_write_bytes(out, images.png_bytes(samples, nrow=nrow, padding=1))
    return samples


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m raygan.sample``; returns the exit code."""
    p = argparse.ArgumentParser(prog="python -m raygan.sample", description="Draw samples from a raygan generator or mixture checkpoint.")
    p.add_argument("--checkpoint", required=True, help="generator.pt or mixture.pt (e.g. <storage>/<name>/best/generator.pt)")
    p.add_argument("--num", type=int, default=100, help="number of samples (default 100)")
    p.add_argument("--out", required=True, help="FILE.npy for raw samples in [0, 1], FILE.png for an image grid")
    p.add_argument("--seed", type=int, default=0)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--label", type=int, help="conditional models: draw every sample from this class")
    which.add_argument("--labels", help="conditional models: comma-separated classes, one grid row each (default: every class)")
    add_refine_flags(p)
    p.add_argument("--dataset", default=None, type=dataset_argument,
                   help="--refine calibrates on this data set's validation split (default: the data of the run "
                   "holding --checkpoint, else mnist5k)")
    p.add_argument("--data-root", default=None, help="where the data set's files are (default: its usual place)")
    args = p.parse_args(argv)
    try:
        classes = [args.label] if args.label is not None else None if args.labels is None else parse_labels(args.labels)
        config = refine_config(args.calibration, args.checkpoint, args.by_class, args.confident)
        data = shares = None
        if args.refine is not None:
            data, classifier = refine_data(args.dataset, args.data_root, args.checkpoint)
            shares = refine_classes(data, config, classifier)
        samples = write_samples(args.checkpoint, args.out, args.num, args.seed, classes, args.refine, data, config, shares)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(samples)} samples of shape {tuple(samples.shape[1:])} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
