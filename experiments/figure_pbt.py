"""Beyond the paper: a PBT population's Parzen validation LL over training, against one default run.

Reads what ``experiments/table1.py`` saved (no training here). Left: each trial's validation
LL against its own Algorithm 1 iteration counter, PBT's exploit events marked (an arrow from
the donor to the trial that copied its weights, read from Tune's ``pbt_global.txt``), and the
paper's default run (black). Right: the same runs against the compute spent so far, in
Algorithm 1 iterations summed over the whole population: the best validation LL found so far
by the population and by the single run, budget for budget.

    python experiments/figure_pbt.py                       # mnist5k -> docs/figure_pbt.png
    python experiments/figure_pbt.py --dataset fashion-mnist --out docs/figure_pbt_fashion.png

With ``--run DIR`` it reads a finished ``python -m raygan.tune`` run instead (its trials'
progress.csv and pbt_global.txt): left, each trial's Parzen validation LL; right, each trial's
FD in the domain classifier's feature space; PBT's exploits marked on both.

    python experiments/figure_pbt.py --run ~/raygan_results/raygan --out docs/figure_pbt.png
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import common
import numpy as np

TABLE_DIR = common.RESULTS_DIR / "table1"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Population LL over time with PBT's exploits, against a default run.")
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--results", type=Path, help="a table1 JSON (default experiments/results/table1/<dataset>.json)")
    p.add_argument("--run", type=Path, help="a finished raygan.tune run directory (instead of a table1 JSON)")
    p.add_argument("--out", type=Path, default=common.DOCS_DIR / "figure_pbt.png")
    return p.parse_args(argv)


def _trial_index(trial_id: str) -> int:
    return int(trial_id.rsplit("_", 1)[-1])  # "45a3b_00003" -> 3, the index in the tag "3_g_loss=..."


def _finite(values: list[Any]) -> np.ndarray:
    return np.array([v if v is not None and math.isfinite(v) else np.nan for v in values], dtype=float)


def segments(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """A trial's results split where its step goes back: PBT restored a donor's checkpoint there.

    With asynchronous PBT a trial may report one more step before the copy takes effect; Tune
    then restores the donor's earlier checkpoint and the trial's steps repeat from there.
    """
    out: list[list[dict[str, Any]]] = [[]]
    for r in rows:
        if out[-1] and r["step"] <= out[-1][-1]["step"]:
            out.append([])
        out[-1].append(r)
    return [seg for seg in out if seg]


def exploit_arrows(pop: dict[str, Any], measure: str = "parzen_valid_ll") -> list[dict[str, float]]:
    """(x, y) of the donor before and of the copying trial after each exploit, from the saved curves."""
    by_index = {_trial_index(t): rows for t, rows in pop["curves"].items()}
    arrows = []
    for e in pop["exploits"]:
        target, donor = by_index.get(int(e["target_tag"].split("_")[0])), by_index.get(int(e["donor_tag"].split("_")[0]))
        if target is None or donor is None:
            continue
        d = next((r for r in donor if r["step"] == e["donor_step"]), None)
        # Its first result after the copy: the first restore (the step goes back, to about the
        # donor's) after it reached the exploit's step, else (the copy took effect at once) its
        # first result past that step.
        reached = next((i for i, r in enumerate(target) if r["step"] >= e["target_step"]), len(target))
        restores = [i for i in range(reached + 1, len(target)) if target[i]["step"] <= target[i - 1]["step"]]
        t = target[restores[0]] if restores else next((r for r in target if r["step"] > e["target_step"]), None)
        if d is None or t is None:
            continue
        arrows.append({"x0": d["iteration"], "y0": d[measure], "x1": t["iteration"], "y1": t[measure],
                       "target": int(e["target_tag"].split("_")[0]), "donor": int(e["donor_tag"].split("_")[0])})
    return arrows


def draw_trials(ax: Any, pop: dict[str, Any], measure: str, colors: Any) -> list[dict[str, float]]:
    """Each trial's ``measure`` against its own iteration counter, PBT's exploits as arrows; returns the arrows."""
    for trial_id, rows in sorted(pop["curves"].items(), key=lambda kv: _trial_index(kv[0])):
        i = _trial_index(trial_id)
        scored = [r for r in rows if math.isfinite(r[measure])]
        for k, seg in enumerate(segments(scored)):
            ax.plot([r["iteration"] for r in seg], _finite([r[measure] for r in seg]), "-o", ms=2.5, lw=1.1,
                    color=colors(i), alpha=1.0 if k == len(segments(scored)) - 1 else 0.45, label=None if k else f"PBT trial {i}")
    arrows = exploit_arrows(pop, measure)
    for a in arrows:
        ax.annotate("", xy=(a["x1"], a["y1"]), xytext=(a["x0"], a["y0"]),
                    arrowprops={"arrowstyle": "->", "color": colors(a["target"]), "lw": 1.0, "ls": "--"})
        ax.plot([a["x1"]], [a["y1"]], "*", ms=9, color=colors(a["target"]), mec="black", mew=0.5)
    ax.plot([], [], "*", ms=9, color="white", mec="black", mew=0.5, label="after an exploit (copied donor's weights)")
    ax.set_xlabel("Algorithm 1 iterations of the trial")
    return arrows


def run_record(run: Path) -> dict[str, Any]:
    """A finished raygan.tune run's curves and exploits, as :func:`render_run` reads them."""
    from raygan.config import load_config
    from raygan.files import EXPERIMENT_FILE

    if not (run / EXPERIMENT_FILE).is_file():
        raise SystemExit(f"{run} is not a raygan run directory (it holds no {EXPERIMENT_FILE})")
    config = load_config(run / EXPERIMENT_FILE)
    curves = common.read_trial_curves(run)
    if not curves:
        raise SystemExit(f"{run} holds no trial results (progress.csv)")
    return {"dataset": config.data.name, "run": str(run),
            "population": {"curves": curves, "exploits": common.read_exploits(run)}}


