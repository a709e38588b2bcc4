"""Population throughput and memory: Tune against the bare core loop, 2 trials against 1.

    python experiments/benchmarks/bench_population.py [--steps 8] [--iterations-per-step 250]

Prints, from one run:
  1. Tune's overhead: Algorithm 1 iterations/s of one trial inside Tune (driver-side wall
     clock between its first and last result, so Tune's scheduling, result handling and
     checkpointing are all counted, less the seconds the trial reports it spent evaluating)
     against GANTrainer.run on the same data and threads; and the same per CPU second (the
     trial process's CPU time over that window, then with the driver's added, against the bare
     loop's), which other jobs sharing the cores move far less than the wall clock.
  2. Scaling: aggregate iterations/s of 2 trials on 2 cores against 1 trial on 1 core.
  3. Memory: the proportional set size (PSS) of N trial actors that read the training set
     zero-copy from the object store, against N trials that each hold a private copy (skipped,
     with a sentence, where the large data set is not installed).
Today's default run: the conv pair trained by Adam at minibatch 32 (raygan.config's defaults),
250 Algorithm 1 iterations per Tune step and a checkpoint every 2 steps (tune's defaults), every
hyperparameter pinned to its default so that every trial does the same work. Evaluation is set
rare (every 1,000 steps; the first step's falls before the timed window, the last step's is
subtracted as the trial reports it), so that the figures are about training and Tune.
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

from raygan import keys
from raygan.config import TuneConfig, replace


def build_config(args: argparse.Namespace, storage: str, name: str, trials: int, cpus: float):
    from raygan.config import EvalConfig, ExperimentConfig, MixtureConfig, ModelConfig, SearchConfig, TrainConfig, TuneConfig

    base = TrainConfig()  # today's default learning rule, pinned: every trial does the same work per iteration
    return ExperimentConfig(
        eval=EvalConfig(every=1000, ranking_samples=500, num_samples=500),
        search=SearchConfig(k=(base.k,), momentum=(base.momentum, base.momentum), lr_d=(base.lr_d, base.lr_d),
                            lr_g=(base.lr_g, base.lr_g), prior=(ModelConfig().prior,), g_loss=(base.g_loss,)),
        tune=TuneConfig(
            num_trials=trials,
            scheduler="random",
            reallocate="none",  # a trial keeps the CPUs it asked for: a restart with more would be timed too
            cpus_per_trial=cpus,
            gpus_per_trial=0.0,
            time_budget_s=None,
            max_iterations=args.steps,
            iterations_per_step=args.iterations_per_step,
            storage_path=storage,
            name=name,
        ),
        mixture=MixtureConfig(members=1),
    )


class ResultClock:
    """A Tune callback that timestamps every result on the driver, per trial."""

    def __init__(self):
        from ray.tune import Callback

        clock = self

        class _Callback(Callback):
            def on_trial_result(self, iteration, trials, trial, result, **info):
                clock.times.setdefault(trial.trial_id, []).append(time.perf_counter())
                clock.cpu.setdefault(trial.trial_id, []).append((process_cpu_s(result.get("pid")), time.process_time()))
                per_step = result.get(keys.ALGORITHM_ITERATION, 0) // max(result[keys.TRAINING_ITERATION], 1)
                clock.training.setdefault(trial.trial_id, []).append(
                    (per_step / result[keys.ITERATIONS_PER_S], per_step / result[keys.ITERATIONS_PER_CPU_S]))
                clock.eval_s.setdefault(trial.trial_id, []).append(result.get(keys.EVAL_SECONDS, 0.0))
                clock.pids[trial.trial_id] = result.get("pid")
                clock.iterations_per_step = result.get(keys.ALGORITHM_ITERATION, 0) // max(result[keys.TRAINING_ITERATION], 1)
                if result[keys.TRAINING_ITERATION] == clock.sample_at:
                    clock.memory[trial.trial_id] = pss_mb(result["pid"])

        self.callback = _Callback()
        self.times: dict[str, list[float]] = {}
        self.eval_s: dict[str, list[float]] = {}  # what each step reports it spent evaluating
        self.cpu: dict[str, list[tuple[float, float]]] = {}  # (the trial's, the driver's) CPU seconds at each result
        self.training: dict[str, list[tuple[float, float]]] = {}  # each step's (wall, CPU) seconds in GANTrainer.run
        self.pids: dict[str, int] = {}
        self.memory: dict[str, float] = {}
        self.sample_at = 2
        self.iterations_per_step = 0


def process_cpu_s(pid: int | None) -> float:
    """User plus system CPU seconds of a process so far (all its threads)."""
    if pid is None:
        return float("nan")
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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

    from raygan.data import DataSource
    from raygan.evaluator import evaluator_name, start_evaluators
    from raygan.search import param_space
    from raygan.trainable import GANTrainable

    clock = ResultClock()
    with tempfile.TemporaryDirectory() as storage:
        config = build_config(args, storage, "memory", trials, 0.5)
        source = DataSource(replace(config.data, name=args.memory_dataset, root=args.memory_data_root))
        evaluators = start_evaluators(source, config.eval, name=evaluator_name(config.tune.name, config.tune.storage_path))
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
        evaluators.kill()  # the evaluators had to stay alive while the trials ran
    return clock.memory


def tune_throughput(clock: ResultClock, iterations_per_step: int) -> float:
    """Aggregate iterations/s over the window where every trial was running (first to last result),
    less the seconds the trials report evaluating in it (raygan's scoring, not Tune's work)."""
    rates = []
    for trial, times in clock.times.items():
        # From each trial's first result (setup and the first evaluation are excluded) to its last.
        evaluating = sum(clock.eval_s[trial][1:])
        rates.append((len(times) - 1) * iterations_per_step / (times[-1] - times[0] - evaluating))
    return sum(rates)


def tune_cpu_throughput(clock: ResultClock, iterations_per_step: int) -> tuple[float, float]:
    """One trial's iterations per CPU second over the same window: its own process's CPU time,
    then with the driver's CPU time added."""
    ((trial, cpu),) = clock.cpu.items()
    iterations = (len(cpu) - 1) * iterations_per_step
    own = cpu[-1][0] - cpu[0][0]
    return iterations / own, iterations / (own + cpu[-1][1] - cpu[0][1])


