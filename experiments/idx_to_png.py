"""Write an idx data set (Fashion-MNIST, MNIST) as a folder of PNGs that ``--dataset PATH`` reads.

    python experiments/idx_to_png.py --out /tmp/fashion_png                  # Debian's Fashion-MNIST
    python experiments/idx_to_png.py --dataset mnist --root DIR --out /tmp/mnist_png

The layout keeps raygan's built-in split: ``<out>/train/`` (the first 50,000 training images),
``<out>/valid/`` (the last 10,000), ``<out>/test/`` (the 10,000 test images), each with one
folder per class, ``<k>_<name>``, so the classes sort into the labels' order. Each image is named
by its zero-padded index in its idx file, and raygan reads a folder's images in file-name order:
the folder holds the very arrays, labels and order of the built-in loader. The script checks
that by reading the folder back with raygan.userdata and comparing it with raygan.data's arrays.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from raygan.data import DEBIAN_FASHION_MNIST_DIR, IDX_VALID_SIZE, load_dataset, read_idx
from raygan.userdata import load

CLASS_NAMES = {
    "fashion-mnist": ("T-shirt-top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle-boot"),
    "mnist": tuple(str(k) for k in range(10)),
}
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"), "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _read(root: Path, stem: str) -> np.ndarray:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return read_idx(candidate)
    raise SystemExit(f"error: no {stem}[.gz] in {str(root)!r}")


def convert(dataset: str, root: Path, out: Path) -> dict[str, int]:
    """Write the PNG folder; returns the images written per split."""
    names = CLASS_NAMES[dataset]
    train_images, train_labels = (_read(root, stem) for stem in FILES["train"])
    test_images, test_labels = (_read(root, stem) for stem in FILES["test"])
    splits = {
        "train": (train_images[:-IDX_VALID_SIZE], train_labels[:-IDX_VALID_SIZE], 0),
        "valid": (train_images[-IDX_VALID_SIZE:], train_labels[-IDX_VALID_SIZE:], len(train_images) - IDX_VALID_SIZE),
        "test": (test_images, test_labels, 0),
    }
    width = len(str(len(train_images)))
    jobs = []
    for split, (images, labels, first) in splits.items():
        for k, name in enumerate(names):
            (out / split / f"{k}_{name}").mkdir(parents=True, exist_ok=True)
        for i, (image, label) in enumerate(zip(images, labels)):
            jobs.append((image, out / split / f"{label}_{names[label]}" / f"{first + i:0{width}d}.png"))
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda job: Image.fromarray(job[0]).save(job[1]), jobs))
    return {split: len(images) for split, (images, _, _) in splits.items()}


def same_as_built_in(dataset: str, root: Path, out: Path) -> bool:
    """Whether the folder, read by raygan, equals the built-in loader's data: images, labels and order."""
    built_in, folder = load_dataset(dataset, root), load(out)
    return all(
        np.array_equal(getattr(built_in, split), getattr(folder, split))
        and np.array_equal(getattr(built_in, f"{split}_labels"), getattr(folder, f"{split}_labels"))
        for split in ("train", "valid", "test")
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write an idx data set as a PNG folder in raygan's split layout.")
    p.add_argument("--dataset", choices=sorted(CLASS_NAMES), default="fashion-mnist")
    p.add_argument("--root", default=DEBIAN_FASHION_MNIST_DIR, help=f"the directory of the idx files (default {DEBIAN_FASHION_MNIST_DIR})")
    p.add_argument("--out", required=True, help="the folder to write (must not exist)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        print(f"error: {str(out)!r} exists; pass a new folder", file=sys.stderr)
        return 2
    start = time.perf_counter()
    written = convert(args.dataset, Path(args.root), out)
    print(f"wrote {written} PNGs to {out} in {time.perf_counter() - start:.0f} s")
    start = time.perf_counter()
    same = same_as_built_in(args.dataset, Path(args.root), out)
    print(f"read back by raygan in {time.perf_counter() - start:.0f} s; identical to the built-in loader's arrays, labels and order: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
