"""Single runs of named G/D recipes on mnist5k, each read by an independent classifier and Parzen.

One process, no Ray: each recipe trains one :class:`raygan.algorithm.GANTrainer` for N
iterations of Algorithm 1, then draws 10,000 samples (fixed noise) and reports

- classes covered: how many digits get at least 2 % and at least 5 % of the samples, and the
  total variation distance of the class histogram to uniform, by a k-nearest-neighbour
  classifier on raw pixels against mnist5k's 4,000 training images (written here, so it shares
  nothing with raygan's own evaluator; its accuracy on the 500 test digits is printed);
- the Parzen-window test log-likelihood (the paper's protocol, :func:`raygan.parzen.evaluate`).

    PYTHONPATH=. python experiments/recipes.py --iterations 1000 --threads 2 --out /tmp/grids

prints a markdown table (one row per recipe) and, with ``--out``, writes each recipe's 10x10
sample grid as ``<recipe>.png``. experiments/README.md ("Recipes on mnist5k") holds the results.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raygan import parzen
from raygan.algorithm import GANTrainer
from raygan.config import ModelConfig, TrainConfig, build, load_config, to_dict
from raygan.data import load_dataset
from raygan.images import png_bytes
from raygan.mixture import draw

SAMPLES = 10_000  # the paper's Parzen centres
SAMPLE_SEED = 1234  # fixed noise for every recipe
KNN_K = 3

PAPER = load_config(Path(__file__).resolve().parent / "mnist_paper.yaml")  # the paper's setting, one place

# name -> (model settings, train settings) over ModelConfig/TrainConfig's defaults ("default": none).
RECIPES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "default": ({}, {}),
    "paper": (to_dict(PAPER.model), to_dict(PAPER.train)),
    "conv32-adam2e-4-b64": ({"conv_width": 32}, {"lr_d": 2e-4, "lr_g": 2e-4, "batch_size": 64}),
    "conv32-adam5e-4-b64": ({"conv_width": 32}, {"lr_d": 5e-4, "lr_g": 5e-4, "batch_size": 64}),
    "conv32-adam1e-3-b64": ({"conv_width": 32}, {"lr_d": 1e-3, "lr_g": 1e-3, "batch_size": 64}),
    "conv32-adam2e-3-b64": ({"conv_width": 32}, {"lr_d": 2e-3, "lr_g": 2e-3, "batch_size": 64}),
    "conv32-adam1e-3-b32": ({"conv_width": 32}, {"lr_d": 1e-3, "lr_g": 1e-3, "batch_size": 32}),
    "conv32-adam2e-3-b32": ({"conv_width": 32}, {"lr_d": 2e-3, "lr_g": 2e-3, "batch_size": 32}),
    "conv16-adam5e-4-b64": ({"conv_width": 16}, {"lr_d": 5e-4, "lr_g": 5e-4, "batch_size": 64}),
    "conv32-adam-dlr1e-4-glr5e-4": ({"conv_width": 32}, {"lr_d": 1e-4, "lr_g": 5e-4, "batch_size": 64}),
    # The default with Adam's beta1 (train.momentum, held by final_momentum) at the search range's
    # lower edge, where the best trials of the default runs ended, and at 0.
    "default-beta1-0.3": ({}, {"momentum": 0.3, "final_momentum": 0.3}),
    "default-beta1-0": ({}, {"momentum": 0.0, "final_momentum": 0.0}),
}


# --------------------------------------------------------------------------------------------
# The independent classifier: labels for mnist5k's splits, and k nearest neighbours on pixels.


class KNN:
    """k-nearest-neighbour vote (Euclidean on pixels) against labelled reference images."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, k: int = KNN_K) -> None:
        self.ref = torch.from_numpy(images.reshape(len(images), -1)).double()
        self.labels, self.k = torch.from_numpy(labels), k

    def _neighbours(self, images: torch.Tensor | np.ndarray, chunk: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
        """The k nearest reference images of each image: (N, k) distances and (N, k) labels, nearest first."""
        x = torch.as_tensor(images).reshape(len(images), -1).double()
        dists, labels = [], []
        for i in range(0, len(x), chunk):
            d = torch.cdist(x[i : i + chunk], self.ref)  # (chunk, 4000)
            top = d.topk(self.k, largest=False)
            dists.append(top.values)
            labels.append(self.labels[top.indices])
        return torch.cat(dists), torch.cat(labels)

    def predict(self, images: torch.Tensor | np.ndarray, chunk: int = 2000) -> np.ndarray:
        return self.vote(self._neighbours(images, chunk)[1])

    @staticmethod
    def vote(nearest: torch.Tensor) -> np.ndarray:
        votes = torch.nn.functional.one_hot(nearest, 10).sum(1).double()
        votes += 1e-3 * torch.nn.functional.one_hot(nearest[:, 0], 10)  # ties: the nearest decides
        return votes.argmax(1).numpy()

    def predict_and_copy_ratio(self, images: torch.Tensor | np.ndarray, held_out: np.ndarray) -> tuple[np.ndarray, float]:
        """The vote, and how close the images lie to the reference (training) images compared with real
        held-out images: median nearest-reference distance of ``images`` over that of ``held_out``.
        About 1 for a generator that draws new digits; well under 1 for one that copies its training set."""
        dists, nearest = self._neighbours(images)
        theirs = self._neighbours(held_out)[0][:, 0]
        return self.vote(nearest), float(dists[:, 0].median() / theirs.median())


def read_samples(samples: torch.Tensor, data: Any, config: Any, model: Any, knn: KNN | None) -> dict[str, Any]:
    """The benchmarks' readings of one sampler's samples: the Parzen validation and test LL ± SE
    (sigma on validation), raygan's domain classifier ``model`` (FD, classes, TVD), and, where a
    ``knn`` is given (mnist5k), the 3-NN (classes, TVD) and the copy ratio."""
    e = config.eval
    p = parzen.evaluate(samples, data.valid, data.test, e.sigmas, chunk_size=e.chunk_size)
    q = model.score(samples, min_share=e.min_class_share)
    read = {"parzen_valid_ll": p.valid_ll, "parzen_test_ll": p.test_ll, "parzen_test_se": p.test_se, "fd": q.fd,
            "classes": q.classes_covered, "tvd": q.tvd, "rarest_share": float(min(q.histogram))}
    if knn is None:
        return read
    predicted, copy_ratio = knn.predict_and_copy_ratio(samples, data.valid)
    at2, _, knn_tvd = coverage(predicted)
    return {**read, "knn_classes": at2, "knn_tvd": knn_tvd, "copy_ratio": copy_ratio}


def coverage(predicted: np.ndarray) -> tuple[int, int, float]:
    """(classes at >= 2 %, classes at >= 5 %, TVD of the class histogram to uniform)."""
    share = np.bincount(predicted, minlength=10) / len(predicted)
    return int((share >= 0.02).sum()), int((share >= 0.05).sum()), float(0.5 * np.abs(share - 0.1).sum())


# --------------------------------------------------------------------------------------------
# One recipe.


def run_recipe(name: str, iterations: int, dataset, knn: KNN, seed: int, out: Path | None,
               time_budget_s: float | None = None) -> dict[str, Any]:
    """Train one recipe for ``iterations`` (or until ``time_budget_s`` of wall time has passed,
    checked every 50 iterations), then read 10,000 samples."""
    model_changes, train_changes = RECIPES[name]
    model = build(ModelConfig, model_changes, "model")
    train = build(TrainConfig, {**train_changes, "seed": seed}, "train")
    trainer = GANTrainer(model, train, torch.from_numpy(dataset.train), bounded=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    if time_budget_s is None:
        metrics = trainer.run(iterations)
    else:
        while time.perf_counter() - start < time_budget_s:
            metrics = trainer.run(50)
        iterations = trainer.iteration
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return read_generator(name, trainer.sample_generator, dataset, knn, out) | {
        "iterations": iterations, "wall_s": wall, "cpu_s": cpu, "d_real": metrics.d_real, "d_fake": metrics.d_fake,
        "finite": metrics.finite}


def read_generator(name: str, generator, dataset, knn: KNN, out: Path | None) -> dict[str, Any]:
    """10,000 samples of fixed noise read by the 3-NN (classes, TVD) and the Parzen protocol; the grid saved."""
    samples = draw(generator, SAMPLES, seed=SAMPLE_SEED)  # a generator or a mixture
    at2, at5, tvd = coverage(knn.predict(samples))
    flat = samples.reshape(SAMPLES, -1)
    result = parzen.evaluate(flat, dataset.valid.reshape(len(dataset.valid), -1), dataset.test.reshape(len(dataset.test), -1))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.png").write_bytes(png_bytes(samples[:100], nrow=10, padding=1))
    return {"recipe": name, "at2": at2, "at5": at5, "tvd": tvd, "parzen": result.test_ll, "parzen_se": result.test_se}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), default=["default", "paper"])
    parser.add_argument("--iterations", type=int, default=1000, help="Algorithm 1 iterations per recipe")
    parser.add_argument("--seed", type=int, default=0, help="train.seed of every recipe")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", type=Path, default=None, help="folder for each recipe's 10x10 sample grid (PNG)")
    parser.add_argument("--time-budget-s", type=float, default=None,
                        help="train each recipe for this many wall seconds instead of --iterations")
    parser.add_argument("--generator", type=Path, nargs="*", default=[],
                        help="read these generator.pt / mixture.pt files too (e.g. a run's best/), without training")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dataset = load_dataset("mnist5k")
    train_labels, test_labels = dataset.train_labels, dataset.test_labels
    knn = KNN(dataset.train, train_labels)
    accuracy = float((knn.predict(dataset.test) == test_labels).mean())
    real = coverage(knn.predict(dataset.test))
    print(f"classifier: {KNN_K}-NN on pixels against the 4,000 training digits; test accuracy {accuracy:.3f}; "
          f"on the 500 test digits: {real[0]} classes >= 2 %, {real[1]} >= 5 %, TVD {real[2]:.3f}")
    print("| recipe | iterations | wall s | CPU s | classes >= 2 % | classes >= 5 % | TVD | Parzen test LL |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for path in args.generator:
        from raygan.mixture import load_samplable

        r = read_generator(path.parent.name + "_" + path.stem, load_samplable(path), dataset, knn, args.out)
        print(f"| {path} | — | — | — | {r['at2']} | {r['at5']} | {r['tvd']:.3f} | {_ll(r)} |", flush=True)
    for name in args.recipes if not args.generator else []:
        r = run_recipe(name, args.iterations, dataset, knn, args.seed, args.out, args.time_budget_s)
        print(f"| {name} | {r['iterations']} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} | {r['at2']} | {r['at5']} | {r['tvd']:.3f} | {_ll(r)} |",
              flush=True)
    return 0


def _ll(r: dict[str, Any]) -> str:
    return f"{r['parzen']:.0f} ± {r['parzen_se']:.0f}" if math.isfinite(r["parzen"]) else "nan"


if __name__ == "__main__":
    raise SystemExit(main())
