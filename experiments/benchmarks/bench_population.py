"""Population throughput and memory: Tune against the bare core loop, 2 trials against 1.

    python experiments/benchmarks/bench_population.py [--steps 12] [--iterations-per-step 40]

Prints, from one run:
  1. Tune's overhead: Algorithm 1 iterations/s of one trial inside Tune (driver-side wall
     clock between its first and last result, so Tune's scheduling, result handling and
     checkpointing are all counted) against GANTrainer.run on the same data and threads.
  2. Scaling: aggregate iterations/s of 2 trials on 2 cores against 1 trial on 1 core.
  3. Memory: the proportional set size (PSS) of N trial actors that read the training set
     zero-copy from the object store, against N trials that each hold a private copy.
Evaluation is set rare (every 1,000 steps; the first step's evaluation falls before the timed
window) so that the figures are about training. The paper's MNIST models, batch 100.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch


def build_config(args: argparse.Namespace, storage: str, name: str, trials: int, cpus: float):
    from raygan.config import EvalConfig, ExperimentConfig, SearchConfig, TuneConfig

    return ExperimentConfig(
        eval=EvalConfig(every=1000, ranking_samples=500, num_samples=500),
        # Pinned hyperparameters: every trial does the same work per iteration (k = 1).
        search=SearchConfig(k=(1,), momentum=(0.5, 0.5), lr_d=(0.1, 0.1), lr_g=(0.1, 0.1), prior=("uniform",), g_loss=("non-saturating",)),
        tune=TuneConfig(
            num_trials=trials,
            scheduler="random",
            cpus_per_trial=cpus,
            gpus_per_trial=0.0,
            time_budget_s=None,
            max_iterations=args.steps,
            iterations_per_step=args.iterations_per_step,
            checkpoint_every=4,
            storage_path=storage,
            name=name,
        ),
    )


class ResultClock:
    """A Tune callback that timestamps every result on the driver, per trial."""

    def __init__(self):
        from ray.tune import Callback

        clock = self

        class _Callback(Callback):
            def on_trial_result(self, iteration, trials, trial, result, **info):
                clock.times.setdefault(trial.trial_id, []).append(time.perf_counter())
                clock.pids[trial.trial_id] = result.get("pid")
                clock.iterations_per_step = result.get("algorithm/iteration", 0) // max(result["training_iteration"], 1)
                if result["training_iteration"] == clock.sample_at:
                    clock.memory[trial.trial_id] = pss_mb(result["pid"])

        self.callback = _Callback()
        self.times: dict[str, list[float]] = {}
        self.pids: dict[str, int] = {}
        self.memory: dict[str, float] = {}
        self.sample_at = 2
        self.iterations_per_step = 0


def pss_mb(pid: int | None) -> float:
    """Proportional set size of a process in MB (shared pages divided among their users)."""
    if pid is None:
        return float("nan")
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_tune(args, dataset, trials: int, cpus: float) -> ResultClock:
    """One population through raygan's own entry point; returns the driver-side result clock."""
    from raygan.tune import run_experiment

    clock = ResultClock()
    with tempfile.TemporaryDirectory() as storage:
        run_experiment(build_config(args, storage, "bench", trials, cpus), dataset=dataset, verbose=0, callbacks=[clock.callback])
    return clock


class PrivateCopyTrainable:
    """Built lazily (needs Ray imported): GANTrainable that copies the training set into its own memory."""

    @staticmethod
    def make():
        from raygan.trainable import GANTrainable

        class _Copying(GANTrainable):
            def setup(self, config, data):
                super().setup(config, dict(data, train=np.array(data["train"], copy=True)))

        return _Copying


def run_memory(args, dataset, trials: int, private_copy: bool) -> dict[str, float]:
    """PSS of each trial actor after its second step, with the data shared or copied per trial."""
    import ray
    from ray import tune

    from raygan.evaluator import evaluator_name, get_or_create_evaluator
    from raygan.search import param_space
    from raygan.trainable import GANTrainable

    clock = ResultClock()
    with tempfile.TemporaryDirectory() as storage:
        config = build_config(args, storage, "memory", trials, 0.5)
        evaluator = get_or_create_evaluator(dataset.valid, dataset.test, None, config.eval, name=evaluator_name(config.tune.name, config.tune.storage_path))
        cls = PrivateCopyTrainable.make() if private_copy else GANTrainable
        trainable = tune.with_resources(
            tune.with_parameters(cls, data={"train": dataset.train, "bounded": dataset.bounded}), {"cpu": 0.5, "gpu": 0}
        )
        tune.Tuner(
            trainable,
            param_space=param_space(config),
            tune_config=tune.TuneConfig(num_samples=trials),
            run_config=tune.RunConfig(storage_path=storage, name="memory", stop={"training_iteration": 3}, callbacks=[clock.callback], verbose=0),
        ).fit()
        ray.kill(evaluator)  # the evaluator had to stay alive while the trials ran
    return clock.memory


