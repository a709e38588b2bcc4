"""Figure 1 of Goodfellow et al. (2014) on raygan's ``toy-1d`` data (N(4, 0.5^2)).

Panels at several stages of Algorithm 1: the data density p_data (black, dotted), the
generator's density p_g (green: a Gaussian KDE of 20,000 samples of G), and the
discriminator's curve D(x) = sigmoid(D's logit) over a grid (blue, dashed; D in eval mode).
As p_g approaches p_data, D flattens towards 1/2 (Proposition 1: D*(x) = p_data / (p_data + p_g)),
the thin blue line is that D*, computed from the KDE.

The networks and settings are those of tests/test_algorithm.py's toy-1d test (small MLPs from
PyTorch's fan-in initialisation, k = 3, minibatch 256); compute is printed and saved.

    python experiments/figure1_toy.py                      # docs/figure1_toy.png, ~2,000 iterations
    python experiments/figure1_toy.py --stages 0 100 400 2000 --out /tmp/f1.png
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import common
import numpy as np
import torch
from scipy import stats

from raygan.algorithm import GANTrainer
from raygan.config import ModelConfig, TrainConfig, to_dict
from raygan.data import TOY_1D_MEAN, TOY_1D_STD, load_dataset, toy_1d_density
from raygan.models import generate

# tests/test_algorithm.py::test_algorithm1_learns_the_1d_gaussian: G 4-32-32-1, D maxout 32x3 twice.
MODEL = ModelConfig(arch="mlp", noise_dim=4, prior="uniform", g_hidden=(32, 32), d_hidden=(32, 32), d_pieces=3,
                    d_input_dropout=0.0, d_hidden_dropout=0.0, d_max_norm=None)
# The momentum ramp: 2,000 iterations of 256 of toy-1d's 20,000 training points.
TRAIN = TrainConfig(k=3, batch_size=256, optimizer="sgd", lr_d=0.1, lr_g=0.05, momentum=0.5, final_momentum=0.7,
                    momentum_ramp_epochs=2000 * 256 / 20_000, lr_decay=1.0015, min_lr=1e-6, g_loss="non-saturating",
                    r1=0.0, g_average=0.0, seed=0)  # the paper's D: no gradient penalty; its G: the last iterate
GRID = (-1.0, 7.0)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Figure 1: p_data, p_g and D(x) on toy-1d at several stages of training.")
    p.add_argument("--stages", type=int, nargs="+", default=[0, 150, 500, 2000], help="Algorithm 1 iterations at which to draw a panel")
    p.add_argument("--samples", type=int, default=20_000, help="samples of G for its density (KDE)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=common.DOCS_DIR / "figure1_toy.png")
    p.add_argument("--results", type=Path, default=common.RESULTS_DIR / "figure1_toy.json")
    p.add_argument("--render-only", action="store_true", help="redraw from --results without training")
    return p.parse_args(argv)


def _reinit(trainer: GANTrainer, seed: int) -> None:
    # PyTorch's fan-in init: pylearn2's +-0.05 range is sized for 784 inputs (see the test's docstring).
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for module in [*trainer.generator.modules(), *trainer.discriminator.modules()]:
            if isinstance(module, torch.nn.Linear):
                module.reset_parameters()


@torch.no_grad()
def snapshot(trainer: GANTrainer, grid: np.ndarray, n: int) -> dict[str, Any]:
    """p_g (KDE of n samples), D(x) and D*(x) on the grid, and summary numbers, at this point."""
    samples = generate(trainer.generator, n, seed=1).view(-1).double().numpy()
    p_g = stats.gaussian_kde(samples)(grid) if samples.std() > 1e-6 else np.zeros_like(grid)
    D = trainer.discriminator
    was = D.training
    D.eval()
    d = torch.sigmoid(D(torch.from_numpy(grid).float().view(-1, 1, 1, 1))).double().numpy()
    D.train(was)
    p_data = toy_1d_density(grid)
    support = p_data > 0.05 * p_data.max()  # where the data are, D's distance from 1/2
    return {
        "iteration": trainer.iteration,
        "p_g": p_g.tolist(),
        "d": d.tolist(),
        "d_star": (p_data / np.maximum(p_data + p_g, 1e-12)).tolist(),
        "mean": float(samples.mean()),
        "std": float(samples.std()),
        "max_abs_d_minus_half_on_data": float(np.abs(d[support] - 0.5).max()),
        "ks_vs_data": float(stats.ks_2samp(samples, np.random.default_rng(0).normal(TOY_1D_MEAN, TOY_1D_STD, n)).statistic),
    }


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Train on toy-1d and take a snapshot at every stage; returns what the figure needs."""
    torch.set_num_threads(1)
    data = torch.from_numpy(load_dataset("toy-1d", seed=args.seed).train)
    trainer = GANTrainer(MODEL, TRAIN, data, bounded=False)
    _reinit(trainer, TRAIN.seed)
    grid = np.linspace(*GRID, 400)
    compute, start = common.Compute(), time.perf_counter()
    snaps = []
    for stage in sorted(set(args.stages)):
        with common.cpu_timer(compute, "train"):
            if stage > trainer.iteration:
                trainer.run(stage - trainer.iteration)
        with common.cpu_timer(compute, "eval"):
            snaps.append(snapshot(trainer, grid, args.samples))
        s = snaps[-1]
        print(f"  iteration {s['iteration']:>5}: p_g mean {s['mean']:.3f} std {s['std']:.3f}  KS {s['ks_vs_data']:.3f}  "
              f"max|D - 1/2| on the data {s['max_abs_d_minus_half_on_data']:.3f}", flush=True)
    compute.wall_s = time.perf_counter() - start
    return {"grid": grid.tolist(), "p_data": toy_1d_density(grid).tolist(), "snapshots": snaps, "compute": compute.as_dict(),
            "hardware": common.hardware(), "model": to_dict(MODEL), "train": to_dict(TRAIN)}


