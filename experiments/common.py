"""Shared pieces of the paper-reproduction scripts (table1.py, figure*.py, mode_collapse.py).

What lives here: where results go, how compute is measured (CPU-seconds of this process and
of every process Ray starts for us), one default run of Algorithm 1 traced on validation data,
one population run through :func:`raygan.tune.run_experiment` with its per-trial curves and
PBT's exploit events, and the Parzen scoring every Table 1 row goes through.

The scripts import this as ``common`` (they run as ``python experiments/<script>.py``, which
puts ``experiments/`` on ``sys.path``; the tests add it themselves).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import math
import os
import platform
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raygan import hyperparameters, keys, parzen
from raygan.algorithm import GANTrainer
from raygan.config import EvalConfig, ExperimentConfig, replace
from raygan.files import atomic_write_json
from raygan.models import Generator, generate, save_generator

EXPERIMENTS_DIR = Path(__file__).resolve().parent
REPO_DIR = EXPERIMENTS_DIR.parent
RESULTS_DIR = EXPERIMENTS_DIR / "results"  # git-ignored: numbers, generators, Ray's experiment dirs
DOCS_DIR = REPO_DIR / "docs"


# --------------------------------------------------------------------------------------------
# Files and the machine.


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` as indented JSON, atomically, creating the folder; NaN/inf become null."""
    atomic_write_json(path, _finite(value))


def read_json(path: Path) -> Any:
    """Read a JSON file written by :func:`write_json`."""
    return json.loads(Path(path).read_text())


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def hardware() -> dict[str, Any]:
    """The CPU model, core count, load and library versions, for the write-up."""
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "loadavg_1_5_15": [round(x, 2) for x in load],
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def require_matplotlib() -> Any:
    """matplotlib.pyplot on the Agg backend; it is not a raygan dependency, so say what to install."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("this figure needs matplotlib, which raygan does not install: pip install matplotlib") from None
    return plt


# --------------------------------------------------------------------------------------------
# Compute: CPU-seconds, measured.


@dataclass
class Compute:
    """CPU-seconds and wall seconds of a piece of work, by part (e.g. ``train``, ``eval``)."""

    cpu_s: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def total_cpu_s(self) -> float:
        return float(sum(self.cpu_s.values()))

    def as_dict(self) -> dict[str, Any]:
        return {"cpu_s": {k: round(v, 2) for k, v in self.cpu_s.items()}, "total_cpu_s": round(self.total_cpu_s, 2), "wall_s": round(self.wall_s, 2)}


@contextlib.contextmanager
def cpu_timer(compute: Compute, part: str) -> Iterator[None]:
    """Add this process's CPU-seconds (all its threads) spent in the block to ``compute.cpu_s[part]``."""
    start = time.process_time()
    try:
        yield
    finally:
        compute.cpu_s[part] = compute.cpu_s.get(part, 0.0) + time.process_time() - start


