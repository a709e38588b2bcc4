"""Benchmark: the domain classifier's quality measures (raygan.quality) beside the Parzen protocol.

Printed side by side, on the same samples:

- training the classifier once (raygan.quality.load_or_train into an empty cache): wall and CPU
  time, and its held-out (test split) accuracy. Target (issue 11): under 60 s on 2 cores;
- loading it from the cache (what every later run pays);
- QualityModel.score on the samples (FD, classes covered, TVD, confidence): wall time (best and
  median of --repeats) and CPU time. Target: under 1 s for 10,000 samples on 2 cores;
- the baseline: raygan.parzen.evaluate, the Parzen protocol as raygan.evaluate runs it on the data
  set (the samples as centres, sigma chosen on the validation split, the test split scored);
- the forward pass alone, the floor for the classifier's part.

Then what the classifier reads on real and on collapsed sets: the validation and test splits,
copies of one training image, three classes only, the mean image repeated (blur), uniform noise.

Samples: ``--num-samples`` images drawn from the data set's training split, each shifted by up to
2 pixels, with noise of std 0.02, clipped to [0, 1] (images like real digits and generated samples).

    python experiments/benchmarks/bench_quality.py
    python experiments/benchmarks/bench_quality.py --dataset fashion-mnist --repeats 3
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

from raygan import parzen, quality
from raygan.data import load_dataset


def timed(fn, repeats: int) -> tuple[list[float], list[float], object]:
    """Wall and CPU (process) seconds of each of ``repeats`` calls, and the last result."""
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return walls, cpus, result


def shifted_noisy(images: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n images picked from ``images``, each rolled by up to 2 pixels, noise std 0.02, clipped to [0, 1]."""
    picks = images[rng.integers(0, len(images), n)]
    shifts = rng.integers(-2, 3, (n, 2))
    out = np.empty_like(picks)
    for i in range(n):
        out[i] = np.roll(picks[i], tuple(shifts[i]), (1, 2))
    out += rng.normal(0.0, 0.02, out.shape).astype(np.float32)
    return np.clip(out, 0.0, 1.0)


def row(name: str, walls: list[float], cpus: list[float], note: str = "") -> str:
    best, median = min(walls), statistics.median(walls)
    return f"{name:<38} {best:>8.3f} {median:>8.3f} {min(cpus):>8.3f}  {note}"


def readings(model: quality.QualityModel, data) -> list[str]:
    """The classifier's scores of real held-out images and of collapsed or blurred sets, one line each."""
    rng = np.random.default_rng(0)
    three = data.train[np.isin(data.train_labels, [1, 7, 9])]
    sets = {
        f"validation split ({len(data.valid):,}), the reference": data.valid,
        f"test split ({len(data.test):,})": data.test,
        f"1,000 copies of one training image (class {data.train_labels[0]})": np.repeat(data.train[:1], 1000, 0),
        f"training images of classes 1, 7, 9 only ({len(three):,})": three,
        "the mean validation image x 500 (blur)": np.repeat(data.valid.mean(0, keepdims=True), 500, 0),
        "uniform noise (1,000)": rng.uniform(size=(1000, *data.shape)).astype(np.float32),
    }
    lines = [f"{'':<56} {'FD':>9} {'classes':>8} {'TVD':>6} {'confidence':>11}"]
    for name, images in sets.items():
        q = model.score(images)
        covered = f"{q.classes_covered}/{model.num_classes}"
        lines.append(f"{name:<56} {q.fd:>9.2f} {covered:>8} {q.tvd:>6.3f} {q.confidence:>11.3f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist5k", choices=("mnist5k", "fashion-mnist", "mnist", "cifar10"))
    p.add_argument("--num-samples", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=5, help="timed calls of the quality measures (Parzen: fewer)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (the CI machine has 2 cores)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    print("$ python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]))
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads; load average before: {os.getloadavg()[0]:.2f}"
    )
    print("# targets (issue 11), 2 cores: quality measures on 10,000 samples < 1 s; training once < 60 s\n")
    data = load_dataset(args.dataset)
    samples = shifted_noisy(data.train, args.num_samples, np.random.default_rng(args.seed))

    with tempfile.TemporaryDirectory() as cache:
        lines: list[str] = []
        train_w, train_c, model = timed(lambda: quality.load_or_train(data, cache_dir=cache, log=lines.append), 1)
        load_w, load_c, _ = timed(lambda: quality.load_or_train(data, cache_dir=cache, log=lines.append), 3)

    print(f"{'':<38} {'best s':>8} {'median s':>8} {'CPU s':>8}")
    print(row("train the classifier (once)", train_w, train_c, f"held-out accuracy {model.accuracy:.2%}"))
    print(row("load it from the cache", load_w, load_c))
    x = torch.from_numpy(samples)
    with torch.no_grad():
        fwd_w, fwd_c, _ = timed(lambda: [model.classifier(x[i : i + 1000]) for i in range(0, len(x), 1000)], args.repeats)
    score_w, score_c, scores = timed(lambda: model.score(samples), args.repeats)
    ref_w, ref_c, ref = timed(lambda: model.reference(data.valid), args.repeats)
    n = f"{args.num_samples:,}"
    print(row(f"quality measures, {n} samples", score_w, score_c, "FD, classes, TVD, confidence"))
    print(row(f"  forward pass alone, {n} samples", fwd_w, fwd_c, "the floor"))
    print(row(f"reference: validation split ({len(data.valid):,})", ref_w, ref_c))
    parzen_w, parzen_c, result = timed(lambda: parzen.evaluate(samples, data.valid, data.test), max(1, args.repeats // 2))
    print(
        row(
            f"baseline: Parzen protocol, {n} samples",
            parzen_w,
            parzen_c,
            f"{len(data.valid):,} valid x 10 sigmas + {len(data.test):,} test",
        )
    )
    print()
    print(
        f"samples:   FD {scores.fd:.2f}, classes {scores.classes_covered}/{model.num_classes}, "
        f"TVD {scores.tvd:.3f}, confidence {scores.confidence:.3f}; Parzen test LL {result.test_ll:.1f} "
        f"± {result.test_se:.1f} (sigma {result.sigma:.3f})"
    )
    print(
        f"reference: FD {ref.fd:.2f}, classes {ref.classes_covered}/{model.num_classes}, "
        f"TVD {ref.tvd:.3f}, confidence {ref.confidence:.3f} (validation split)"
    )
    print()
    print("\n".join(readings(model, data)))
    print(f"# load average after: {os.getloadavg()[0]:.2f} (other processes share these cores: read CPU s too)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