def render(result: dict[str, Any], out: Path) -> None:
    """Draw one panel per snapshot, in the paper's colours and line styles."""
    plt = common.require_matplotlib()
    snaps = result["snapshots"]
    grid, p_data = np.array(result["grid"]), np.array(result["p_data"])
    fig, axes = plt.subplots(1, len(snaps), figsize=(2.7 * len(snaps), 2.8), sharey=True, squeeze=False)
    for ax, s, letter in zip(axes[0], snaps, "abcdefghij"):
        ax.axhline(0.5, color="0.8", lw=0.8, zorder=0)
        ax.plot(grid, p_data, ":", color="black", lw=1.6, label="$p_{data}$")
        ax.plot(grid, s["p_g"], "-", color="tab:green", lw=1.6, label="$p_g$ (KDE of G's samples)")
        ax.plot(grid, s["d"], "--", color="tab:blue", lw=1.6, label="$D(x)$")
        d_star = np.array(s["d_star"])
        d_star[p_data + np.array(s["p_g"]) < 1e-3] = np.nan  # undefined where neither density has mass
        ax.plot(grid, d_star, "-", color="tab:blue", lw=0.6, alpha=0.6, label="$D^*=p_{data}/(p_{data}+p_g)$")
        ax.set_title(f"({letter}) iteration {s['iteration']}\nmax|D-1/2| on data {s['max_abs_d_minus_half_on_data']:.2f}", fontsize=8)
        ax.set_xlim(*grid[[0, -1]])
        ax.set_ylim(-0.02, 1.25)
        ax.set_xlabel("x", fontsize=8)
        ax.tick_params(labelsize=7)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    common.save_figure(fig, out, dpi=110)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: train (unless --render-only), save the numbers, draw the figure."""
    args = parse_args(argv)
    if args.render_only:
        result = common.read_json(args.results)
    else:
        result = train(args)
        common.write_json(args.results, result)
        print(f"compute: {result['compute']['total_cpu_s']:.1f} CPU-s, {result['compute']['wall_s']:.1f} s wall")
    render(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
