"""Scale: 8, 32 and 64 trials of raygan.tune on Ray's fake multi-node provider, measured side by side.

    python experiments/benchmarks/bench_scale.py                        # 8, 32, 64 trials, then 8 again
    python experiments/benchmarks/bench_scale.py --trials 8,64 --replicas 1 --json

Each trial count gets a fresh local cluster, as experiments/cluster_local.py builds it (its own
temp dir, ports and token; every process it starts is stopped by id at the end): a head node
that declares one CPU per evaluator replica, where the driver and the replicas run, and CPU
worker nodes that Ray's autoscaler adds for the trials. The worker nodes' declared CPUs bound
how many trials run at once (``--workers`` x ``--cpus-per-worker``, one CPU per trial), so a
running trial has the same share of the machine at 8, 32 and 64 trials (``tune.reallocate: none``:
no trial is handed the CPUs of those that finished); the rest wait, and PBT
(this benchmark's scheduler: the one whose exploits the disk budget must not break) pauses each trial at its perturbation until the others catch up, so the
population moves through the steps in waves. Training and scoring are both ten times shorter
than the default run's (``--iterations-per-step`` 25 of 250, ``--ranking-samples`` 1,000 of
10,000), so the evaluators' share of the work is the default run's.

Printed per trial count, from Tune's result files and from /proc sampled while it runs:
  - the evaluator queue's wait (``eval/queue_seconds``), median and max, against a step's
    median time (training plus evaluation);
  - the driver's peak RSS (VmHWM) and CPU seconds;
  - the process tree's peak PSS (driver, Ray's daemons on every fake node, trial actors,
    evaluator replicas) and per running trial, and a trial actor's median PSS;
  - the checkpoints' bytes on disk (peak while running, and at the end), the most any trial held,
    against the budget (``tune.checkpoints_kept`` per trial);
  - each trial's median Algorithm 1 iterations/s (its own training time, steps after its first),
    the population's median against the first 8-trial run's.

What it does not show: more than ``--workers`` x ``--cpus-per-worker`` trials training at once.
This machine holds about ten trial processes (each imports torch, Ray Tune and raygan: ~0.4 GB
before any work, ~0.6 GB training), so the evaluator queue here is the queue of that many
concurrent trials, whatever the population size. Wall times share two cores with other jobs:
read the load averages printed beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

EXPERIMENTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(EXPERIMENTS))

import cluster_local  # noqa: E402  (experiments/ is not a package)

from raygan import keys  # noqa: E402
from raygan.files import checkpoint_usage  # noqa: E402

NAME = "scale"
WORKER_TYPE = "ray.worker.cpu"
SAMPLE_S = 3.0
GB = 1024**3


def scale_cluster(workers: int, cpus_per_worker: int, replicas: int) -> dict:
    """A cluster config in cluster.yaml's schema: a head with a CPU per evaluator replica, and up
    to ``workers`` CPU workers that the autoscaler starts when trials wait."""
    return {
        "cluster_name": "raygan-scale",
        "max_workers": workers,
        "upscaling_speed": float(workers),  # every worker at once, as soon as trials wait
        "idle_timeout_minutes": 10,
        "head_node_type": "head",
        "available_node_types": {
            "head": {"resources": {"CPU": replicas}},
            WORKER_TYPE: {"resources": {"CPU": cpus_per_worker}, "min_workers": 0, "max_workers": workers},
        },
    }


def experiment(args: argparse.Namespace) -> dict:
    """The population's settings (the trial count comes as --num-trials)."""
    return {
        "data": {"name": "mnist5k"},
        "eval": {"num_samples": args.ranking_samples, "ranking_samples": args.ranking_samples, "every": 2,
                 "replicas": args.replicas, "cpus": 1.0},
        "search": {"perturbation_interval": 2},
        "tune": {"scheduler": args.scheduler, "reallocate": "none", "cpus_per_trial": 1.0, "gpus_per_trial": 0.0, "time_budget_s": None,
                 "max_iterations": args.steps, "iterations_per_step": args.iterations_per_step, "checkpoint_every": 2,
                 "checkpoints_kept": args.checkpoints_kept, "max_failures": 1},
        "mixture": {"members": 1},
    }


# ------------------------------------------------------------------------------ sampling /proc


def _status_kb(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1])
    return 0


def _pss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _kind(pid: int, driver: int, trials: set[int]) -> str:
    if pid == driver:
        return "driver"
    if pid in trials:  # the processes that reported trial results (Tune reuses them for trial after trial)
        return "trial"
    if b"EvaluatorReplica" in Path(f"/proc/{pid}/cmdline").read_bytes():  # Ray titles an actor's process by its class
        return "evaluator"
    return "ray"


