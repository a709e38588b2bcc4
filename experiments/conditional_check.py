"""Does a conditional mnist5k generator obey its label? Two classifiers read its samples, class by class.

Draws ``--per-class`` samples of each digit 0-9 (fixed noise) from a conditional generator file
and prints, per asked class, the share read as that class by

- raygan's domain classifier (:mod:`raygan.quality`, the one the evaluator uses), with the
  class's FD against its own training features;
- an independent 3-nearest-neighbour classifier on raw pixels against mnist5k's 4,000 training
  digits (experiments/recipes.py's, sharing nothing with raygan's evaluator).

Each classifier's accuracy on the 500 real test digits is printed beside it (what "competent" means).

    PYTHONPATH=. python experiments/conditional_check.py --checkpoint <run>/best/generator.pt
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np
import torch
from recipes import KNN

from raygan import quality
from raygan.data import load_dataset
from raygan.models import generate, load_generator

SAMPLE_SEED = 1234


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a conditional generator.pt trained on mnist5k")
    p.add_argument("--per-class", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    dataset = load_dataset("mnist5k")
    generator = load_generator(args.checkpoint)
    if generator.num_classes != dataset.num_classes:
        print(f"error: {args.checkpoint} is not a conditional generator of mnist5k's {dataset.num_classes} classes")
        return 2
    model = quality.load_or_train(dataset)
    knn = KNN(dataset.train, dataset.train_labels)
    knn_test = float((knn.predict(dataset.test) == dataset.test_labels).mean())
    print(f"real test digits: raygan classifier {model.accuracy:.2%}, 3-NN on pixels {knn_test:.2%}")

    k, n = dataset.num_classes, args.per_class
    labels = torch.arange(k).repeat_interleave(n)
    samples = generate(generator, k * n, seed=SAMPLE_SEED, labels=labels)
    _, probs = quality.read(model.classifier, samples)
    ours = probs.argmax(dim=1).numpy()
    theirs = knn.predict(samples)
    fds = model.score_conditional(samples, labels).per_class_fd
    y = labels.numpy()
    print(f"\n{n:,} samples per asked class (seed {SAMPLE_SEED}):")
    print("| asked | raygan classifier | 3-NN on pixels | class FD |")
    print("|---|---|---|---|")
    for c in range(k):
        mine = y == c
        print(f"| {c} | {(ours[mine] == c).mean():.1%} | {(theirs[mine] == c).mean():.1%} | {fds[c]:.2f} |")
    print(f"| all | {(ours == y).mean():.2%} | {(theirs == y).mean():.2%} | {np.mean(fds):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