class ProcessTreeCpu:
    """CPU-seconds of every process this one starts (Ray's raylet, GCS, workers), sampled each second.

    Ray's trials and its evaluator run in worker processes, not in this one, so
    ``time.process_time()`` cannot see them. A thread walks this process's descendants once a
    second and keeps each one's latest user+system time; a process that exits between two
    samples loses at most its last second. Processes are put into classes by their command
    line (``ray::ResourceTrainable`` trials, ``ray::ParzenEvaluator``, the rest of Ray).
    """

    # Tune runs GANTrainable as ``ResourceTrainable`` (tune.with_resources' wrapper class).
    CLASSES = (("ParzenEvaluator", "evaluator"), ("ResourceTrainable", "trials"), ("GANTrainable", "trials"))

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self._seen: dict[tuple[int, int], tuple[str, float]] = {}  # (pid, start time) -> (class, CPU-s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._proc = Path("/proc")
        self._available = (self._proc / "self" / "stat").is_file()  # Linux; elsewhere by_class() is None
        self._tick = os.sysconf("SC_CLK_TCK") if self._available else 100

    def __enter__(self) -> ProcessTreeCpu:  # noqa: PYI034  (typing.Self needs Python 3.11)
        if self._available:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._sample()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _stat(self, pid: int) -> tuple[int, float, int] | None:
        """(parent pid, user + system CPU-s, start time in ticks) from /proc/<pid>/stat, or None if it is gone."""
        try:
            fields = (self._proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        # After the command: state, ppid, ..., utime (11), stime (12), ..., starttime (19).
        return int(fields[1]), (int(fields[11]) + int(fields[12])) / self._tick, int(fields[19])

    def _sample(self) -> None:
        if not self._available:
            return
        stats = {}
        for entry in self._proc.iterdir():
            if entry.name.isdigit() and (st := self._stat(int(entry.name))) is not None:
                stats[int(entry.name)] = st
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in stats.items():
            children.setdefault(ppid, []).append(pid)
        stack = list(children.get(os.getpid(), []))
        while stack:  # every descendant: Ray's processes, the workers they start
            pid = stack.pop()
            stack.extend(children.get(pid, []))
            _, cpu_s, started = stats[pid]
            try:
                cmd = (self._proc / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            key = (pid, started)
            old_class = self._seen.get(key, ("ray", 0.0))[0]
            klass = next((name for marker, name in self.CLASSES if marker in cmd), old_class)
            self._seen[key] = (klass, cpu_s)

    def by_class(self) -> dict[str, float] | None:
        """CPU-seconds per class of process (None where /proc is unavailable: not Linux)."""
        if not self._available:
            return None
        out: dict[str, float] = {}
        for klass, seconds in self._seen.values():
            out[klass] = out.get(klass, 0.0) + seconds
        return out


# --------------------------------------------------------------------------------------------
# Scoring.


def parzen_row(generator: Generator, valid: np.ndarray, test: np.ndarray, num_samples: int, sigmas: tuple[float, ...]) -> dict[str, float]:
    """The paper's protocol for one model: ``num_samples`` samples (fixed noise), sigma chosen on
    ``valid``, the test LL ± SE at that sigma."""
    samples = generate(generator, num_samples, seed=EvalConfig().seed)
    r = parzen.evaluate(samples, valid, test, sigmas)
    return {"parzen_valid_ll": r.valid_ll, "parzen_test_ll": r.test_ll, "parzen_test_se": r.test_se, "sigma": r.sigma}


def parzen_valid(generator: Generator, valid: np.ndarray, num_samples: int, sigmas: tuple[float, ...]) -> tuple[float, float]:
    """Validation LL at the best sigma of the grid (what trials are ranked on), and that sigma."""
    sigma, valid_ll = parzen.validation_score(generate(generator, num_samples, seed=EvalConfig().seed), valid, sigmas)
    return valid_ll, sigma


# --------------------------------------------------------------------------------------------
# One default run of Algorithm 1, traced.


@dataclass
class SingleRun:
    """A single run's validation curve, its best generator (chosen on validation) and its compute."""

    curve: list[dict[str, float]]  # {"iteration", "parzen_valid_ll", "sigma", "d_real", "d_fake"}
    best_iteration: int
    generator: Generator
    compute: Compute
    final_generator: Generator


def train_single(
    config: ExperimentConfig,
    train: np.ndarray,
    valid: np.ndarray,
    bounded: bool,
    iterations: int,
    eval_every: int,
    num_samples: int,
    threads: int = 1,
) -> SingleRun:
    """Train one G/D pair with ``config``'s settings, scoring validation every ``eval_every`` iterations.

    The generator kept is the one with the best validation LL, as a population keeps its best
    trial's best checkpoint: both rows of Table 1 are chosen on validation data, never the test set.
    CPU-seconds are split into ``train`` (Algorithm 1) and ``eval`` (sampling and Parzen scoring).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    compute, start = Compute(), time.perf_counter()
    try:
        trainer = GANTrainer(config.model, config.train, torch.from_numpy(train), bounded)
        curve: list[dict[str, float]] = []
        best = (-math.inf, 0, copy.deepcopy(trainer.sample_generator.state_dict()))
        while trainer.iteration < iterations:
            with cpu_timer(compute, "train"):
                m = trainer.run(min(eval_every, iterations - trainer.iteration))
            with cpu_timer(compute, "eval"):
                ll, sigma = parzen_valid(trainer.sample_generator, valid, num_samples, config.eval.sigmas) if m.finite else (-math.inf, math.nan)
            curve.append({"iteration": trainer.iteration, "parzen_valid_ll": ll, "sigma": sigma, "d_real": m.d_real, "d_fake": m.d_fake,
                          "cpu_s": compute.total_cpu_s})
            print(f"  iteration {trainer.iteration:>6}: valid LL {ll:8.1f} (sigma {sigma:.3f})  D(x) {m.d_real:.3f}  D(G(z)) {m.d_fake:.3f}"
                  f"  [{compute.total_cpu_s:.0f} CPU-s]", flush=True)
            if ll > best[0]:
                best = (ll, trainer.iteration, copy.deepcopy(trainer.sample_generator.state_dict()))
            if not m.finite:
                break
    finally:
        torch.set_num_threads(before)
    compute.wall_s = time.perf_counter() - start
    kept = Generator(trainer.generator.config, trainer.generator.data_shape, trainer.generator.bounded)
    kept.load_state_dict(best[2])
    return SingleRun(curve, best[1], kept.eval(), compute, trainer.sample_generator.eval())


# --------------------------------------------------------------------------------------------
# A population, through raygan.tune.run_experiment.


@dataclass
class PopulationRun:
    """A population's report, its per-trial curves, PBT's exploit events and its compute."""

    report: Any
    curves: dict[str, list[dict[str, float]]]
    exploits: list[dict[str, Any]]
    compute: Compute


def run_population(config: ExperimentConfig, dataset: Any, verbose: int = 1) -> PopulationRun:
    """Run ``config`` with :func:`raygan.tune.run_experiment`, measuring every process's CPU-seconds.

    An existing experiment directory of the same name (a previous run of these scripts: their
    storage path is their own results folder) is removed first: results are outputs, never inputs.
    """
    from raygan.tune import experiment_path, run_experiment

    path = Path(experiment_path(config))
    if path.exists():
        shutil.rmtree(path)
    # Ray's memory monitor kills workers when the whole machine is nearly out of memory, even when
    # the memory is another program's: on a shared machine that killed our evaluator mid-run.
    # Without it, the kernel's OOM killer picks the largest process instead.
    os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
    compute, start = Compute(), time.perf_counter()
    with ProcessTreeCpu() as tree, cpu_timer(compute, "driver"):
        report = run_experiment(config, dataset=dataset, verbose=verbose)
    compute.wall_s = time.perf_counter() - start
    compute.cpu_s.update(tree.by_class() or {})
    return PopulationRun(report, read_trial_curves(path), read_exploits(path), compute)


def read_trial_curves(path: Path) -> dict[str, list[dict[str, float]]]:
    """Each trial's results from its ``progress.csv``: Tune step, Algorithm 1 iteration, validation LL."""
    curves: dict[str, list[dict[str, float]]] = {}
    for progress in sorted(Path(path).glob("*/progress.csv")):
        rows = []
        with open(progress, newline="") as f:
            for r in csv.DictReader(f):
                rows.append(
                    {
                        "step": int(r["training_iteration"]),
                        "iteration": int(float(r["algorithm/iteration"])),
                        "parzen_valid_ll": _float(r.get(keys.PARZEN_VALID_LL)),
                        "fd": _float(r.get(keys.FD)),
                        "classes_covered": _float(r.get(keys.CLASSES_COVERED)),
                        "sigma": _float(r.get(keys.SIGMA)),
                        "tag": r.get("experiment_tag", ""),
                        "trial_id": r.get("trial_id", progress.parent.name),
                    }
                )
        if rows:
            curves[rows[0]["trial_id"]] = rows
    return curves


def read_exploits(path: Path) -> list[dict[str, Any]]:
    """PBT's exploit events from ``pbt_global.txt``: who copied whom, at which Tune step, to what config."""
    log = Path(path) / "pbt_global.txt"
    if not log.is_file():
        return []
    events = []
    for line in log.read_text().splitlines():
        target, donor, target_step, donor_step, _old, new = json.loads(line)
        events.append(
            {
                "target_tag": target,
                "donor_tag": donor,
                "target_step": int(target_step),
                "donor_step": int(donor_step),
                "new_config": {k: new.get(k) for k in hyperparameters.names() if k in new},
            }
        )
    return events


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def paper_config(path: Path | str | None = None, **sections: dict[str, Any]) -> ExperimentConfig:
    """``experiments/mnist_paper.yaml`` (or ``path``) with nested overrides, e.g. ``data={"name": ...}``."""
    from raygan.config import load_config

    return load_config(path or EXPERIMENTS_DIR / "mnist_paper.yaml", sections)


def with_model(config: ExperimentConfig, **changes: Any) -> ExperimentConfig:
    """``config`` with some model settings changed (the tests shrink the networks)."""
    return replace(config, model=replace(config.model, **changes)) if changes else config


def save_generator_to(path: Path, generator: Generator) -> str:
    """Save a generator (atomically, creating the folder) and return its path as a string."""
    save_generator(path, generator)
    return str(path)


def save_figure(fig: Any, out: Path, dpi: int = 100) -> None:
    """Write a matplotlib figure to ``out`` (creating the folder), close it, and say where it went."""
    plt = require_matplotlib()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    print(f"wrote {out} ({out.stat().st_size // 1024} KB)")
