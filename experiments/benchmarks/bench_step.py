"""Algorithm 1 iterations per second: GANTrainer.run against a hand-written PyTorch loop.

Two pairs, each with its own learning rule: today's default (the DCGAN-style conv pair trained
by Adam at minibatch 32 with a lazy R1 penalty on D, sampling from a running average of G's
weights, raygan.config's defaults; ``default-plain-d`` is the same with the plain DCGAN D, without
its extra 3x3 convolution, ``default-no-r1`` the same without the penalty and ``default-last-iterate``
the same without the average) and the paper's MNIST pair (G 100-1200-1200-784,
D maxout 240x5 twice with dropout, momentum SGD at minibatch 100: experiments/mnist_paper.yaml).
Both loops run k D-steps, each on a fresh data and noise minibatch, then one G-step (and fold G's
weights into the average where the pair keeps one). The plain
loop is what a person would write by hand: no schedules, no metrics, no random-stream
bookkeeping. The difference is the trainer's overhead.

Measurements are interleaved (trainer, plain, plain, trainer, trainer, plain, ...) so that
drifting machine load hits both alike and neither always runs first; medians are reported, of
wall time and of this process's CPU time (which other jobs sharing the cores hardly move, on one
thread; on two, a busy machine makes OpenMP spin and both grow).

    python experiments/benchmarks/bench_step.py                         # both pairs, 1 and 2 CPU threads (+ CUDA if present)
    python experiments/benchmarks/bench_step.py --pair default --threads 1 --iterations 20 --repeats 5
    python experiments/benchmarks/bench_step.py --pair all                # default, its three variants and paper
    python experiments/benchmarks/bench_step.py --device cuda --iterations 500
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from raygan.algorithm import GANTrainer, r1_penalty
from raygan.config import ModelConfig, TrainConfig, load_config, replace
from raygan.models import Discriminator, Generator

PAPER_YAML = Path(__file__).resolve().parents[1] / "mnist_paper.yaml"
PAIRS = ("default", "default-plain-d", "default-no-r1", "default-last-iterate", "paper")
CHOSEN = {"both": ("default", "paper"), "all": PAIRS}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=None,
                   help="Algorithm 1 iterations per timed measurement (default: 30 on CPU, 300 on CUDA)")
    p.add_argument("--repeats", type=int, default=7, help="timed measurements per variant, interleaved")
    p.add_argument("--threads", default="1,2", help="comma-separated CPU thread counts (torch.set_num_threads)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: the CPU thread counts, then CUDA when torch.cuda.is_available()")
    p.add_argument("--pair", default="both", choices=[*PAIRS, *CHOSEN],
                   help="default: the conv pair with Adam and lazy R1 (raygan's defaults); default-plain-d: the same with model.d_extra_convs 0; "
                        "default-no-r1: the same with train.r1 0; default-last-iterate: the same with train.g_average 0; "
                        "paper: experiments/mnist_paper.yaml's MLP/maxout pair with SGD; both: default and paper; all: the five")
    p.add_argument("--k", type=int, default=None, help="D-steps per G-step (default: the pair's own, 1)")
    p.add_argument("--batch-size", type=int, default=None, help="minibatch size m (default: the pair's own: 32, the paper's 100)")
    p.add_argument("--profile", action="store_true", help="also print a cProfile of GANTrainer.run (CPU, first thread count)")
    return p.parse_args(argv)


def training_data(device: torch.device) -> tuple[torch.Tensor, str]:
    """mnist5k's training split when it loads, else uniform noise of the same shape (speed is the same)."""
    try:
        from raygan.data import load_dataset

        return torch.from_numpy(load_dataset("mnist5k").train).to(device), "mnist5k train (4000 x 1 x 28 x 28)"
    except Exception as e:  # a benchmark should still run without the data set
        g = torch.Generator().manual_seed(0)
        return torch.rand(4000, 1, 28, 28, generator=g).to(device), f"uniform noise 4000x1x28x28 ({e.__class__.__name__})"


