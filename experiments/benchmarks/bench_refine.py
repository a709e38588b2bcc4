"""The refined samplers side by side on finished runs' best generators, one table row each.

    python experiments/benchmarks/bench_refine.py --runs RUN [RUN ...] [--num 10000]

For each run (a ``python -m raygan.tune`` storage directory; its ``best/generator.pt`` and
``experiment.yaml``), in one process, one sampler after the other: the raw samples, DRS with D
alone, DRS by class (``refine.confident`` 0), DRS by class and confidence (the run's refine
settings: the default) and MH by class and confidence, each ``--num`` samples of the run's
``eval.seed`` drawn by :func:`raygan.refine.sample_file` exactly as ``raygan.tune``, ``raygan.sample``
and ``raygan.evaluate`` draw them. Each is read by the Parzen window (test LL ± SE, sigma on
validation), raygan's domain classifier (FD, TVD) and, on mnist5k, the 3-NN classifier on pixels
(experiments/recipes.py), with its acceptance and seconds: the sampler's own, and with D's
calibration (what a user waits for). Prints a Markdown table; ``--json`` writes the rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

EXPERIMENTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(EXPERIMENTS))

from recipes import KNN, read_samples  # noqa: E402

from raygan import quality, refine  # noqa: E402
from raygan.config import load_config, replace  # noqa: E402
from raygan.data import load_dataset  # noqa: E402
from raygan.files import EXPERIMENT_FILE  # noqa: E402
from raygan.models import generate, load_generator  # noqa: E402

SAMPLERS = (  # (row name, method, refine settings changed from the run's)
    ("DRS, D alone", "drs", {"by_class": False}),
    ("DRS by class (`--confident 0`)", "drs", {"confident": 0.0}),
    ("DRS by class and confidence (the default)", "drs", {}),
    ("MH by class and confidence", "mh", {}),
)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, nargs="+", required=True)
    p.add_argument("--num", type=int, default=10_000)
    p.add_argument("--json", type=Path, help="write the rows here too")
    args = p.parse_args(argv)
    rows = []
    print("| run | sampler | Parzen test LL ± SE | FD | TVD (raygan) | 3-NN TVD | acceptance | s / 10,000 (with calibration) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for run in args.runs:
        config = load_config(run / EXPERIMENT_FILE)
        data = load_dataset(config.data.name, config.data.root)
        model = quality.load_or_train(data)
        knn = KNN(data.train, data.train_labels) if config.data.name == "mnist5k" else None
        file = run / "best" / "generator.pt"
        raw = generate(load_generator(file), args.num, seed=config.eval.seed)
        rows.append({"run": str(run), "sampler": "raw", **read_samples(raw, data, config, model, knn)})
        _print(rows[-1])
        for name, method, changes in SAMPLERS:
            settings = replace(config.refine, **changes)
            start = time.perf_counter()
            refined, _ = refine.sample_file(file, data, args.num, method, settings, seed=config.eval.seed,
                                            classes=refine.classes_for(model, data.valid, settings))
            total = time.perf_counter() - start
            rows.append({"run": str(run), "sampler": name, **read_samples(refined.samples, data, config, model, knn),
                         "acceptance": refined.acceptance, "method": method, "seconds": refined.seconds, "seconds_total": total})
            _print(rows[-1])
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


def _print(row: dict) -> None:
    knn = f"{row['knn_tvd']:.3f}" if "knn_tvd" in row else "—"
    if "acceptance" in row:
        what = "of moves" if row["method"] == "mh" else ""
        cost = f"{row['acceptance']:.0%} {what}".strip(), f"{row['seconds']:.1f} ({row['seconds_total']:.1f})"
    else:
        cost = "—", "—"
    print(f"| {Path(row['run']).name} | {row['sampler']} | {row['parzen_test_ll']:.1f} ± {row['parzen_test_se']:.1f} | "
          f"{row['fd']:.1f} | {row['tvd']:.3f} | {knn} | {cost[0]} | {cost[1]} |", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
