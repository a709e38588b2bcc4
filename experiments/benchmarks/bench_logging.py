"""What TensorBoard logging costs a trial, against the Tune step it rides on.

A GANTrainable step on the default data set is one epoch of mnist5k (4,000 / 100 = 40 Algorithm 1
iterations of the paper's MNIST pair). Per step the trial calls TrialMonitor.log_step on its
result dict; at each evaluation (every ``eval.every`` = 2 steps by default) it also calls
log_samples on the first 64 of the evaluation's fixed-noise samples (already generated for the
Parzen score, so the grid costs only its PNG). Generating 64 samples is timed separately, for a
caller that has none. Weight histograms are optional (off by default) and timed for reference.

Timings are interleaved (step, log_step, samples, histograms, step, ...) so drifting machine load
hits all alike; medians are reported. The writer's background thread does the file writes; its
share is in the "A/B" line, which times whole steps with and without logging.

    python experiments/benchmarks/bench_logging.py                  # 1 CPU thread, 7 repeats
    python experiments/benchmarks/bench_logging.py --threads 2 --repeats 11
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from typing import Callable

import torch

from raygan.algorithm import GANTrainer
from raygan.config import EvalConfig, ModelConfig, TrainConfig
from raygan.models import generate
from raygan.monitor import TrialMonitor

SAMPLES = 64  # the trainable's fixed-noise grid
SAMPLE_SEED = 4321


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (a trial with 1 CPU gets 1)")
    p.add_argument("--iterations", type=int, default=None, help="Algorithm 1 iterations per step (default: one mnist5k epoch)")
    p.add_argument("--repeats", type=int, default=7, help="interleaved measurements of each kind")
    p.add_argument("--every", type=int, default=EvalConfig().every, help="steps between sample grids (eval.every)")
    return p.parse_args(argv)


def training_data() -> tuple[torch.Tensor, str]:
    """mnist5k's training split when it loads, else uniform noise of the same shape (speed is the same)."""
    try:
        from raygan.data import load_dataset

        return torch.from_numpy(load_dataset("mnist5k").train), "mnist5k train (4000 x 1 x 28 x 28)"
    except Exception as e:  # a benchmark should still run without the data set
        return torch.rand(4000, 1, 28, 28, generator=torch.Generator().manual_seed(0)), f"uniform noise ({e.__class__.__name__})"


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def result_dict(trainer: GANTrainer, metrics, iterations_per_s: float) -> dict:
    """The keys GANTrainable._result reports (values from the step just run)."""
    hparams = trainer.current_hyperparameters()
    return {
        "eval/parzen_valid_ll": -230.0, "eval/sigma": 0.1, "eval/seconds": 0.5,
        "perf/iterations_per_s": iterations_per_s, "algorithm/iteration": trainer.iteration,
        **{f"hparams/{k}": v for k, v in hparams.items()}, "diverged": False,
        "loss/d": metrics.d_loss, "loss/g": metrics.g_loss, "d/real": metrics.d_real, "d/fake": metrics.d_fake,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print("$ python " + " ".join(shlex.quote(a) for a in sys.argv))
    torch.set_num_threads(args.threads)
    data, what = training_data()
    iterations = args.iterations or math.ceil(len(data) / TrainConfig().batch_size)
    print(f"torch {torch.__version__}, python {platform.python_version()}, {os.cpu_count()} CPUs visible, "
          f"{args.threads} torch thread(s); data: {what}")
    print(f"step = GANTrainer.run({iterations}) on the paper's MNIST pair (m = 100, k = 1); "
          f"sample grid every {args.every} steps; {args.repeats} interleaved repeats, medians\n")

    trainer = GANTrainer(ModelConfig(), TrainConfig(), data)
    hparams = {"k": 1, "lr_d": 0.1, "lr_g": 0.1, "momentum": 0.5, "prior": "uniform", "g_loss": "non-saturating"}
    with tempfile.TemporaryDirectory() as logdir:
        monitor = TrialMonitor(f"{logdir}/trial", hparams)
        histograms = TrialMonitor(f"{logdir}/histograms", hparams, histograms=True)
        plain = TrialMonitor(f"{logdir}/ab", hparams)
        trainer.run(3)  # warm-up: allocator, lazy initialisation
        t_step, t_log, t_gen, t_samples, t_hist, t_ab_plain, t_ab_logged = [], [], [], [], [], [], []
        for step in range(1, args.repeats + 1):
            metrics = None

            def run_step():
                nonlocal metrics
                metrics = trainer.run(iterations)

            t_step.append(seconds(run_step))
            result = result_dict(trainer, metrics, iterations / t_step[-1])
            t_log.append(seconds(lambda: monitor.log_step(step, result)))
            samples = None

            def draw():
                nonlocal samples
                samples = generate(trainer.generator, SAMPLES, seed=SAMPLE_SEED)

            t_gen.append(seconds(draw))
            t_samples.append(seconds(lambda: monitor.log_samples(step, samples)))
            t_hist.append(seconds(lambda: histograms.log_histograms(step, trainer.generator, trainer.discriminator)))

            # A/B: whole steps, without and with everything a trial logs (the sample grid every step:
            # the worst case), the writer thread running alongside.
            t_ab_plain.append(seconds(lambda: trainer.run(iterations)))

            def logged_step():
                m = trainer.run(iterations)
                plain.log_step(step, result_dict(trainer, m, 0.0))
                plain.log_samples(step, generate(trainer.generator, SAMPLES, seed=SAMPLE_SEED))

            t_ab_logged.append(seconds(logged_step))
        t_flush = seconds(lambda: (monitor.flush(), histograms.flush(), plain.flush()))
        for m in (monitor, histograms, plain):
            m.close()

    step_s, log_s, gen_s, samples_s, hist_s = (statistics.median(t) for t in (t_step, t_log, t_gen, t_samples, t_hist))
    per_step = log_s + samples_s / args.every
    rows = [
        ("step: GANTrainer.run (baseline)", step_s, None),
        ("log_step (one result dict)", log_s, log_s / step_s),
        (f"log_samples ({SAMPLES} samples, one grid)", samples_s, samples_s / step_s),
        (f"generate({SAMPLES}) (not needed by the trainable)", gen_s, gen_s / step_s),
        (f"logging per step (grid every {args.every})", per_step, per_step / step_s),
        ("logging per step (grid every step)", log_s + samples_s, (log_s + samples_s) / step_s),
        ("log_histograms (optional, off by default)", hist_s, hist_s / step_s),
    ]
    print(f"{'what':<44} {'median ms':>10} {'% of step':>10}")
    print("-" * 66)
    for label, s, share in rows:
        print(f"{label:<44} {1e3 * s:>10.2f} {'' if share is None else f'{100 * share:.2f} %':>10}")
    ab = statistics.median(a / b for a, b in zip(t_ab_logged, t_ab_plain)) - 1
    spread = (max(t_ab_plain) - min(t_ab_plain)) / statistics.median(t_ab_plain)
    print(f"\nA/B whole steps, logged (grid every step) / plain - 1: median of pairs {100 * ab:+.2f} % "
          f"(machine noise: plain steps spread {100 * spread:.0f} %)")
    print(f"final flush of three writers: {1e3 * t_flush:.1f} ms; goal: logging <= a few % of step time")


if __name__ == "__main__":
    main()
