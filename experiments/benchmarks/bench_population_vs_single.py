"""The population against one run given the whole machine, seed by seed.

    python experiments/benchmarks/bench_population_vs_single.py [--seeds 0 1 2] [--out DIR] [-- TUNE FLAGS]

For each seed S, in one process, one arm after the other on the same machine:

1. **population**: ``python -m raygan.tune --seed S --name pvs-pop-S --storage-path OUT [TUNE FLAGS]``, exactly
   as a user runs it (a subprocess; its wall time measured); its answer is ``best/generator.pt``.
2. **single**: one run of the best fixed recipe (the experiment's own model and train settings, the
   population's first trial) with ``train.seed`` S, on every core (torch threads = cores), trained
   for the population's search budget (``tune.time_budget_s``) of wall time with no evaluation; a
   copy of G's weights every ``--snapshot-s`` seconds (charged to its budget) feeds the anytime
   curve, scored after the clock stops. Its answer is G at the end, as the recipe samples it (the
   running average of its weights under ``train.g_average``, else the last iterate).

Both answers are read alike: the Parzen test LL ± SE on ``eval.num_samples`` samples of
``eval.seed`` (sigma on validation), raygan's domain classifier (FD, classes >= 2 %, TVD) and an
independent 3-nearest-neighbour classifier on pixels (experiments/recipes.py; classes >= 2 %,
TVD), and the copy ratio: the samples' median distance to their nearest training image over real
held-out (validation) images' (about 1 for new digits, well under 1 for copies of the training
set). Where the run scored refined samplers (``summary.json``'s "refined"), their samples are
drawn again (the same seed and settings, so the same samples) and read by the 3-NN too; the single
run's G and D are refined alike, so each arm's refined sampler stands beside the other's.

``--reread`` trains nothing: it refines the answers ``OUT/pvs.json`` saved again with raygan.refine
as it is now (after a change to the samplers) and rewrites their rows.

Prints one table row per seed and arm, then the medians over the seeds; writes everything to
``OUT/pvs.json`` and the anytime figure (best validation LL so far against wall seconds, both arms,
every seed) to ``docs/population_vs_single.png`` (``--figure``). Needs matplotlib for the figure.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

EXPERIMENTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(EXPERIMENTS))

import common  # noqa: E402
from recipes import KNN, read_samples  # noqa: E402

from raygan import parzen, quality, refine  # noqa: E402
from raygan.algorithm import GANTrainer  # noqa: E402
from raygan.config import ExperimentConfig, load_config, replace  # noqa: E402
from raygan.data import load_dataset  # noqa: E402
from raygan.files import EXPERIMENT_FILE  # noqa: E402
from raygan.models import Generator, generate, load_generator, save_generator  # noqa: E402


def run_population(seed: int, out: Path, tune_flags: Sequence[str]) -> dict[str, Any]:
    """``python -m raygan.tune`` for one seed, as a user runs it; its wall time and best/summary.json."""
    name = f"pvs-pop-{seed}"
    command = [sys.executable, "-m", "raygan.tune", "--seed", str(seed), "--name", name, "--storage-path", str(out), *tune_flags]
    print("$", " ".join(command[1:]), flush=True)
    start, start_epoch = time.perf_counter(), time.time()
    # Ray starts its workers at niceness 15; the single run trains at this process's own. Both arms
    # get the same priority, so that other work on a shared machine weighs on them alike.
    env = {**os.environ, "RAY_worker_niceness": str(os.nice(0))}
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    wall = time.perf_counter() - start
    (out / f"{name}.log").write_text(done.stdout)
    if done.returncode != 0:
        raise SystemExit(f"raygan.tune exited with {done.returncode} for seed {seed}; see {out / f'{name}.log'}")
    run = out / name
    return {"run": str(run), "wall_s": wall, "summary": json.loads((run / "best" / "summary.json").read_text()),
            "curve": population_curve(run, start_epoch)}


def population_curve(run: Path, start_epoch: float) -> list[tuple[float, float]]:
    """(seconds since the command started, best validation LL any trial had reported by then)."""
    points = []
    for path in run.glob("*/result.json"):
        for line in path.read_text().splitlines():
            r = json.loads(line)
            ll = r.get("eval/parzen_valid_ll")
            if isinstance(ll, (int, float)) and math.isfinite(ll):
                points.append((r["timestamp"] - start_epoch, float(ll)))
    return _best_so_far(points)


def _best_so_far(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out, best = [], -math.inf
    for t, ll in sorted(points):
        best = max(best, ll)
        out.append((t, best))
    return out


def run_single(config: ExperimentConfig, data: Any, seed: int, budget_s: float, snapshot_s: float) -> dict[str, Any]:
    """The fixed recipe on every core for ``budget_s`` seconds; G at the end (its sampling copy) and timed snapshots of it."""
    threads = os.cpu_count() or 1
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        labels = torch.from_numpy(data.train_labels) if config.model.conditional else None
        trainer = GANTrainer(config.model, replace(config.train, seed=seed), torch.from_numpy(data.train), data.bounded, labels=labels)
        snapshots, start, next_snapshot = [], time.perf_counter(), snapshot_s
        while (elapsed := time.perf_counter() - start) < budget_s:
            trainer.run(25)
            if elapsed >= next_snapshot:
                snapshots.append((elapsed, copy.deepcopy(trainer.sample_generator.state_dict())))
                next_snapshot += snapshot_s
        wall = time.perf_counter() - start
    finally:
        torch.set_num_threads(before)
    g = trainer.sample_generator.eval()
    snapshots.append((wall, copy.deepcopy(g.state_dict())))
    return {"generator": g, "discriminator": trainer.discriminator.eval(), "iterations": trainer.iteration, "wall_s": wall,
            "threads": threads, "snapshots": snapshots}


def single_curve(generator: Generator, snapshots: list, data: Any, config: ExperimentConfig) -> list[tuple[float, float]]:
    """The snapshots' validation LL at the population's ranking protocol (eval.ranking_samples of eval.seed)."""
    g = copy.deepcopy(generator)
    points = []
    for t, state in snapshots:
        g.load_state_dict(state)
        samples = generate(g.eval(), config.eval.ranking_samples, seed=config.eval.seed)
        _, ll = parzen.validation_score(samples, data.valid, config.eval.sigmas, chunk_size=config.eval.chunk_size)
        points.append((t, ll))
    return _best_so_far(points)


def read_refined(generator_file: Path, methods: Sequence[str], data: Any, config: ExperimentConfig, model: Any,
                 knn: KNN) -> dict[str, Any]:
    """Each refined sampler of a G+D file, drawn as raygan.tune draws it (the run's refine settings,
    class by class where refine.by_class, eval.seed), read like the raw samples: {"read_<method>": ...}."""
    classes = refine.classes_for(model, data.valid, config.refine)
    out = {}
    for method in methods:
        r, _ = refine.sample_file(generator_file, data, config.eval.num_samples, method, config.refine, seed=config.eval.seed,
                                  classes=classes)
        out[f"read_{method}"] = {**read_samples(r.samples, data, config, model, knn), "acceptance": r.acceptance, "seconds": r.seconds}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    tune_flags = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=common.RESULTS_DIR / "population_vs_single")
    p.add_argument("--snapshot-s", type=float, default=30.0, help="seconds between the single run's snapshots")
    p.add_argument("--figure", type=Path, default=common.DOCS_DIR / "population_vs_single.png")
    p.add_argument("--arms", nargs="+", choices=["population", "single"], default=["population", "single"])
    p.add_argument("--append", action="store_true", help="keep the seeds already in OUT/pvs.json, run only the others")
    p.add_argument("--reread", action="store_true", help="train nothing: draw and read the refined samplers of the answers "
                   "OUT/pvs.json's seeds saved again, with raygan.refine as it is now, and rewrite their rows")
    args = p.parse_args(argv)
    if args.reread:
        return reread(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"$ python experiments/benchmarks/bench_population_vs_single.py {' '.join(sys.argv[1:])}")
    print(json.dumps(common.hardware()))

    results: dict[str, Any] = {"seeds": {}, "tune_flags": tune_flags}
    if args.append and (args.out / "pvs.json").is_file():
        results = json.loads((args.out / "pvs.json").read_text())
        if results.get("tune_flags") != tune_flags:
            raise SystemExit(f"--append: {args.out / 'pvs.json'} was run with tune flags {results.get('tune_flags')}, not {tune_flags}")
        for seed, row in results["seeds"].items():
            print_rows(int(seed), row)
    for seed in args.seeds:
        if str(seed) in results["seeds"]:
            continue
        row: dict[str, Any] = {}
        if "population" in args.arms:
            pop = run_population(seed, args.out, tune_flags)
            config = load_config(Path(pop["run"]) / EXPERIMENT_FILE)
            row["population"] = pop
        else:
            config = load_config(args.out / f"pvs-pop-{seed}" / EXPERIMENT_FILE)
            row["population"] = {"run": str(args.out / f"pvs-pop-{seed}")}
        data = load_dataset(config.data.name, config.data.root)
        model, knn = quality.load_or_train(data), KNN(data.train, data.train_labels)
        best = Path(row["population"]["run"]) / "best"
        n, s = config.eval.num_samples, config.eval.seed
        row["population"]["read"] = read_samples(generate(load_generator(best / "generator.pt"), n, seed=s), data, config, model, knn)
        summary = json.loads((best / "summary.json").read_text())
        scored = [m for m, r in (summary.get("refined") or {}).items() if "error" not in r]
        row["population"].update(read_refined(best / "generator.pt", scored, data, config, model, knn))
        if "single" in args.arms:
            budget = config.tune.time_budget_s
            single = run_single(config, data, seed, budget, args.snapshot_s)
            single_file = args.out / f"pvs-single-{seed}" / "generator.pt"  # to look at, or read again later
            single_file.parent.mkdir(exist_ok=True)
            save_generator(single_file, single["generator"], single["discriminator"])
            row["single"] = {"iterations": single["iterations"], "wall_s": single["wall_s"], "threads": single["threads"],
                             "generator": str(single_file),
                             "read": read_samples(generate(single["generator"], n, seed=s), data, config, model, knn),
                             "curve": single_curve(single["generator"], single["snapshots"], data, config),
                             **read_refined(single_file, config.refine.methods, data, config, model, knn)}
        results["seeds"][str(seed)] = row
        common.write_json(args.out / "pvs.json", results)
        print_rows(seed, row)
    print_medians(results)
    if "population" in args.arms and "single" in args.arms:
        plot(results, args.figure)
    return 0


def reread(out: Path) -> int:
    """``--reread``: each seed's two saved answers (the population's best/generator.pt, the single
    run's generator.pt), refined again with the run's refine settings (fields it predates at their
    defaults) and read like the raw samples; the raw reads and the curves are kept."""
    results = json.loads((out / "pvs.json").read_text())
    for seed, row in results["seeds"].items():
        config = load_config(Path(row["population"]["run"]) / EXPERIMENT_FILE)
        data = load_dataset(config.data.name, config.data.root)
        model, knn = quality.load_or_train(data), KNN(data.train, data.train_labels)
        files = {"population": Path(row["population"]["run"]) / "best" / "generator.pt"}
        if "single" in row:
            files["single"] = Path(row["single"]["generator"])
        for arm, file in files.items():
            row[arm].update(read_refined(file, config.refine.methods, data, config, model, knn))
        common.write_json(out / "pvs.json", results)
        print_rows(int(seed), row)
    print_medians(results)
    return 0


ARMS = [(arm, key) for arm in ("population", "single") for key in ("read", "read_drs", "read_mh")]
COLUMNS = ("parzen_test_ll", "parzen_test_se", "fd", "classes", "tvd", "knn_classes", "knn_tvd", "copy_ratio")


def print_rows(seed: int, row: dict[str, Any]) -> None:
    print(f"| seed | arm | Parzen test LL ± SE | FD | classes | TVD | 3-NN classes | 3-NN TVD | copy ratio | wall s |")
    for arm, key in ARMS:
        r = row.get(arm, {}).get(key)
        if r is None:
            continue
        wall = row[arm].get("wall_s") if key == "read" else None
        print(f"| {seed} | {arm}{key[4:].replace('_', ', ')} | {r['parzen_test_ll']:.1f} ± {r['parzen_test_se']:.1f} | {r['fd']:.1f} | {r['classes']} | "
              f"{r['tvd']:.3f} | {r['knn_classes']} | {r['knn_tvd']:.3f} | {r.get('copy_ratio', math.nan):.2f} | "
              f"{'' if wall is None else f'{wall:.0f}'} |", flush=True)


def print_medians(results: dict[str, Any]) -> None:
    print("medians over the seeds:")
    for arm, key in ARMS:
        reads = [row[arm][key] for row in results["seeds"].values() if key in row.get(arm, {})]
        if reads:
            cells = ", ".join(f"{c} {statistics.median(r[c] for r in reads):.3f}" for c in COLUMNS if all(c in r for r in reads))
            print(f"  {arm} {key}: {cells}")


def plot(results: dict[str, Any], out: Path) -> None:
    plt = common.require_matplotlib()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for seed, row in results["seeds"].items():
        for arm, colour in (("population", "tab:blue"), ("single", "tab:orange")):
            curve = row.get(arm, {}).get("curve") or []
            if curve:
                t, ll = zip(*curve)
                ax.step(t, ll, where="post", color=colour, alpha=0.8, label=f"{arm}, seeds {', '.join(sorted(results['seeds']))}" if seed == min(results["seeds"]) else None)
    ax.set_xlabel("wall seconds since the start")
    ax.set_ylabel("best Parzen validation LL so far (nats)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="lower right")
    ax.set_title("The population against one run given the whole machine")
    common.save_figure(fig, out)


if __name__ == "__main__":
    raise SystemExit(main())