class PlainLoop:
    """Algorithm 1 written out by hand on the same nets and optimisers: the baseline."""

    def __init__(self, model: ModelConfig, train: TrainConfig, data: torch.Tensor) -> None:
        torch.manual_seed(train.seed)
        shape = tuple(data.shape[1:])
        self.G = Generator(model, shape).to(data.device)
        self.D = Discriminator(model, shape).to(data.device)
        if train.optimizer == "adam":
            betas = (train.momentum, train.beta2)
            self.opt_d = torch.optim.Adam(self.D.parameters(), lr=train.lr_d, betas=betas)
            self.opt_g = torch.optim.Adam(self.G.parameters(), lr=train.lr_g, betas=betas)
        else:
            self.opt_d = torch.optim.SGD(self.D.parameters(), lr=train.lr_d, momentum=train.momentum)
            self.opt_g = torch.optim.SGD(self.G.parameters(), lr=train.lr_g, momentum=train.momentum)
        self.g_params = list(self.G.parameters())
        self.d_linears = [m for m in self.D.modules() if isinstance(m, torch.nn.Linear)]
        self.data, self.m, self.k, self.nz, self.max_norm = data, train.batch_size, train.k, model.noise_dim, model.d_max_norm
        self.r1, self.r1_every, self.iteration = train.r1, train.r1_every, 0
        # The running average of G's weights, as a hand-written loop keeps one: a fixed decay, no bias
        # correction (the same arithmetic per iteration as raygan.averaging's). Parameters only: the
        # default G's batch-norm buffers are a few hundred numbers.
        self.g_average = train.g_average
        self.g_avg = [p.detach().clone() for p in self.g_params] if train.g_average else None

    def run(self, iterations: int) -> None:
        G, D, m, data = self.G, self.D, self.m, self.data
        dev = data.device
        G.train()
        D.train()
        for _ in range(iterations):
            for step in range(self.k):
                x = data[torch.randint(0, len(data), (m,), device=dev)]
                z = torch.rand(m, self.nz, device=dev) * 2 - 1
                with torch.no_grad():
                    fake = G(z)
                r1 = self.r1 > 0 and step == 0 and self.iteration % self.r1_every == 0
                x.requires_grad_(r1)
                logits = D(torch.cat([x, fake]))
                d_loss = F.softplus(-logits[:m]).mean() + F.softplus(logits[m:]).mean()
                if r1:  # lazy R1 at real data
                    d_loss = d_loss + self.r1 * self.r1_every / 2 * r1_penalty(logits[:m], x)
                self.opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                self.opt_d.step()
                if self.max_norm is not None:
                    with torch.no_grad():
                        for lin in self.d_linears:
                            lin.weight.renorm_(2, 0, self.max_norm)
            z = torch.rand(m, self.nz, device=dev) * 2 - 1
            g_loss = F.softplus(-D(G(z))).mean()  # non-saturating
            self.opt_g.zero_grad(set_to_none=True)
            g_loss.backward(inputs=self.g_params)
            self.opt_g.step()
            if self.g_avg is not None:
                with torch.no_grad():
                    torch._foreach_lerp_(self.g_avg, self.g_params, 1.0 - self.g_average)
            self.iteration += 1
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)


