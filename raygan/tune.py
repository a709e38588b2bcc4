"""``python -m raygan.tune``: a population of GANs trained and ranked with Ray Tune.

Flags and an optional YAML file fill an :class:`~raygan.config.ExperimentConfig`;
:func:`run_experiment` runs it and returns a :class:`Report`; :func:`main` prints the
leaderboard and the best trial's numbers. User errors become one sentence and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from raygan.config import ExperimentConfig, load_config, to_dict
from raygan.errors import UserError

DEFAULT_GPU_FRACTION = 0.25  # four trials share one GPU


@dataclass(frozen=True)
class TrialRow:
    """One line of the leaderboard: a trial, its final hyperparameters and its validation score."""

    trial_id: str
    parzen_valid_ll: float
    config: dict[str, Any]
    iterations: int
    status: str


@dataclass(frozen=True)
class Report:
    """What an experiment produced: the leaderboard, the best trial's scores, where things are."""

    leaderboard: list[TrialRow]
    summary: dict[str, Any]
    reference: dict[str, Any]
    experiment_path: str
    best_dir: str
    extra: dict[str, Any] = field(default_factory=dict)


def experiment_path(config: ExperimentConfig) -> str:
    """``<storage_path>/<name>``, with ``~`` expanded for local paths (URIs are left alone)."""
    storage = config.tune.storage_path
    if "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())
    return f"{storage.rstrip('/')}/{config.tune.name}"


def _is_uri(path: str) -> bool:
    return "://" in path


def _check_storage(storage: Path) -> None:
    """A local storage path must be a writable directory, or creatable in one (checked before Ray starts)."""
    existing = storage
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write results under {str(storage)!r}: {str(existing)!r} is not a writable directory; pass --storage-path DIR")