def trial_pids(experiment: Path) -> set[int]:
    """The processes that reported a trial result so far (Tune's result.json holds each one's pid)."""
    pids = set()
    for path in experiment.glob("*/result.json"):
        for line in path.read_text().splitlines():
            try:
                pids.add(json.loads(line)["pid"])
            except (ValueError, KeyError):
                continue  # a line being written
    return pids


@dataclass
class Samples:
    """Peaks of what /proc and the experiment's storage showed while the run went on."""

    driver_hwm_kb: int = 0
    driver_cpu_s: float = 0.0
    tree_pss_kb: int = 0
    trials_at_tree_peak: int = 0
    trial_pss_kb: list[int] = field(default_factory=list)
    evaluator_pss_kb: list[int] = field(default_factory=list)
    most_trials_running: int = 0
    checkpoint_bytes: int = 0
    most_checkpoints_per_trial: int = 0

    def take(self, driver: int, pids: list[int], experiment: Path) -> None:
        by_kind: dict[str, list[int]] = {"driver": [], "trial": [], "evaluator": [], "ray": []}
        trials = trial_pids(experiment) if experiment.exists() else set()
        for pid in pids:
            try:
                kind = _kind(pid, driver, trials)
                by_kind[kind].append(_pss_kb(pid))
                if kind == "driver":
                    self.driver_hwm_kb = max(self.driver_hwm_kb, _status_kb(pid, "VmHWM"))
                    self.driver_cpu_s = _cpu_s(pid)
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue  # a process that ended between the listing and the read
        total = sum(sum(v) for v in by_kind.values())
        if total > self.tree_pss_kb:
            self.tree_pss_kb, self.trials_at_tree_peak = total, len(by_kind["trial"])
        self.trial_pss_kb += by_kind["trial"]
        self.evaluator_pss_kb += by_kind["evaluator"]
        self.most_trials_running = max(self.most_trials_running, len(by_kind["trial"]))
        if experiment.exists():
            usage = checkpoint_usage(str(experiment))
            self.checkpoint_bytes = max(self.checkpoint_bytes, usage.bytes)
            self.most_checkpoints_per_trial = max(self.most_checkpoints_per_trial, usage.most_per_trial)


# ------------------------------------------------------------------------------ one run


