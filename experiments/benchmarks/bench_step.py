"""Algorithm 1 iterations per second: GANTrainer.run against a hand-written PyTorch loop.

Both run the paper's MNIST pair (G 100-1200-1200-784, D maxout 240x5 twice with dropout, the
default max-norm) at minibatch 100 with momentum SGD: k D-steps, each on a fresh data and
noise minibatch, then one G-step. The plain loop is what a person would write by hand: no
schedules, no metrics, no random-stream bookkeeping. The difference is the trainer's overhead.

Measurements are interleaved (trainer, plain, plain, trainer, trainer, plain, ...) so that
drifting machine load hits both alike and neither always runs first; medians are reported.

    python experiments/benchmarks/bench_step.py                         # 1 and 2 CPU threads (+ CUDA if present)
    python experiments/benchmarks/bench_step.py --threads 1 --iterations 20 --repeats 5
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

import torch
import torch.nn.functional as F

from raygan.algorithm import GANTrainer
from raygan.config import ModelConfig, TrainConfig
from raygan.models import Discriminator, Generator


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=None,
                   help="Algorithm 1 iterations per timed measurement (default: 30 on CPU, 300 on CUDA)")
    p.add_argument("--repeats", type=int, default=7, help="timed measurements per variant, interleaved")
    p.add_argument("--threads", default="1,2", help="comma-separated CPU thread counts (torch.set_num_threads)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: the CPU thread counts, then CUDA when torch.cuda.is_available()")
    p.add_argument("--k", type=int, default=1, help="D-steps per G-step (the paper: 1)")
    p.add_argument("--batch-size", type=int, default=100, help="minibatch size m (the paper: 100)")
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
        self.opt_d = torch.optim.SGD(self.D.parameters(), lr=train.lr_d, momentum=train.momentum)
        self.opt_g = torch.optim.SGD(self.G.parameters(), lr=train.lr_g, momentum=train.momentum)
        self.g_params = list(self.G.parameters())
        self.d_linears = [m for m in self.D.modules() if isinstance(m, torch.nn.Linear)]
        self.data, self.m, self.k, self.nz, self.max_norm = data, train.batch_size, train.k, model.noise_dim, model.d_max_norm

    def run(self, iterations: int) -> None:
        G, D, m, data = self.G, self.D, self.m, self.data
        dev = data.device
        G.train()
        D.train()
        for _ in range(iterations):
            for _ in range(self.k):
                x = data[torch.randint(0, len(data), (m,), device=dev)]
                z = torch.rand(m, self.nz, device=dev) * 2 - 1
                with torch.no_grad():
                    fake = G(z)
                logits = D(torch.cat([x, fake]))
                d_loss = F.softplus(-logits[:m]).mean() + F.softplus(logits[m:]).mean()
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
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)


def timed(fn, iterations: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn(iterations)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


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
    t_trainer, t_plain = [], []
    for i in range(args.repeats):  # interleaved; who goes first alternates, so order effects cancel
        first, second = ((trainer.run, t_trainer), (plain.run, t_plain))[:: 1 if i % 2 == 0 else -1]
        for fn, out in (first, second):
            out.append(timed(fn, iterations, device))
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


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_step.py: --device cuda, but torch.cuda.is_available() is False", file=sys.stderr)
        raise SystemExit(2)
    print("$ python " + " ".join(shlex.quote(a) for a in sys.argv))
    model = ModelConfig()  # the paper's MNIST pair, with the project's default max-norm
    train = TrainConfig(k=args.k, batch_size=args.batch_size, g_loss="non-saturating", seed=0)
    print(f"torch {torch.__version__}, python {platform.python_version()}, {os.cpu_count()} CPUs visible, "
          f"{platform.processor() or platform.machine()}")
    print(f"G {model.noise_dim}-{'-'.join(map(str, model.g_hidden))}-784, D maxout {model.d_hidden} x {model.d_pieces} "
          f"pieces, dropout {model.d_input_dropout}/{model.d_hidden_dropout}, max-norm {model.d_max_norm}; "
          f"k={train.k}, m={train.batch_size}, SGD lr {train.lr_d}/{train.lr_g} momentum {train.momentum}")
    print(f"data: {training_data(torch.device('cpu'))[1]}; {args.repeats} interleaved repeats per variant, medians")

    runs: list[tuple[str, torch.device, int | None]] = []
    if args.device in ("auto", "cpu"):
        runs += [(f"cpu, {t} thread{'s' if t > 1 else ''}", torch.device("cpu"), t)
                 for t in (int(x) for x in args.threads.split(","))]
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        runs.append((f"cuda ({torch.cuda.get_device_name(0)})", torch.device("cuda", 0), None))

    header = f"{'device':<36} {'iters':>5} {'GANTrainer it/s':>16} {'plain loop it/s':>16} {'overhead':>9} {'paired':>8} {'spread T/P':>12}"
    print("\n" + header + "\n" + "-" * len(header))
    for label, device, threads in runs:
        r = bench(device, threads, args, model, train)
        print(f"{label:<36} {r['iterations']:>5} {r['trainer_its']:>16.2f} {r['plain_its']:>16.2f} "
              f"{r['overhead_pct']:>+8.1f}% {r['pair_overhead_pct']:>+7.1f}% "
              f"{r['spread_trainer_pct']:>5.0f}%/{r['spread_plain_pct']:.0f}%", flush=True)
    print("\noverhead: median trainer time / median plain time - 1 (goal < 3 %); paired: median of the per-pair "
          "ratios; spread: (max - min) / median of each variant's timings (machine noise).")
    if args.profile:
        threads = int(args.threads.split(",")[0])
        profile_trainer(model, train, threads, args.iterations or 30)


if __name__ == "__main__":
    main()