def tune_throughput(clock: ResultClock, iterations_per_step: int) -> float:
    """Aggregate iterations/s over the window where every trial was running (first to last result)."""
    rates = []
    for times in clock.times.values():
        # From each trial's first result (setup and the first evaluation are excluded) to its last.
        rates.append((len(times) - 1) * iterations_per_step / (times[-1] - times[0]))
    return sum(rates)


def bare_throughput(dataset, args, threads: int) -> float:
    from raygan.algorithm import GANTrainer
    from raygan.config import ModelConfig, TrainConfig

    torch.set_num_threads(threads)
    trainer = GANTrainer(ModelConfig(), TrainConfig(), torch.from_numpy(dataset.train))
    trainer.run(args.iterations_per_step)  # warm-up, like the first (untimed) Tune step
    start = time.perf_counter()
    for _ in range(args.steps - 1):
        trainer.run(args.iterations_per_step)
    return (args.steps - 1) * args.iterations_per_step / (time.perf_counter() - start)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=12, help="Tune steps per trial")
    p.add_argument("--iterations-per-step", type=int, default=40, help="Algorithm 1 iterations per step (40 = one epoch of mnist5k)")
    p.add_argument("--repeats", type=int, default=2, help="alternating repeats of the overhead comparison")
    p.add_argument("--memory-dataset", default="fashion-mnist", help="a large data set for the memory comparison")
    p.add_argument("--memory-trials", type=int, default=3)
    args = p.parse_args(argv)
    print("command: python experiments/benchmarks/bench_population.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}")

    import ray

    from raygan.data import load_dataset

    mnist = load_dataset("mnist5k")
    ray.init(num_cpus=(os.cpu_count() or 1) + 1, include_dashboard=False, log_to_driver=False)

    print(f"\n1. Tune overhead, one trial on 1 thread, {args.steps} steps x {args.iterations_per_step} iterations (median of {args.repeats}, alternating)")
    bare, inside = [], []
    for _ in range(args.repeats):
        bare.append(bare_throughput(mnist, args, threads=1))
        inside.append(tune_throughput(run_tune(args, mnist, trials=1, cpus=1), args.iterations_per_step))
    b, t = statistics.median(bare), statistics.median(inside)
    print(f"   bare GANTrainer.run      {b:7.2f} it/s   {['%.2f' % x for x in bare]}")
    print(f"   one trial inside Tune    {t:7.2f} it/s   {['%.2f' % x for x in inside]}")
    print(f"   Tune's overhead          {100 * (b - t) / b:6.1f} %   (goal <= 3 %)")

    print("\n2. Scaling on this machine's cores")
    one = tune_throughput(run_tune(args, mnist, trials=1, cpus=1), args.iterations_per_step)
    two = tune_throughput(run_tune(args, mnist, trials=2, cpus=1), args.iterations_per_step)
    print(f"   1 trial  x 1 CPU         {one:7.2f} it/s aggregate")
    print(f"   2 trials x 1 CPU         {two:7.2f} it/s aggregate   speed-up {two / one:.2f}x (goal >= 1.9x)")

    big = load_dataset(args.memory_dataset)
    size_mb = big.train.nbytes / 2**20
    n = args.memory_trials
    print(f"\n3. Memory of {n} trials on {args.memory_dataset} (training set {size_mb:.0f} MB), PSS after step 2")
    # Fewer, shorter steps: only the resident memory matters here.
    mem_args = argparse.Namespace(**{**vars(args), "steps": 3, "iterations_per_step": 5})
    shared = run_memory(mem_args, big, n, private_copy=False)
    copied = run_memory(mem_args, big, n, private_copy=True)
    s, c = sum(shared.values()), sum(copied.values())
    print(f"   object store, zero-copy  {s:7.0f} MB total PSS of {len(shared)} trial actors")
    print(f"   a private copy each      {c:7.0f} MB total PSS of {len(copied)} trial actors")
    print(f"   saved                    {c - s:7.0f} MB (~{(c - s) / size_mb:.1f} copies of the training set)")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
