"""Benchmark: G's last iterate against the running average of its weights (train.g_average), per seed.

    python experiments/benchmarks/bench_average.py [--seeds 0 1 2] [--at 4000 7000 10000] [--decay 0.999]

One training run per seed of the default recipe (the experiment's model and train settings, on
every core): the raw G and its running average are the same run, so they differ only in how its
weights are read. At each of ``--at`` iterations both are read alike on ``eval.num_samples``
samples of ``eval.seed`` by ``recipes.read_samples``: the Parzen validation and test LL ± SE
(sigma on validation), raygan's domain classifier (FD, TVD), the independent 3-NN classifier
(TVD) and the copy ratio.
Prints one row per seed, checkpoint and reading, then the medians over the seeds at the end;
writes ``OUT/average.json`` and each seed's two sample grids at the end (``OUT/seed<S>-<reading>.png``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

EXPERIMENTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(EXPERIMENTS))

import common  # noqa: E402
from recipes import KNN, read_samples  # noqa: E402

from raygan import images, quality  # noqa: E402
from raygan.algorithm import GANTrainer  # noqa: E402
from raygan.config import ExperimentConfig, load_config, replace  # noqa: E402
from raygan.data import load_dataset  # noqa: E402
from raygan.models import generate  # noqa: E402

READINGS = ("last iterate", "average")


def read(generator: torch.nn.Module, data: Any, config: ExperimentConfig, model: quality.QualityModel, knn: KNN,
         grid: Path | None) -> dict[str, Any]:
    samples = generate(generator.eval(), config.eval.num_samples, seed=config.eval.seed)
    if grid is not None:  # the first 100 samples, as best/samples.png shows them
        grid.parent.mkdir(parents=True, exist_ok=True)
        grid.write_bytes(images.png_bytes(samples[:100], nrow=10, padding=1))
    return read_samples(samples, data, config, model, knn)


def run_seed(config: ExperimentConfig, data: Any, seed: int, at: list[int], decay: float, model: quality.QualityModel,
             knn: KNN, out: Path) -> dict[str, Any]:
    trainer = GANTrainer(config.model, replace(config.train, seed=seed, g_average=decay), torch.from_numpy(data.train), data.bounded)
    rows, start = {}, time.perf_counter()
    for target in at:
        trainer.run(target - trainer.iteration)
        grids = [out / f"seed{seed}-{name.replace(' ', '-')}.png" if target == at[-1] else None for name in READINGS]
        rows[target] = {name: read(g, data, config, model, knn, grid)
                        for name, g, grid in zip(READINGS, (trainer.generator, trainer.sample_generator), grids)}
        for name, r in rows[target].items():
            print(f"{seed:>4} {target:>7,} {name:>12} " + " ".join(f"{r[k]:>9.3f}" for k in COLUMNS), flush=True)
    return {"rows": rows, "wall_s": time.perf_counter() - start}


COLUMNS = ("parzen_valid_ll", "parzen_test_ll", "parzen_test_se", "fd", "tvd", "knn_tvd", "copy_ratio")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=None, help="an experiment YAML (default: the default run's settings)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--at", type=int, nargs="+", default=[4000, 7000, 10000], help="iterations at which both are read")
    p.add_argument("--decay", type=float, default=0.999)
    p.add_argument("--out", type=Path, default=common.RESULTS_DIR / "average")
    args = p.parse_args(argv)
    at = sorted(set(args.at))
    print(f"$ python experiments/benchmarks/bench_average.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(json.dumps(common.hardware()))
    config = load_config(args.config) if args.config else ExperimentConfig()
    torch.set_num_threads(os.cpu_count() or 1)
    data = load_dataset(config.data.name, config.data.root)
    model, knn = quality.load_or_train(data), KNN(data.train, data.train_labels)
    print(f"{'seed':>4} {'iter':>7} {'G':>12} " + " ".join(f"{c.replace('parzen_', ''):>9}" for c in COLUMNS))
    results = {str(seed): run_seed(config, data, seed, at, args.decay, model, knn, args.out) for seed in args.seeds}
    print(f"medians over seeds {args.seeds} at {at[-1]:,} iterations:")
    for name in READINGS:
        finals = [r["rows"][at[-1]][name] for r in results.values()]
        print(f"  {name:>12} " + " ".join(f"{c.replace('parzen_', '')} {statistics.median(f[c] for f in finals):.3f}"
                                          for c in COLUMNS if c != "parzen_test_se"))
    args.out.mkdir(parents=True, exist_ok=True)
    common.write_json(args.out / "average.json", {"decay": args.decay, "at": at, "seeds": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
