"""Mode collapse on the ring of 8 Gaussians: the paper's "Helvetica scenario" (Section 6) made visible.

Goodfellow et al. warn that G may collapse too many values of z to the same x. On ``ring-8``
(8 Gaussians of std 0.02 on a circle of radius 2; experiments/toy_2d.yaml's small MLPs) we
count, for 2,500 samples of a generator:

- the share of high-quality samples: within 3 std (0.06) of the nearest centre, in Euclidean
  distance (98.9% of real data points are: P(chi_2 <= 3) = 1 - exp(-4.5));
- the modes covered: a mode is covered when at least ``--min-share`` of all samples (default
  1%, a twelfth of the fair 12.5%) are high-quality samples of it.

Two generators under the same compute, as in Table 1: (a) the paper's default hyperparameters
(lr 0.1, momentum 0.5 -> 0.7, k = 1, uniform prior, non-saturating G loss), one run of
``--iterations`` (its last iterate, and its best on Parzen validation LL); (b) the best trial
(on Parzen validation LL) of a PBT population of ``--trials`` pairs, each given
``iterations / trials``. Real data is scored the same way as a check of the metric.

    python experiments/mode_collapse.py                  # docs/mode_collapse.png
    python experiments/mode_collapse.py --iterations 4000 --trials 4 --steps 4 --no-population
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import common
import numpy as np
import torch

from raygan import hyperparameters
from raygan.config import EvalConfig, load_config, replace
from raygan.data import Dataset, load_dataset, mixture_centres, mixture_std
from raygan.models import Generator, generate, load_generator

DATASET = "ring-8"
OUT_DIR = common.RESULTS_DIR / "mode_collapse"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Modes covered and high-quality samples on the ring of 8 Gaussians.")
    p.add_argument("--config", type=Path, default=common.EXPERIMENTS_DIR / "toy_2d.yaml")
    p.add_argument("--iterations", type=int, default=4000, help="Algorithm 1 iterations for the default run: the compute budget")
    p.add_argument("--trials", type=int, default=4, help="population size; each trial gets iterations/trials")
    p.add_argument("--steps", type=int, default=4, help="Tune steps per trial")
    p.add_argument("--samples", type=int, default=2500, help="samples scored per generator")
    p.add_argument("--rank-valid", type=int, default=1000, help="validation points used to rank generators (Parzen LL)")
    p.add_argument("--evals", type=int, default=16, help="validation scorings along the default run")
    p.add_argument("--min-share", type=float, default=0.01, help="share of all samples a mode needs to count as covered")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-population", action="store_true", help="only the default run (fast; no Ray)")
    p.add_argument("--population-only", action="store_true", help="keep the saved default run, (re)run the population")
    p.add_argument("--out-dir", type=Path, default=OUT_DIR)
    p.add_argument("--out", type=Path, default=common.DOCS_DIR / "mode_collapse.png")
    p.add_argument("--verbose", type=int, default=1)
    p.add_argument("--render-only", action="store_true", help="redraw from the saved results")
    return p.parse_args(argv)


def coverage(points: np.ndarray, centres: np.ndarray, std: float, min_share: float) -> dict[str, Any]:
    """High-quality share and modes covered for (n, 2) points around (M, 2) centres."""
    d = np.linalg.norm(points[:, None, :] - centres[None, :, :], axis=2)  # (n, M)
    nearest, dist = d.argmin(1), d.min(1)
    good = dist <= 3 * std
    counts = np.bincount(nearest[good], minlength=len(centres))
    covered = counts >= min_share * len(points)
    # Without the quality cut: how many modes are the nearest mode of enough samples. It tells a
    # generator spread around the ring but not yet sharp from one collapsed onto a single point.
    reached = np.bincount(nearest, minlength=len(centres)) >= min_share * len(points)
    return {
        "high_quality_share": float(good.mean()),
        "modes_covered": int(covered.sum()),
        "modes_reached": int(reached.sum()),
        "median_distance_to_nearest_centre": float(np.median(dist)),
        "modes": len(centres),
        "per_mode_share": (counts / len(points)).round(4).tolist(),
    }


def _points(generator: Generator, n: int) -> np.ndarray:
    return generate(generator, n, seed=EvalConfig().seed + 1).reshape(n, 2).double().numpy()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train the default run (and the population), score every generator, save the record."""
    torch.set_num_threads(1)
    base = load_config(args.config, {"data": {"name": DATASET}, "train": {"seed": args.seed}, "eval": {"every": 1}})
    ds = load_dataset(DATASET, seed=args.seed)
    centres, std = mixture_centres(DATASET), mixture_std(DATASET)
    real = ds.test[: args.samples].reshape(-1, 2).astype(np.float64)
    record: dict[str, Any] = {
        "command": "python experiments/mode_collapse.py " + " ".join(shlex.quote(a) for a in args.argv),
        "hardware": common.hardware(),
        "budget": {"iterations": args.iterations, "trials": args.trials, "steps": args.steps},
        "min_share": args.min_share,
        "centres": centres.tolist(),
        "std": std,
        "runs": {"real data": {**coverage(real, centres, std, args.min_share), "points": real.tolist()}},
    }
    # Ranking uses a subset of validation: Parzen scoring of a collapsed generator (all samples
    # within reach of every point) is the slow case, and the default run collapses.
    valid = ds.valid[: args.rank_valid]
    every = max(1, args.iterations // args.evals)
    saved = Path(args.out_dir) / "mode_collapse.json"
    if args.population_only:
        previous = common.read_json(saved)
        if previous["budget"] != record["budget"]:
            raise SystemExit(f"{saved} was made with another budget ({previous['budget']}); run without --population-only")
        record["runs"] = {k: v for k, v in previous["runs"].items() if k != "population best"}
        record["default_curve"], record["earlier_command"] = previous["default_curve"], previous["command"]
    else:
        print(f"(a) default run: {args.iterations} iterations", flush=True)
        single = common.train_single(base, ds.train, valid, ds.bounded, args.iterations, every, base.eval.num_samples)
        for name, gen in (("default, last iterate", single.final_generator), ("default, best on validation", single.generator)):
            pts = _points(gen, args.samples)
            record["runs"][name] = {**coverage(pts, centres, std, args.min_share), "points": pts.tolist(),
                                    "compute": single.compute.as_dict(), "iterations": args.iterations}
        record["runs"]["default, best on validation"]["best_iteration"] = single.best_iteration
        record["default_curve"] = single.curve
        common.write_json(saved, record)  # kept even if the population fails
    if not args.no_population:
        per_step = args.iterations // (args.trials * args.steps)
        tune = replace(base.tune, num_trials=args.trials, max_iterations=args.steps, iterations_per_step=max(1, per_step),
                       time_budget_s=None, seed=args.seed, storage_path=str(Path(args.out_dir).resolve() / "ray"), name="mode-collapse")
        pop = common.run_population(replace(base, tune=tune), Dataset(ds.name, ds.train, valid, ds.test, ds.bounded), args.verbose)
        pts = _points(load_generator(Path(pop.report.best_dir) / "generator.pt"), args.samples)
        cfg = pop.report.summary.get("config", {})
        record["runs"]["population best"] = {
            **coverage(pts, centres, std, args.min_share), "points": pts.tolist(), "compute": pop.compute.as_dict(),
            "iterations": args.trials * args.steps * max(1, per_step), "trial": pop.report.summary.get("trial_id"),
            "config": {k: cfg.get(k) for k in hyperparameters.names() if k in cfg},
            "exploits": len(pop.exploits),
        }
    common.write_json(Path(args.out_dir) / "mode_collapse.json", record)
    return record


def table(record: dict[str, Any]) -> str:
    """The numbers as markdown."""
    header = ("| generator | modes covered (within 3 std) | high-quality samples | modes reached (nearest mode, any distance) "
              "| median distance to nearest centre | Alg. 1 iterations | CPU-s |")
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in record["runs"].items():
        iters = f"{r['iterations']:,}" if "iterations" in r else "—"
        if name == "population best":
            iters = f"{record['budget']['trials']} x {r['iterations'] // record['budget']['trials']:,}"
        cpu = f"{r['compute']['total_cpu_s']:.0f}" if "compute" in r else "—"
        lines.append(f"| {name} | {r['modes_covered']} / {r['modes']} | {100 * r['high_quality_share']:.1f}% | {r['modes_reached']} / {r['modes']} "
                     f"| {r['median_distance_to_nearest_centre']:.3f} | {iters} | {cpu} |")
    return "\n".join(lines)


def render(record: dict[str, Any], out: Path) -> None:
    """One panel per generator: its samples, the centres and their 3-std circles."""
    plt = common.require_matplotlib()
    names = [n for n in ("real data", "default, last iterate", "population best") if n in record["runs"]]
    centres, std = np.array(record["centres"]), record["std"]
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        r = record["runs"][name]
        pts = np.array(r["points"])
        ax.scatter(pts[:, 0], pts[:, 1], s=3, alpha=0.4, color="tab:green", lw=0)
        if pts.std(0).max() < 0.1:  # collapsed onto (nearly) one point: say so, it is easy to miss
            centre = pts.mean(0)
            ax.annotate(f"all {len(pts):,} samples\n(Helvetica)", xy=centre, xytext=(0, 0), ha="center", va="center", fontsize=7,
                        arrowprops={"arrowstyle": "->", "color": "tab:green"})
        for c in centres:
            ax.add_patch(plt.Circle(c, 3 * std, fill=False, color="tab:red", lw=0.8))
        ax.scatter(centres[:, 0], centres[:, 1], marker="+", color="tab:red", s=25, lw=0.8)
        ax.set_title(f"{name}\n{r['modes_covered']}/{r['modes']} modes covered, {100 * r['high_quality_share']:.0f}% within 3 std, "
                     f"{r['modes_reached']}/{r['modes']} reached", fontsize=8)
        ax.set_xlim(-3, 3)
        ax.set_ylim(-3, 3)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    common.save_figure(fig, out)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run (unless --render-only), print the table, draw the figure."""
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    record = common.read_json(Path(args.out_dir) / "mode_collapse.json") if args.render_only else run(args)
    for r in record["runs"].values():  # the metric from the saved points, so a re-render uses this code's metric
        r.update(coverage(np.array(r["points"]), np.array(record["centres"]), record["std"], record["min_share"]))
    print(table(record))
    render(record, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