class ScaleRun(cluster_local.Rehearsal):
    """One fake cluster and one raygan.tune run of ``trials`` trials on it."""

    def __init__(self, cluster: dict, config_path: Path, trials: int, per_step: int, timeout_s: float) -> None:
        super().__init__(cluster_local.Options(timeout_s=timeout_s), cluster)
        self.config_path, self.trials, self.per_step = config_path, trials, per_step
        self.experiment = self.storage / NAME

    def run_tune(self) -> tuple[int, float, Samples]:
        command = [sys.executable, "-m", "raygan.tune", "--address", "auto", "--config", str(self.config_path),
                   "--storage-path", str(self.storage), "--name", NAME, "--num-trials", str(self.trials)]
        env = {**self.env, "RAY_ADDRESS": self.address}
        del env["RAY_FAKE_CLUSTER"]
        samples = Samples()
        start = time.monotonic()
        with open(self.temp / "tune.log", "w") as log:
            process = subprocess.Popen(command, cwd=cluster_local.ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self.sessions.ids.add(process.pid)
        while process.poll() is None:
            if time.monotonic() - start > self.options.timeout_s:
                raise cluster_local.RehearsalError(f"the tune run took longer than {self.options.timeout_s:g} s")
            samples.take(process.pid, self.sessions.pids(), self.experiment)
            time.sleep(SAMPLE_S)
        return process.returncode, time.monotonic() - start, samples

    def measure(self) -> dict[str, Any]:
        self.start_cluster()
        load_before = os.getloadavg()[0]
        code, seconds, samples = self.run_tune()
        if code != 0:
            raise cluster_local.RehearsalError(f"raygan.tune ended with exit code {code}:\n{cluster_local._tail(self.temp / 'tune.log')}")
        results = read_results(self.experiment)
        end = checkpoint_usage(str(self.experiment))
        return summarise(self.trials, self.per_step, results, samples, end, seconds, load_before, os.getloadavg()[0])


def read_results(experiment: Path) -> dict[str, list[dict]]:
    """Each trial's results in order (Tune's result.json), the keys this benchmark reads."""
    wanted = (keys.TRAINING_ITERATION, "pid", keys.ITERATIONS_PER_S, keys.ITERATIONS_PER_CPU_S, keys.QUEUE_SECONDS,
              keys.EVAL_SECONDS, keys.DIVERGED)
    trials: dict[str, list[dict]] = {}
    for path in sorted(experiment.glob("*/result.json")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            trials[rows[0][keys.TRIAL_ID]] = [{k: row.get(k) for k in wanted} for row in rows]
    return trials


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and x == x and abs(x) != float("inf")


def summarise(trials: int, per_step: int, results: dict[str, list[dict]], samples: Samples, end: Any, seconds: float,
              load_before: float, load_after: float) -> dict[str, Any]:
    """One trial count's figures (see the module docstring); ``per_step``: iterations per Tune step."""
    rows = [r for rs in results.values() for r in rs]
    waits = [r[keys.QUEUE_SECONDS] for r in rows if _finite(r[keys.QUEUE_SECONDS])]
    trained = [r for r in rows if _finite(r[keys.ITERATIONS_PER_S]) and r[keys.ITERATIONS_PER_S] > 0]
    step_s = [per_step / r[keys.ITERATIONS_PER_S] + (r[keys.EVAL_SECONDS] or 0.0) for r in trained]
    per_trial, per_trial_cpu = [], []
    for rs in results.values():
        steps = [r for r in rs[1:] if _finite(r[keys.ITERATIONS_PER_S]) and r[keys.ITERATIONS_PER_S] > 0]
        if steps:
            per_trial.append(statistics.median(r[keys.ITERATIONS_PER_S] for r in steps))
            per_trial_cpu.append(statistics.median(r[keys.ITERATIONS_PER_CPU_S] for r in steps))
    shares = [r[keys.ITERATIONS_PER_S] / r[keys.ITERATIONS_PER_CPU_S] for r in trained]  # CPU s per wall s while training
    checkpoint_size = end.bytes / end.checkpoints if end.checkpoints else 0.0
    return {
        "trials": trials,
        "trials_reported": len(results),
        "wall_s": round(seconds, 1),
        "load_average": [round(load_before, 1), round(load_after, 1)],
        "most_trials_running": samples.most_trials_running,
        "queue_wait_median_s": statistics.median(waits) if waits else None,
        "queue_wait_max_s": max(waits) if waits else None,
        "scorings": len(waits),
        "step_median_s": statistics.median(step_s) if step_s else None,
        "driver_rss_peak_gb": samples.driver_hwm_kb * 1024 / GB,
        "driver_cpu_s": round(samples.driver_cpu_s, 1),
        "tree_pss_peak_gb": samples.tree_pss_kb * 1024 / GB,
        "tree_pss_peak_per_running_trial_gb": samples.tree_pss_kb * 1024 / GB / max(1, samples.trials_at_tree_peak),
        "trial_actor_pss_median_gb": statistics.median(samples.trial_pss_kb) * 1024 / GB if samples.trial_pss_kb else None,
        "evaluator_pss_median_gb": statistics.median(samples.evaluator_pss_kb) * 1024 / GB if samples.evaluator_pss_kb else None,
        "checkpoint_bytes_peak": samples.checkpoint_bytes,
        "checkpoint_bytes_end": end.bytes,
        "checkpoints_end": end.checkpoints,
        "most_checkpoints_per_trial": max(samples.most_checkpoints_per_trial, end.most_per_trial),
        "checkpoint_size_bytes": round(checkpoint_size),
        "iterations_per_s_per_trial": statistics.median(per_trial) if per_trial else None,
        "iterations_per_cpu_s_per_trial": statistics.median(per_trial_cpu) if per_trial_cpu else None,
        "cpu_share_while_training": statistics.median(shares) if shares else None,
    }


# ------------------------------------------------------------------------------ the table


def _mb(x: float) -> str:
    return f"{x / 1e6:.0f} MB"


def format_table(runs: list[dict], kept: int) -> str:
    baseline, baseline_cpu = runs[0]["iterations_per_s_per_trial"], runs[0]["iterations_per_cpu_s_per_trial"]
    lines = []
    for r in runs:
        budget = r["trials"] * kept * r["checkpoint_size_bytes"]
        wait_share = r["queue_wait_median_s"] / r["step_median_s"] if r["step_median_s"] else float("nan")
        lines += [
            f"{r['trials']} trials ({r['trials_reported']} reported; at most {r['most_trials_running']} trial actors alive at once); "
            f"{r['wall_s']:.0f} s wall, load average {r['load_average'][0]} -> {r['load_average'][1]}",
            f"  evaluator queue wait   median {r['queue_wait_median_s']:.3f} s, max {r['queue_wait_max_s']:.2f} s over "
            f"{r['scorings']} scorings; a step's median {r['step_median_s']:.2f} s: median wait {100 * wait_share:.1f} % of a step (goal < 10 %)",
            f"  driver                 peak RSS {r['driver_rss_peak_gb']:.2f} GB (goal < 2 GB), {r['driver_cpu_s']:.0f} CPU s "
            f"({r['driver_cpu_s'] / r['trials']:.2f} per trial)",
            f"  process tree           peak PSS {r['tree_pss_peak_gb']:.2f} GB, {r['tree_pss_peak_per_running_trial_gb']:.2f} GB per running trial; "
            f"a trial actor {r['trial_actor_pss_median_gb']:.2f} GB, an evaluator replica {r['evaluator_pss_median_gb']:.2f} GB (median PSS)",
            f"  checkpoints            peak {_mb(r['checkpoint_bytes_peak'])}, end {_mb(r['checkpoint_bytes_end'])} in {r['checkpoints_end']}; "
            f"at most {r['most_checkpoints_per_trial']} per trial (kept: {kept}); budget {r['trials']} x {kept} x "
            f"{r['checkpoint_size_bytes'] / 1e6:.1f} MB = {_mb(budget)}",
            f"  iterations/s per trial {r['iterations_per_s_per_trial']:.2f} (median of trials' medians): "
            f"{100 * r['iterations_per_s_per_trial'] / baseline:.0f} % of the first run's (goal >= 80 %); a running trial got "
            f"{r['cpu_share_while_training']:.2f} CPU s per second",
            f"  per CPU second         {r['iterations_per_cpu_s_per_trial']:.2f} iterations: "
            f"{100 * r['iterations_per_cpu_s_per_trial'] / baseline_cpu:.0f} % of the first run's (the trial's own speed, whatever else the machine runs)",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", default="8,32,64", help="population sizes, in the order run")
    p.add_argument("--repeat-first", action=argparse.BooleanOptionalAction, default=True,
                   help="run the first population size again at the end (how far the machine's load moved the baseline)")
    p.add_argument("--workers", type=int, default=2, help="CPU worker nodes")
    p.add_argument("--cpus-per-worker", type=int, default=2, help="CPUs each worker declares (one trial each)")
    p.add_argument("--replicas", type=int, default=2, help="evaluator replicas (eval.replicas), one declared head CPU each")
    p.add_argument("--scheduler", default="pbt", choices=["pbt", "asha", "random"])
    p.add_argument("--steps", type=int, default=6, help="Tune steps per trial (tune.max_iterations)")
    p.add_argument("--iterations-per-step", type=int, default=25)
    p.add_argument("--ranking-samples", type=int, default=1000, help="samples per scoring (eval.ranking_samples)")
    p.add_argument("--checkpoints-kept", type=int, default=2, help="tune.checkpoints_kept (PBT's fewest for these settings: 2)")
    p.add_argument("--timeout-s", type=float, default=3600.0, help="per population size")
    p.add_argument("--json", action="store_true", help="print the figures as JSON after the table")
    args = p.parse_args(argv)
    try:
        sizes = [int(n) for n in args.trials.split(",")]
    except ValueError:
        p.error(f"--trials takes population sizes, comma-separated, not {args.trials!r}")
    if min(sizes) < 1 or args.workers < 1 or args.cpus_per_worker < 1 or args.replicas < 1:
        p.error("--trials, --workers, --cpus-per-worker and --replicas must be at least 1")
    print("$ python experiments/benchmarks/bench_scale.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])))
    print(f"# {os.cpu_count()} cores visible; cluster: head with {args.replicas} CPUs (evaluator replicas, driver), "
          f"up to {args.workers} CPU workers of {args.cpus_per_worker} CPUs (trials, 1 CPU each); "
          f"{args.scheduler}, {args.steps} steps x {args.iterations_per_step} iterations, {args.ranking_samples} samples per scoring", flush=True)
    if args.repeat_first:
        sizes.append(sizes[0])
    cluster = scale_cluster(args.workers, args.cpus_per_worker, args.replicas)
    runs = []
    with tempfile.TemporaryDirectory(prefix="rgs-") as temp:
        config_path = Path(temp) / "scale.yaml"
        config_path.write_text(yaml.safe_dump(experiment(args), sort_keys=False))
        for trials in sizes:
            run = ScaleRun(cluster, config_path, trials, args.iterations_per_step, args.timeout_s)
            try:
                runs.append(run.measure())
            except cluster_local.RehearsalError as e:
                print(f"error: {e}", file=sys.stderr)
                return 1
            finally:
                left = run.stop()
                run.remove_files()
            if left:
                print(f"warning: {left} Ray processes of the {trials}-trial cluster are left", file=sys.stderr)
            print(f"# {trials} trials done in {runs[-1]['wall_s']:.0f} s", flush=True)
    print()
    print(format_table(runs, args.checkpoints_kept))
    if args.json:
        print(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