def _init_ray(config: ExperimentConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    if config.tune.address is not None:
        ray.init(address=config.tune.address, log_to_driver=False)
        return
    # Locally, the evaluator is idle most of the time: it gets its own logical CPU on top of
    # the machine's cores so that it does not take a trial's place.
    ray.init(num_cpus=(os.cpu_count() or 1) + math.ceil(config.eval.cpus), include_dashboard=False, log_to_driver=False)


def _gpus_per_trial(config: ExperimentConfig) -> float:
    import ray

    if config.tune.gpus_per_trial is not None:
        return config.tune.gpus_per_trial
    return DEFAULT_GPU_FRACTION if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def _check_resources(config: ExperimentConfig) -> None:
    """Refuse what a local Ray can never start: nothing joins it later, so such a trial (or the
    evaluator) would wait, PENDING, until the time budget ran out. A cluster may scale up: no check."""
    import ray

    if config.tune.address is not None:
        return
    have = ray.cluster_resources()
    asks = (
        ("a trial", "CPU", config.tune.cpus_per_trial, "--cpus-per-trial"),
        ("a trial", "GPU", _gpus_per_trial(config), "--gpus-per-trial"),
        ("the evaluator", "CPU", config.eval.cpus, "eval.cpus"),
        ("the evaluator", "GPU", config.eval.gpus or 0.0, "eval.gpus"),
    )
    for who, resource, amount, setting in asks:
        if amount > have.get(resource, 0.0):
            raise UserError(f"{who} asks for {amount:g} {resource}s but this machine's Ray has {have.get(resource, 0.0):g}; lower {setting}")


def _leaderboard(results: Any) -> list[TrialRow]:
    from raygan.search import METRIC
    from raygan.trainable import HYPERPARAMETERS

    rows = []
    for result in results:
        metrics = result.metrics or {}
        score = metrics.get(METRIC, -math.inf)
        score = -math.inf if score is None or (isinstance(score, float) and math.isnan(score)) else float(score)
        rows.append(
            TrialRow(
                trial_id=metrics.get("trial_id", Path(result.path).name),
                parzen_valid_ll=score,
                config={k: v for k, v in (result.config or {}).items() if k in HYPERPARAMETERS},  # None: never reported
                iterations=int(metrics.get("training_iteration", 0)),
                status="ERROR" if result.error else "OK",
            )
        )
    return sorted(rows, key=lambda r: r.parzen_valid_ll, reverse=True)


def _write_best(best_dir: Path, checkpoint_dir: Path, trial_config: dict[str, Any], summary: dict[str, Any], samples: Any) -> None:
    """best/: generator.pt, config.yaml, summary.json, samples.png; every file written atomically."""
    import torchvision

    from raygan.files import atomic_write_bytes, atomic_write_json, atomic_write_text
    from raygan.trainable import GENERATOR_FILE, experiment_from_trial_config

    best_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(best_dir / "generator.pt", (checkpoint_dir / GENERATOR_FILE).read_bytes())
    config_yaml = yaml.safe_dump(to_dict(experiment_from_trial_config(trial_config)), sort_keys=False)
    atomic_write_text(best_dir / "config.yaml", config_yaml)
    atomic_write_json(best_dir / "summary.json", summary)
    with tempfile.TemporaryDirectory(dir=best_dir) as tmp:
        torchvision.utils.save_image(samples[:100], Path(tmp) / "samples.png", nrow=10, padding=1)
        os.replace(Path(tmp) / "samples.png", best_dir / "samples.png")


def _progress_reporter() -> Any:
    """The live table: each trial's hyperparameters, D(x), D(G(z)) and Parzen validation LL."""
    from ray.tune import CLIReporter

    from raygan.search import METRIC

    return CLIReporter(
        parameter_columns={"k": "k", "lr_d": "lr_d", "lr_g": "lr_g", "momentum": "momentum", "prior": "prior", "g_loss": "g_loss"},
        metric_columns={
            "training_iteration": "steps",
            "algorithm/iteration": "iters",
            "d/real": "D(x)",
            "d/fake": "D(G(z))",
            METRIC: "parzen_valid_ll",
            "perf/iterations_per_s": "iter/s",
        },
        sort_by_metric=True,  # metric and mode come from the TuneConfig
        max_report_frequency=20,
        max_progress_rows=32,
    )


def run_experiment(config: ExperimentConfig, dataset: Any = None, verbose: int = 1, callbacks: Sequence[Any] = ()) -> Report:
    """Train and rank a population, then report the best trial's test log-likelihood once.

    Args:
        config: the experiment.
        dataset: a loaded data set (``.train/.valid/.test`` arrays, ``.bounded``) to use instead
            of loading ``config.data`` (tests pass small ones).
        verbose: Tune's verbosity (0 silent, 1 a progress table).
        callbacks: extra ``ray.tune.Callback`` objects (loggers, trackers, benchmarks' clocks).

    Returns:
        The leaderboard, the best trial's summary (also in ``<experiment>/best/summary.json``),
        and the held-out-data reference.

    Raises:
        UserError: bad settings, missing data, or an existing experiment without ``resume``.
        KeyboardInterrupt: the run was interrupted (Ctrl-C); its state is saved for ``resume``.
    """
    import ray
    import torch
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from raygan.data import load_dataset
    from raygan.evaluator import evaluator_name, get_or_create_evaluator
    from raygan.models import generate, load_generator
    from raygan.monitor import write_experiment_summary
    from raygan.search import CTRL_C, METRIC, MODE, NoteCtrlC, param_space, tune_config
    from raygan.trainable import EVAL_SEED, with_data

    path = experiment_path(config)
    if not _is_uri(path):
        _check_storage(Path(path).parent)
    if not _is_uri(path) and not config.tune.resume and Path(path).exists():
        raise UserError(f"experiment {path!r} already exists; pass --resume to continue it or --name for a new one")
    if config.tune.resume and not tune.Tuner.can_restore(path):
        raise UserError(f"nothing to resume at {path!r}; run without --resume to start the experiment")
    if dataset is None:
        dataset = load_dataset(config.data.name, config.data.root, download=config.data.download, seed=config.tune.seed)
    tune_config(config)  # validates the scheduler settings before Ray starts

    # Tune's newer console output ignores progress reporters; ours shows the GAN's numbers.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Trials write their own TensorBoard events (raygan.monitor); Tune's automatic TBX logger would
    # add a copy of every result under ray/tune/* tags and a second HParams session to each run.
    # Its CSV and JSON loggers (progress.csv, result.json: what Tune's analysis reads) are passed
    # explicitly below.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    _init_ray(config)
    _check_resources(config)
    # References held here for the whole run: a restarted evaluator reloads its data from them.
    splits = [ray.put(part) for part in (dataset.valid, dataset.test, dataset.train)]
    evaluator = get_or_create_evaluator(*splits, config.eval, name=evaluator_name(config.tune.name))
    trainable = with_data({"train": dataset.train, "bounded": dataset.bounded}, config.tune.cpus_per_trial, _gpus_per_trial(config))
    run_config = tune.RunConfig(
        name=config.tune.name,
        storage_path=path.rsplit("/", 1)[0],
        stop={"training_iteration": config.tune.max_iterations},
        failure_config=tune.FailureConfig(max_failures=config.tune.max_failures),
        checkpoint_config=tune.CheckpointConfig(
            # The most recent four, not the best four by score: PBT's exploit restores the donor's
            # latest checkpoint, which a score-ranked policy may already have deleted (the trial
            # then fails to restore and errors out).
            num_to_keep=4,
            checkpoint_frequency=config.tune.checkpoint_every,
            checkpoint_at_end=True,
        ),
        verbose=verbose,
        progress_reporter=_progress_reporter(),
        callbacks=[*callbacks, CSVLoggerCallback(), JsonLoggerCallback(), NoteCtrlC()],
        # On remote storage the trials' TensorBoard events are written to their working directories
        # (raygan.trainable.trial_log_dir): Tune uploads those with each checkpoint.
        sync_config=tune.SyncConfig(sync_artifacts=_is_uri(path)),
    )
    if config.tune.resume:
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(trainable, param_space=param_space(config), tune_config=tune_config(config), run_config=run_config)
    CTRL_C.clear()
    results = tuner.fit()
    if CTRL_C.is_set():
        # Tune ends fit() early on Ctrl-C, after saving the experiment's state: say so (main tells
        # the user to --resume) rather than rank unfinished trials and write best/ from one.
        raise KeyboardInterrupt

    leaderboard = _leaderboard(results)
    if not any(math.isfinite(row.parzen_valid_ll) for row in leaderboard):
        # Nothing to rank (Tune would still name a lone trial "best", NaN generator and all).
        if any((r.metrics or {}).get("diverged") for r in results):
            raise UserError("every trial diverged (NaN or infinite losses); lower the learning rates (search.lr_d, search.lr_g) or keep D's max-norm (model.d_max_norm)")
        raise UserError("no trial was scored; give the experiment more time (--time-budget-s, --max-iterations)")
    # The leaderboard's first trial, in its final state (checkpoint_at_end): what the user sees
    # ranked first is what gets reported and saved.
    best = results.get_best_result(metric=METRIC, mode=MODE, scope="last", filter_nan_and_inf=True)
    checkpoint = best.checkpoint
    if checkpoint is None:
        raise UserError("no trial produced a checkpoint; give the experiment more time (--time-budget-s, --max-iterations)")
    with checkpoint.as_directory() as checkpoint_dir:
        generator = load_generator(Path(checkpoint_dir) / "generator.pt")
        samples = generate(generator, config.eval.num_samples, seed=EVAL_SEED)
        scores = ray.get(evaluator.score_test.remote(ray.put(samples.numpy())))
        reference = ray.get(evaluator.reference.remote())
        summary = {
            **{k: scores[k] for k in ("parzen_valid_ll", "parzen_test_ll", "parzen_test_se", "sigma")},
            "trial_id": best.metrics.get("trial_id"),
            "training_iteration": best.metrics.get("training_iteration"),
            "config": {k: v for k, v in best.config.items() if k != "experiment"},
            "reference": {k: reference[k] for k in ("parzen_valid_ll", "parzen_test_ll", "parzen_test_se", "sigma")},
            "dataset": config.data.name,
            "num_samples": config.eval.num_samples,
            "ranking_samples": min(config.eval.ranking_samples, config.eval.num_samples),
        }
        with tempfile.TemporaryDirectory() as staging:
            local_best = Path(path) / "best" if not _is_uri(path) else Path(staging) / "best"
            _write_best(local_best, Path(checkpoint_dir), best.config, summary, torch.as_tensor(samples))
            # The leaderboard and the best trial's numbers as one more TensorBoard run, <experiment>/summary.
            write_experiment_summary(local_best.parent / "summary", [dataclasses.asdict(row) for row in leaderboard], summary)
            if _is_uri(path):
                import pyarrow.fs

                pyarrow.fs.copy_files(str(local_best), f"{path}/best")
                pyarrow.fs.copy_files(str(local_best.parent / "summary"), f"{path}/summary")
    return Report(leaderboard, summary, reference, path, f"{path}/best")


# --------------------------------------------------------------------------------------------
# The command line.


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m raygan.tune",
        description="Train a population of GANs (Goodfellow et al., 2014) with Ray Tune and rank them by Parzen log-likelihood.",
    )
    p.add_argument("--config", help="YAML file with sections data/model/train/eval/search/tune (see experiments/)")
    p.add_argument("--dataset", help="mnist5k (default), fashion-mnist, mnist, cifar10, toy-1d, ring-8, grid-25")
    p.add_argument("--data-root", help="directory holding the data set's files")
    p.add_argument("--num-trials", type=int, help="population size")
    p.add_argument("--scheduler", help="pbt (default), asha or random")
    p.add_argument("--cpus-per-trial", type=float)
    p.add_argument("--gpus-per-trial", type=float, help="GPU fraction per trial (default 0.25 where the cluster has GPUs, else 0)")
    p.add_argument("--time-budget-s", type=float, help="stop the whole search after this many seconds")
    p.add_argument("--max-iterations", type=int, help="Tune steps per trial (one epoch each by default)")
    p.add_argument("--storage-path", help="where results go (default ~/raygan_results; s3:// and other Tune storage work)")
    p.add_argument("--name", help="experiment name (a directory under the storage path)")
    p.add_argument("--resume", action="store_true", default=None, help="continue the experiment of the same name")
    p.add_argument("--address", help="join a running Ray cluster ('auto'); default: start a local Ray")
    p.add_argument("--seed", type=int, help="seeds the search's draws")
    return p