def render_run(record: dict[str, Any], out: Path) -> dict[str, Any]:
    """A run's trials: Parzen validation LL (left) and FD (right) over their iterations, exploits marked."""
    plt = common.require_matplotlib()
    pop = record["population"]
    colors = plt.get_cmap("tab10")
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    arrows = draw_trials(left, pop, "parzen_valid_ll", colors)
    draw_trials(right, pop, "fd", colors)
    left.set_ylabel("Parzen validation LL (nats, higher is better)")
    right.set_ylabel("FD, domain classifier features (lower is better)")
    left.set_title(f"{record['dataset']}: {len(pop['curves'])} trials, {len(arrows)} PBT exploit(s); "
                   "faded: results before a copy", fontsize=8)
    right.set_title("the same trials read by the domain classifier", fontsize=8)
    right.set_yscale("log")
    left.legend(fontsize=6.5, loc="lower right")
    _save(fig, (left, right), out, arrows)
    return {"exploits": len(arrows), "trials": len(pop["curves"])}


def _save(fig: Any, axes: Sequence[Any], out: Path, arrows: list[dict[str, float]]) -> None:
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    common.save_figure(fig, out)
    print(f"{len(arrows)} exploits drawn")


def render(record: dict[str, Any], out: Path) -> dict[str, Any]:
    """Draw both panels; returns the numbers drawn (best-so-far curves, exploit count)."""
    plt = common.require_matplotlib()
    pop, single = record["rows"]["population"], record["rows"]["default"]
    trials = record["budget"]["trials"]
    colors = plt.get_cmap("tab10")
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))

    s_x = np.array([r["iteration"] for r in single["curve"]])
    s_y = _finite([r["parzen_valid_ll"] for r in single["curve"]])
    left.plot(s_x, s_y, "-", color="black", lw=1.8, label="paper's default, 1 run")
    arrows = draw_trials(left, pop, "parzen_valid_ll", colors)
    left.set_ylabel("Parzen validation LL (nats)")
    left.set_title(f"{record['dataset']}: per-trial curves, {len(arrows)} PBT exploit(s); faded: a trial's results before it was overwritten",
                   fontsize=8)
    left.legend(fontsize=6.5, loc="lower right")

    # Budget for budget: the population spends `trials` iterations for each of its trials' iterations.
    steps = sorted({r["step"] for rows in pop["curves"].values() for r in rows})
    per_step = record["budget"]["iterations_per_step"]
    p_x, p_y = [], []
    for step in steps:
        # A step repeated after a restore counts once (its latest result); its compute was spent twice.
        vals = [[r for r in rows if r["step"] == step][-1]["parzen_valid_ll"] for rows in pop["curves"].values()
                if any(r["step"] == step for r in rows)]
        p_x.append(trials * step * per_step)
        p_y.append(np.nanmax(_finite(vals)) if vals else np.nan)
    p_best = np.fmax.accumulate(np.array(p_y, dtype=float))
    s_best = np.fmax.accumulate(s_y)
    right.plot(s_x, s_best, "-", color="black", lw=1.8, label="paper's default, 1 run")
    right.plot(p_x, p_best, "-o", ms=3, color="tab:red", lw=1.6, label=f"PBT population of {trials}, best trial")
    right.set_xlabel("compute spent: Algorithm 1 iterations, all trials together")
    right.set_ylabel("best validation LL so far (nats)")
    right.set_title("the same budget: best model found so far", fontsize=9)
    right.legend(fontsize=7, loc="lower right")
    _save(fig, (left, right), out, arrows)
    return {"exploits": len(arrows), "population_best": p_best.tolist(), "default_best": s_best.tolist()}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: draw the figure from a saved table1 result."""
    args = parse_args(argv)
    if args.run is not None:
        render_run(run_record(args.run.expanduser()), args.out)
        return 0
    path = args.results or TABLE_DIR / f"{args.dataset}.json"
    record = common.read_json(path)
    if not {"population", "default"} <= set(record["rows"]):
        raise SystemExit(f"{path} lacks the population or default row: run experiments/table1.py --dataset {record['dataset']} first")
    render(record, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
