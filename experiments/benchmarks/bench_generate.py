"""Benchmark: raygan.models.generate's forward-pass size on a CPU, side by side in one process.

Every ranking evaluation, the final report and the mixture draw 10,000 samples through
``generate``; it draws the noise 1,000 at a time and, on a CPU, runs G on
``models.CPU_FORWARD_BATCH`` of them at a time. This times the default G (the conv pair's,
untrained: the cost does not depend on the weights) at each forward size, interleaved repeats,
and prints the median and best wall time per 10,000 samples:

    python experiments/benchmarks/bench_generate.py [--threads 1 2] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402

import raygan.models  # noqa: E402
from raygan.config import ModelConfig  # noqa: E402
from raygan.models import Generator, generate  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--forward", type=int, nargs="+", default=[1000, 500, 250, 100], help="forward-pass sizes")
    p.add_argument("--num", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    print(f"$ python experiments/benchmarks/bench_generate.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(json.dumps(common.hardware()))
    torch.manual_seed(0)
    g = Generator(ModelConfig(), (1, 28, 28))
    print(f"{'threads':>7} {'forward':>7} {'median s':>9} {'best s':>7}   (per {args.num:,} samples; "
          f"default CPU_FORWARD_BATCH {raygan.models.CPU_FORWARD_BATCH})")
    default = raygan.models.CPU_FORWARD_BATCH
    try:
        for threads in args.threads:
            torch.set_num_threads(threads)
            times: dict[int, list[float]] = {f: [] for f in args.forward}
            generate(g, 1000)  # warm-up
            for _ in range(args.repeats):
                for f in args.forward:
                    raygan.models.CPU_FORWARD_BATCH = f
                    start = time.perf_counter()
                    generate(g, args.num, seed=1)
                    times[f].append(time.perf_counter() - start)
            for f, t in times.items():
                print(f"{threads:>7} {f:>7} {statistics.median(t):>9.3f} {min(t):>7.3f}")
    finally:
        raygan.models.CPU_FORWARD_BATCH = default
    return 0


if __name__ == "__main__":
    sys.exit(main())