def outside_training(clock: ResultClock) -> tuple[float, float, float]:
    """From one run of one trial, the share of the window between its first and last result not
    spent in GANTrainer.run: of the wall clock (less its evaluation), of the trial process's CPU
    time, and of the trial's and the driver's CPU time together. Both sides of each ratio are
    measured in the same steps, so other jobs on the machine move them alike."""
    ((trial, times),) = clock.times.items()
    training, cpu = clock.training[trial][1:], clock.cpu[trial]
    wall = times[-1] - times[0] - sum(clock.eval_s[trial][1:])
    own, driver = cpu[-1][0] - cpu[0][0], cpu[-1][1] - cpu[0][1]
    train_wall, train_cpu = sum(w for w, _ in training), sum(c for _, c in training)
    return 1 - train_wall / wall, 1 - train_cpu / own, 1 - train_cpu / (own + driver)


def bare_throughput(dataset, args, threads: int) -> tuple[float, float]:
    """GANTrainer.run's iterations per wall second and per CPU second of this process."""
    from raygan.algorithm import GANTrainer
    from raygan.config import ModelConfig, TrainConfig

    torch.set_num_threads(threads)
    trainer = GANTrainer(ModelConfig(), TrainConfig(), torch.from_numpy(dataset.train))
    trainer.run(args.iterations_per_step)  # warm-up, like the first (untimed) Tune step
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.steps - 1):
        trainer.run(args.iterations_per_step)
    iterations = (args.steps - 1) * args.iterations_per_step
    return iterations / (time.perf_counter() - start), iterations / (time.process_time() - cpu)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8, help="Tune steps per trial")
    p.add_argument("--iterations-per-step", type=int, default=TuneConfig().iterations_per_step,
                   help="Algorithm 1 iterations per step (default: tune.iterations_per_step's)")
    p.add_argument("--repeats", type=int, default=2, help="alternating repeats of the overhead comparison")
    p.add_argument("--memory-dataset", default="fashion-mnist", help="a large data set for the memory comparison")
    p.add_argument("--memory-data-root", default=None, help="where its files are (default: its usual place)")
    p.add_argument("--memory-trials", type=int, default=3)
    p.add_argument("--sections", default="1,2,3", help="which of the three measurements to run")
    args = p.parse_args(argv)
    sections = set(args.sections.split(","))
    if not sections <= {"1", "2", "3"}:
        p.error(f"--sections takes numbers among 1, 2 and 3, comma-separated, not {args.sections!r}")
    print("command: python experiments/benchmarks/bench_population.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}")

    import ray

    from raygan.data import load_dataset

    mnist = load_dataset("mnist5k")
    ray.init(num_cpus=(os.cpu_count() or 1) + 1, include_dashboard=False, log_to_driver=False)
    try:
        if "1" in sections:
            overhead(args, mnist)
        if "2" in sections:
            scaling(args, mnist)
        if "3" in sections:
            memory(args)
    finally:
        ray.shutdown()
    return 0