def timed(fn, iterations: int, device: torch.device) -> tuple[float, float]:
    """Wall seconds and this process's CPU seconds of ``fn(iterations)``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start, cpu = time.perf_counter(), time.process_time()
    fn(iterations)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, time.process_time() - cpu


def bench(device: torch.device, threads: int | None, args: argparse.Namespace, model: ModelConfig,
          train: TrainConfig) -> dict[str, float]:
    if threads is not None:
        torch.set_num_threads(threads)
    iterations = args.iterations or (300 if device.type == "cuda" else 30)
    data, _ = training_data(device)
    trainer = GANTrainer(model, train, data)
    plain = PlainLoop(model, train, data)
    trainer.run(3)  # warm-up: allocator, kernels, lazy initialisation
    plain.run(3)
    trainer_times, plain_times = [], []
    for i in range(args.repeats):  # interleaved; who goes first alternates, so order effects cancel
        first, second = ((trainer.run, trainer_times), (plain.run, plain_times))[:: 1 if i % 2 == 0 else -1]
        for fn, out in (first, second):
            out.append(timed(fn, iterations, device))
    t_trainer, t_plain = [w for w, _ in trainer_times], [w for w, _ in plain_times]
    cpu_t, cpu_p = statistics.median(c for _, c in trainer_times), statistics.median(c for _, c in plain_times)
    med_t, med_p = statistics.median(t_trainer), statistics.median(t_plain)
    ratios = sorted(a / b for a, b in zip(t_trainer, t_plain))
    return {
        "iterations": iterations,
        "trainer_its": iterations / med_t,
        "plain_its": iterations / med_p,
        "overhead_pct": 100 * (med_t / med_p - 1),
        "pair_overhead_pct": 100 * (statistics.median(ratios) - 1),
        "spread_trainer_pct": 100 * (max(t_trainer) - min(t_trainer)) / med_t,
        "spread_plain_pct": 100 * (max(t_plain) - min(t_plain)) / med_p,
        "trainer_cpu_its": iterations / cpu_t,
        "plain_cpu_its": iterations / cpu_p,
        "cpu_overhead_pct": 100 * (cpu_t / cpu_p - 1),
    }


def profile_trainer(model: ModelConfig, train: TrainConfig, threads: int, iterations: int) -> None:
    import cProfile
    import pstats

    torch.set_num_threads(threads)
    data, _ = training_data(torch.device("cpu"))
    trainer = GANTrainer(model, train, data)
    trainer.run(2)
    prof = cProfile.Profile()
    prof.enable()
    trainer.run(iterations)
    prof.disable()
    print(f"\ncProfile of GANTrainer.run({iterations}) on {threads} thread(s), by own time:")
    pstats.Stats(prof).sort_stats("tottime").print_stats(15)


def pair(name: str, args: argparse.Namespace) -> tuple[ModelConfig, TrainConfig]:
    """The models and learning rule of one pair, with --k and --batch-size applied where given."""
    if name.startswith("default"):
        model = ModelConfig(**({"d_extra_convs": 0} if name == "default-plain-d" else {}))
        variant = {"default-no-r1": {"r1": 0.0}, "default-last-iterate": {"g_average": 0.0}}.get(name, {})
        train = TrainConfig(seed=0, **variant)
    else:
        paper = load_config(PAPER_YAML)
        model, train = paper.model, replace(paper.train, seed=0)
    changes = {k: v for k, v in (("k", args.k), ("batch_size", args.batch_size)) if v is not None}
    return model, replace(train, **changes)


def describe(name: str, model: ModelConfig, train: TrainConfig) -> str:
    if model.arch == "conv":
        extra = f", {model.d_extra_convs} 3x3 conv(s) at D's smallest side" if model.d_extra_convs else ""
        nets = f"G and D conv (width {model.conv_width}, DCGAN-style; batch norm in G{extra})"
    else:
        nets = (f"G {model.noise_dim}-{'-'.join(map(str, model.g_hidden))}-784, D maxout {model.d_hidden} x {model.d_pieces} "
                f"pieces, dropout {model.d_input_dropout}/{model.d_hidden_dropout}, max-norm {model.d_max_norm}")
    rule = (f"Adam lr {train.lr_d}/{train.lr_g} betas ({train.momentum}, {train.beta2})" if train.optimizer == "adam"
            else f"SGD lr {train.lr_d}/{train.lr_g} momentum {train.momentum}")
    penalty = f", R1 gamma {train.r1:g} every {train.r1_every} iterations" if train.r1 > 0 else ""
    average = f", G's weights averaged (decay {train.g_average:g})" if train.g_average else ""
    return f"{name} pair: {nets}; k={train.k}, m={train.batch_size}, {rule}{penalty}{average}"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_step.py: --device cuda, but torch.cuda.is_available() is False", file=sys.stderr)
        raise SystemExit(2)
    print("$ python " + " ".join(shlex.quote(a) for a in sys.argv))
    print(f"torch {torch.__version__}, python {platform.python_version()}, {os.cpu_count()} CPUs visible, "
          f"{platform.processor() or platform.machine()}; load average {os.getloadavg()[0]:.1f}")
    print(f"data: {training_data(torch.device('cpu'))[1]}; {args.repeats} interleaved repeats per variant, medians")

    runs: list[tuple[str, torch.device, int | None]] = []
    if args.device in ("auto", "cpu"):
        runs += [(f"cpu, {t} thread{'s' if t > 1 else ''}", torch.device("cpu"), t)
                 for t in (int(x) for x in args.threads.split(","))]
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        runs.append((f"cuda ({torch.cuda.get_device_name(0)})", torch.device("cuda", 0), None))

    header = (f"{'device':<16} {'iters':>5} {'GANTrainer it/s':>16} {'plain loop it/s':>16} {'overhead':>9} {'paired':>8} "
              f"{'spread T/P':>11} {'it/CPU s T/P':>14} {'CPU overhead':>13}")
    for name in CHOSEN.get(args.pair, (args.pair,)):
        model, train = pair(name, args)
        print("\n" + describe(name, model, train) + "\n" + header + "\n" + "-" * len(header))
        for label, device, threads in runs:
            r = bench(device, threads, args, model, train)
            spread = f"{r['spread_trainer_pct']:.0f}%/{r['spread_plain_pct']:.0f}%"
            per_cpu = f"{r['trainer_cpu_its']:.2f}/{r['plain_cpu_its']:.2f}"
            print(f"{label:<16} {r['iterations']:>5} {r['trainer_its']:>16.2f} {r['plain_its']:>16.2f} "
                  f"{r['overhead_pct']:>+8.1f}% {r['pair_overhead_pct']:>+7.1f}% {spread:>11} {per_cpu:>14} "
                  f"{r['cpu_overhead_pct']:>+12.1f}%", flush=True)
        if args.profile:
            profile_trainer(model, train, int(args.threads.split(",")[0]), args.iterations or 30)
    print("\noverhead: median trainer time / median plain time - 1 (goal < 3 %); paired: median of the per-pair "
          "ratios; spread: (max - min) / median of each variant's wall timings (machine noise); it/CPU s: iterations per "
          "second of this process's CPU time, trainer/plain; CPU overhead: the overhead in CPU time. "
          f"Load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