_FLAGS = {  # flag -> (section, setting)
    "dataset": ("data", "name"),
    "data_root": ("data", "root"),
    **{
        k: ("tune", k)
        for k in (
            "num_trials",
            "scheduler",
            "cpus_per_trial",
            "gpus_per_trial",
            "time_budget_s",
            "max_iterations",
            "storage_path",
            "name",
            "resume",
            "address",
            "seed",
        )
    },
}


def config_from_args(argv: Sequence[str] | None = None) -> ExperimentConfig:
    """Parse the command line (and the YAML file it names) into an ExperimentConfig."""
    args = _parser().parse_args(argv)
    overrides: dict[str, dict[str, Any]] = {}
    for flag, (section, key) in _FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides.setdefault(section, {})[key] = value
    return load_config(args.config, overrides)


def format_report(report: Report) -> str:
    """The leaderboard and the best trial's numbers, as the user sees them at the end."""
    from raygan.trainable import HYPERPARAMETERS

    s, r = report.summary, report.reference
    lines = ["", f"Leaderboard (Parzen validation log-likelihood in nats, {s['ranking_samples']:,} samples per trial):"]
    names = [h for h in HYPERPARAMETERS if h != "seed"]
    cells = [[_fmt(row.config.get(h)) for h in names] for row in report.leaderboard]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(names)]
    lines.append(f"  {'#':>2}  {'trial':<24} {'valid LL':>9}  {'steps':>5}  " + "  ".join(f"{h:>{w}}" for h, w in zip(names, widths)))
    for i, (row, values) in enumerate(zip(report.leaderboard, cells), 1):
        columns = "  ".join(f"{v:>{w}}" for v, w in zip(values, widths))
        lines.append(f"  {i:>2}  {row.trial_id:<24} {row.parzen_valid_ll:>9.1f}  {row.iterations:>5}  {columns}")
    lines += [
        "",
        f"Best trial {s['trial_id']} ({s['num_samples']:,} samples): Parzen test log-likelihood {s['parzen_test_ll']:.1f} ± {s['parzen_test_se']:.1f} nats"
        f" (sigma {s['sigma']:.3f} chosen on validation; validation LL {s['parzen_valid_ll']:.1f})",
        f"Held-out-data reference (real training images as Parzen centres): {r['parzen_test_ll']:.1f} ± {r['parzen_test_se']:.1f} nats"
        f" (sigma {r['sigma']:.3f})",
        f"Best generator, config, summary and samples: {report.best_dir}/",
        f"TensorBoard: tensorboard --logdir {report.experiment_path}",
    ]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m raygan.tune``; returns the exit code."""
    try:
        config = config_from_args(argv)
        report = run_experiment(config)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; checkpoints are kept: run again with --resume to continue", file=sys.stderr)
        return 130
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