def overhead(args: argparse.Namespace, mnist) -> None:
    """Section 1: Tune's overhead on one trial."""
    print(f"\n1. Tune overhead, one trial on 1 thread, {args.steps} steps x {args.iterations_per_step} iterations (median of {args.repeats}, alternating)")
    bare, inside, bare_cpu, inside_cpu, with_driver, outside = [], [], [], [], [], []
    for _ in range(args.repeats):
        wall, cpu = bare_throughput(mnist, args, threads=1)
        bare.append(wall)
        bare_cpu.append(cpu)
        clock = run_tune(args, mnist, trials=1, cpus=1)
        inside.append(tune_throughput(clock, args.iterations_per_step))
        own, total = tune_cpu_throughput(clock, args.iterations_per_step)
        inside_cpu.append(own)
        with_driver.append(total)
        outside.append(outside_training(clock))
    b, t = statistics.median(bare), statistics.median(inside)
    bc, tc, td = statistics.median(bare_cpu), statistics.median(inside_cpu), statistics.median(with_driver)
    print(f"   bare GANTrainer.run      {b:7.2f} it/s       {['%.2f' % x for x in bare]}")
    print(f"   one trial inside Tune    {t:7.2f} it/s       {['%.2f' % x for x in inside]}")
    print(f"   Tune's overhead          {100 * (b - t) / b:6.1f} %          (goal <= 3 %)")
    print(f"   bare, per CPU second     {bc:7.2f} it/CPU s   {['%.2f' % x for x in bare_cpu]}")
    print(f"   the trial's process      {tc:7.2f} it/CPU s   {['%.2f' % x for x in inside_cpu]}   overhead {100 * (bc - tc) / bc:.1f} %")
    print(f"   and the driver's         {td:7.2f} it/CPU s   {['%.2f' % x for x in with_driver]}   overhead {100 * (bc - td) / bc:.1f} %")
    shares = ["/".join(f"{100 * x:.1f}" for x in run) for run in outside]
    medians = [statistics.median(run[i] for run in outside) for i in range(3)]
    print("   in the same run, the share of the trial's time not spent in GANTrainer.run (wall / its CPU / with the driver's CPU):")
    print(f"                            {100 * medians[0]:.1f} / {100 * medians[1]:.1f} / {100 * medians[2]:.1f} %   {shares}   (goal <= 3 %)")
    print(f"   load average now {os.getloadavg()[0]:.1f} (other jobs share these cores: the wall clock moves with them)")


def scaling(args: argparse.Namespace, mnist) -> None:
    """Section 2: two trials on two cores against one."""
    print("\n2. Scaling on this machine's cores")
    one = tune_throughput(run_tune(args, mnist, trials=1, cpus=1), args.iterations_per_step)
    two = tune_throughput(run_tune(args, mnist, trials=2, cpus=1), args.iterations_per_step)
    print(f"   1 trial  x 1 CPU         {one:7.2f} it/s aggregate")
    print(f"   2 trials x 1 CPU         {two:7.2f} it/s aggregate   speed-up {two / one:.2f}x (goal >= 1.9x)")


def memory(args: argparse.Namespace) -> None:
    """Section 3: the training set shared zero-copy against a private copy per trial."""
    from raygan.data import load_dataset
    from raygan.errors import DataError

    try:
        big = load_dataset(args.memory_dataset, args.memory_data_root)
    except DataError as e:
        print(f"\n3. Memory: skipped, {args.memory_dataset} is not installed here ({e})")
        return
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

if __name__ == "__main__":
    sys.exit(main())
