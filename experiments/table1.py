"""Table 1 of Goodfellow et al. (2014), measured with raygan, under an explicit compute budget.

For each data set, three rows, each a Parzen-window test log-likelihood ± standard error with
its sigma chosen on validation data:

(a) ``default``: the paper's hyperparameters (experiments/mnist_paper.yaml), one run of
    ``iterations`` Algorithm 1 iterations; the generator kept is the one with the best
    validation LL along the run (as the population keeps its best checkpoint); the run's last
    iterate is scored too (a'), since Parzen LL often prefers an early, blurry generator.
(b) ``population``: the best trial of a PBT population of ``trials`` G/D pairs run through
    ``raygan.tune.run_experiment``, under the SAME total compute: each trial gets
    ``iterations / trials`` iterations. k is pinned to 1 (an iteration then costs the same in
    every trial, so equal iterations are equal compute); momentum, the learning rates, the noise
    prior and the G loss are searched.
(c) ``reference``: real training images as the Parzen centres (raygan.parzen.reference): what
    a generator that reproduced the training data would score under the same protocol.

Compute is matched in Algorithm 1 iterations (one D-step and one G-step on minibatches of 100)
and measured in CPU-seconds: this process's own time for (a) and (c); for (b), every process
Ray starts (trials, the evaluator, Ray itself), sampled once a second. Every run uses one torch
thread per G/D pair. Results go to experiments/results/table1/<dataset>.json; the markdown
table to experiments/results/table1/table1.md.

    python experiments/table1.py --dataset mnist5k --iterations 2400
    python experiments/table1.py --dataset fashion-mnist --iterations 2400
    python experiments/table1.py --dataset mnist --data-root DIR --iterations 2400
    python experiments/table1.py --render          # the table from every saved result
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import common
import torch

from raygan import parzen
from raygan.config import replace
from raygan.data import Dataset, load_dataset

TABLE_DIR = common.RESULTS_DIR / "table1"
ROW_NAMES = {
    "default": "(a) paper's hyperparameters, one run",
    "population": "(b) best of a PBT population, same compute",
    "reference": "(c) held-out-data reference (training images as centres)",
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Table 1: Parzen test LL of the paper's setting, a population's best and real data.")
    p.add_argument("--dataset", default="mnist5k", help="mnist5k, fashion-mnist or mnist (default mnist5k)")
    p.add_argument("--data-root", help="directory holding the data set's idx files (mnist, fashion-mnist)")
    p.add_argument("--iterations", type=int, default=2400, help="total Algorithm 1 iterations per row: the compute budget")
    p.add_argument("--trials", type=int, default=4, help="population size; each trial gets iterations/trials")
    p.add_argument("--steps", type=int, default=8, help="Tune steps per trial (PBT acts between steps; scored after each)")
    p.add_argument("--perturbation-interval", type=int, default=2, help="PBT exploits/explores every this many steps")
    p.add_argument("--single-eval-every", type=int, default=None, help="score the default run every this many iterations (default iterations/16)")
    p.add_argument("--num-samples", type=int, default=10_000, help="generated samples per Parzen window (the paper: 10,000)")
    p.add_argument("--rank-valid", type=int, default=2000,
                   help="validation images used for ranking during training (0: all); the table's sigma uses all of them")
    p.add_argument("--rank-samples", type=int, default=0,
                   help="generated samples per ranking score during training (0: --num-samples); the table always uses --num-samples")
    p.add_argument("--g-hidden", type=int, nargs="+", help="generator hidden sizes (default the paper's 1200 1200)")
    p.add_argument("--d-hidden", type=int, nargs="+", help="discriminator maxout sizes (default the paper's 240 240)")
    p.add_argument("--subset", type=int, default=0, help="use only this many images per split (tests; 0: all)")
    p.add_argument("--skip", nargs="*", default=[], choices=["default", "population", "reference"], help="rows not to compute")
    p.add_argument("--seed", type=int, default=0, help="the default run's seed and the population's search seed")
    p.add_argument("--out-dir", type=Path, default=TABLE_DIR, help="where the JSON results and table go")
    p.add_argument("--verbose", type=int, default=1, help="Tune's verbosity (0 silent)")
    p.add_argument("--render", action="store_true", help="only print the table from the saved results")
    return p.parse_args(argv)


def _subset(ds: Dataset, n: int) -> Dataset:
    if n <= 0:
        return ds
    return Dataset(ds.name, ds.train[:n], ds.valid[:n], ds.test[:n], ds.bounded)


def configs(args: argparse.Namespace) -> tuple[Any, Any, int]:
    """The default run's config, the population's config, and iterations per Tune step."""
    model = {k: tuple(v) for k, v in (("g_hidden", args.g_hidden), ("d_hidden", args.d_hidden)) if v}
    base = common.paper_config(data={"name": args.dataset, "root": args.data_root}, model=model,
                               train={"seed": args.seed},
                               eval={"num_samples": args.num_samples, "ranking_samples": args.rank_samples or args.num_samples, "every": 1})
    per_step = args.iterations // (args.trials * args.steps)
    if per_step < 1:
        raise SystemExit(f"--iterations {args.iterations} is too few for {args.trials} trials x {args.steps} steps")
    search = replace(base.search, k=(1,), momentum=(0.3, 0.9), lr_d=(0.02, 0.3), lr_g=(0.02, 0.3),
                     prior=("uniform", "gaussian", "truncated-normal", "hypersphere"), g_loss=("non-saturating", "minimax"),
                     perturbation_interval=args.perturbation_interval)
    tune = replace(base.tune, num_trials=args.trials, scheduler="pbt", cpus_per_trial=0.5, time_budget_s=None,
                   max_iterations=args.steps, iterations_per_step=per_step, checkpoint_every=1, seed=args.seed,
                   storage_path=str(Path(args.out_dir).resolve() / "ray"), name=f"table1-{args.dataset}")
    return base, replace(base, search=search, tune=tune), per_step


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Compute the rows for one data set and save them; returns the saved record."""
    torch.set_num_threads(1)  # one thread per G/D pair everywhere: CPU-seconds comparable across rows
    ds = _subset(load_dataset(args.dataset, args.data_root), args.subset)
    base, pop_config, per_step = configs(args)
    rank_valid = ds.valid if args.rank_valid <= 0 else ds.valid[: args.rank_valid]
    sigmas = base.eval.sigmas
    out_dir = Path(args.out_dir)
    record: dict[str, Any] = {
        "dataset": args.dataset,
        "splits": {"train": len(ds.train), "valid": len(ds.valid), "test": len(ds.test), "rank_valid": len(rank_valid)},
        "command": "python experiments/table1.py " + " ".join(shlex.quote(a) for a in args.argv),
        "hardware": common.hardware(),
        "budget": {"iterations": args.iterations, "trials": args.trials, "steps": args.steps, "iterations_per_step": per_step,
                   "population_iterations": args.trials * args.steps * per_step, "num_samples": args.num_samples},
        "rank_samples": args.rank_samples or args.num_samples,
        "rows": {},
    }
    saved = out_dir / f"{args.dataset}.json"
    if args.skip and saved.is_file():  # rows computed earlier under the same budget are kept
        previous = common.read_json(saved)
        if previous.get("budget") == record["budget"]:
            record["rows"] = {k: v for k, v in previous["rows"].items() if k in args.skip}
            record["earlier_command"] = previous.get("command")
    print(f"Table 1 on {ds}: budget {args.iterations} Algorithm 1 iterations per row "
          f"({args.trials} trials x {args.steps} steps x {per_step} for the population)", flush=True)

    if "reference" not in args.skip:
        compute, start = common.Compute(), time.perf_counter()
        with common.cpu_timer(compute, "eval"):
            r = parzen.reference(ds.train, ds.valid, ds.test, args.num_samples, sigmas)
        compute.wall_s = time.perf_counter() - start
        record["rows"]["reference"] = {"parzen_valid_ll": r.valid_ll, "parzen_test_ll": r.test_ll, "parzen_test_se": r.test_se,
                                       "sigma": r.sigma, "centres": min(args.num_samples, len(ds.train)), "iterations": 0,
                                       "compute": compute.as_dict()}
        print(f"(c) reference: {r.test_ll:.1f} ± {r.test_se:.1f} (sigma {r.sigma:.3f})", flush=True)

    if "default" not in args.skip:
        every = args.single_eval_every or max(1, args.iterations // 16)
        print(f"(a) default run: {args.iterations} iterations, scored every {every}", flush=True)
        single = common.train_single(base, ds.train, rank_valid, ds.bounded, args.iterations, every, args.rank_samples or args.num_samples)
        with common.cpu_timer(single.compute, "final_eval"):
            scores = common.parzen_row(single.generator, ds.valid, ds.test, args.num_samples, sigmas)
        with common.cpu_timer(single.compute, "final_eval"):
            last = common.parzen_row(single.final_generator, ds.valid, ds.test, args.num_samples, sigmas)
        generator_path = common.save_generator_to(out_dir / args.dataset / "default_generator.pt", single.generator)
        common.save_generator_to(out_dir / args.dataset / "default_final_generator.pt", single.final_generator)
        record["rows"]["default"] = {**scores, "iterations": single.curve[-1]["iteration"] if single.curve else 0,
                                     "last_iterate": last,
                                     "best_iteration": single.best_iteration, "compute": single.compute.as_dict(),
                                     "generator": generator_path, "curve": single.curve,
                                     "config": {"k": base.train.k, "lr_d": base.train.lr_d, "lr_g": base.train.lr_g,
                                                "momentum": base.train.momentum, "prior": base.model.prior, "g_loss": base.train.g_loss}}
        print(f"(a) default, best on validation (iteration {single.best_iteration}): {scores['parzen_test_ll']:.1f} ± "
              f"{scores['parzen_test_se']:.1f} (sigma {scores['sigma']:.3f}); last iterate: {last['parzen_test_ll']:.1f} ± "
              f"{last['parzen_test_se']:.1f}; {single.compute.total_cpu_s:.0f} CPU-s", flush=True)
        common.write_json(out_dir / f"{args.dataset}.json", record)

    if "population" not in args.skip:
        ranked = Dataset(ds.name, ds.train, rank_valid, ds.test, ds.bounded)
        pop = common.run_population(pop_config, ranked, verbose=args.verbose)
        best_path = Path(pop.report.best_dir) / "generator.pt"
        from raygan.models import load_generator

        generator = load_generator(best_path)
        compute = pop.compute
        with common.cpu_timer(compute, "final_eval"):
            scores = common.parzen_row(generator, ds.valid, ds.test, args.num_samples, sigmas)
        best_cfg = pop.report.summary.get("config", {})
        record["rows"]["population"] = {**scores, "iterations": args.trials * args.steps * per_step,
                                        "best_trial": pop.report.summary.get("trial_id"),
                                        "best_step": pop.report.summary.get("training_iteration"),
                                        "compute": compute.as_dict(), "generator": str(best_path),
                                        "config": {k: best_cfg.get(k) for k in ("k", "lr_d", "lr_g", "momentum", "prior", "g_loss")},
                                        "run_experiment_summary": {k: v for k, v in pop.report.summary.items() if k != "config"},
                                        "curves": pop.curves, "exploits": pop.exploits, "experiment_path": pop.report.experiment_path}
        print(f"(b) population best: {scores['parzen_test_ll']:.1f} ± {scores['parzen_test_se']:.1f} (sigma {scores['sigma']:.3f}); "
              f"{compute.total_cpu_s:.0f} CPU-s", flush=True)
    record["hardware_after"] = common.hardware()
    common.write_json(out_dir / f"{args.dataset}.json", record)
    return record


def _seconds(x: float) -> str:
    return f"{x:.0f}" if x >= 10 else f"{x:.1f}"


def _cpu_cell(row: dict[str, Any]) -> str:
    c = row["compute"]["cpu_s"]
    train = c.get("train", 0.0) + c.get("trials", 0.0)
    other = row["compute"]["total_cpu_s"] - train
    if train == 0:
        return _seconds(row["compute"]["total_cpu_s"])
    return f"{_seconds(row['compute']['total_cpu_s'])} ({_seconds(train)} + {_seconds(other)})"


def render(records: list[dict[str, Any]]) -> str:
    """Table 1 as markdown: one block of three rows per data set."""
    lines = [
        "| data set (train/valid/test) | row | Parzen test LL ± SE (nats) | sigma | valid LL | Alg. 1 iterations | CPU-s total (training + the rest) | wall s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for rec in records:
        s = rec["splits"]
        name = f"{rec['dataset']} ({s['train']}/{s['valid']}/{s['test']})"
        for key in ("default", "population", "reference"):
            row = rec["rows"].get(key)
            if row is None:
                continue
            iters = "—" if key == "reference" else f"{row['iterations']:,}"
            if key == "population":
                iters = f"{rec['budget']['trials']} x {rec['budget']['steps'] * rec['budget']['iterations_per_step']:,}"
            chosen = f" (best on validation: iteration {row['best_iteration']:,})" if key == "default" else ""
            if key == "population":
                chosen = f" (trial {row['best_trial']}, step {row['best_step']})"
            lines.append(
                f"| {name} | {ROW_NAMES[key]}{chosen} | {row['parzen_test_ll']:.1f} ± {row['parzen_test_se']:.1f} | {row['sigma']:.3f} "
                f"| {row['parzen_valid_ll']:.1f} | {iters} | {_cpu_cell(row)} | {_seconds(row['compute']['wall_s'])} |"
            )
            last = row.get("last_iterate")
            if last is not None:
                lines.append(
                    f"| {name} | (a') the same run, last iterate | {last['parzen_test_ll']:.1f} ± {last['parzen_test_se']:.1f} "
                    f"| {last['sigma']:.3f} | {last['parzen_valid_ll']:.1f} | {row['iterations']:,} | (the same run) | |"
                )
    return "\n".join(lines)


def load_records(out_dir: Path = TABLE_DIR) -> list[dict[str, Any]]:
    """Every saved data set's record, in a fixed order (mnist5k, fashion-mnist, mnist, others)."""
    order = {"mnist5k": 0, "fashion-mnist": 1, "mnist": 2}
    recs = [common.read_json(p) for p in sorted(Path(out_dir).glob("*.json"))]
    return sorted(recs, key=lambda r: (order.get(r["dataset"], 9), r["dataset"]))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: compute one data set's rows (or, with --render, only print the table)."""
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if not args.render:
        run(args)
    table = render(load_records(args.out_dir))
    (Path(args.out_dir) / "table1.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
