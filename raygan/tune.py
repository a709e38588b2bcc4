"""``python -m raygan.tune``: a population of GANs trained and ranked with Ray Tune.

Flags and an optional YAML file fill an :class:`~raygan.config.ExperimentConfig`;
:func:`run_experiment` runs it in three named steps (:func:`preflight`, :func:`fit`,
:func:`report_best`) and returns a :class:`~raygan.report.Report`; :func:`main` prints it.
User errors become one sentence and exit code 2.

The first run writes the whole experiment config to ``<experiment>/experiment.yaml``; a
``--resume`` continues exactly that experiment and refuses any flag or file that would change it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from raygan import keys
from raygan.config import (
    SCHEDULERS,
    DataConfig,
    ExperimentConfig,
    TuneConfig,
    build,
    dataset_argument,
    field_docs,
    load_yaml,
    merge,
    saved_settings,
    to_dict,
)
from raygan.errors import UserError
from raygan.files import (
    DATA_SPLIT_FILE,
    DATASET_FILE,
    EXPERIMENT_FILE,
    checkpoint_usage,
    read_bytes_anywhere,
    write_bytes_anywhere,
)
from raygan.files import is_uri as _is_uri
from raygan.report import (
    Report,
    TrialRow,
    finite_or,
    format_report,
    sort_leaderboard,
    write_best,
)

# Settings a resume may change: how to reach the cluster, and the resume flag itself.
RESUMABLE_CHANGES = ("tune.resume", "tune.address", "tune.storage_path")


def experiment_path(config: ExperimentConfig) -> str:
    """``<storage_path>/<name>``, with ``~`` expanded for local paths (URIs are left alone)."""
    storage = config.tune.storage_path
    if not _is_uri(storage):
        storage = str(Path(storage).expanduser().resolve())
    return f"{storage.rstrip('/')}/{config.tune.name}"


# --------------------------------------------------------------------------------------------
# The experiment file: written once, read back by --resume.


def _write_text(path: str, text: str) -> None:
    write_bytes_anywhere(path, text.encode())


def _read_text(path: str) -> str | None:
    data = read_bytes_anywhere(path)
    return None if data is None else data.decode()


def saved_experiment(path: str) -> dict[str, Any] | None:
    """The settings an experiment's first run wrote, or None where there are none."""
    text = _read_text(f"{path}/{EXPERIMENT_FILE}")
    if text is None:
        return None
    values = yaml.safe_load(text)
    if not isinstance(values, dict):
        raise UserError(f"{path}/{EXPERIMENT_FILE} is damaged; it cannot be resumed")
    return saved_settings(values)


def saved_split(path: str) -> dict[str, Any] | None:
    """The data split an experiment on a user's data recorded (``data_split.json``), or None where there is none."""
    from raygan import userdata

    text = _read_text(f"{path}/{DATA_SPLIT_FILE}")
    return None if text is None else userdata.read_record(text, f"{path}/{DATA_SPLIT_FILE}")


def _leaves(values: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(values, dict):
        out: dict[str, Any] = {}
        for k, v in values.items():
            out.update(_leaves(v, f"{prefix}.{k}" if prefix else k))
        return out
    return {prefix: values}


def check_same_experiment(config: ExperimentConfig, saved: dict[str, Any], path: str) -> None:
    """Refuse a resume whose settings differ from the saved experiment's (naming each one)."""
    now, before = _leaves(to_dict(config)), _leaves(to_dict(build(ExperimentConfig, saved)))
    differ = [k for k in now if k not in RESUMABLE_CHANGES and now[k] != before.get(k)]
    if differ:
        changes = "; ".join(f"{k}: {before.get(k)!r} -> {now[k]!r}" for k in differ[:6])
        raise UserError(
            f"--resume continues {path!r} as it was started, but this command changes {changes}; "
            "drop those flags (or --config), or start a new experiment with --name"
        )


# --------------------------------------------------------------------------------------------
# Step 1: preflight. Everything a user can get wrong is refused here, before Ray starts.


def _check_storage(storage: Path) -> None:
    """A local storage path must be a writable directory, or creatable in one."""
    existing = storage
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write results under {str(storage)!r}: {str(existing)!r} is not a writable directory; pass --storage-path DIR")


def load_quality_model(config: ExperimentConfig, dataset: Any) -> Any:
    """The classifier that reads the samples (eval.classifier, else the data set's own, trained
    once and then loaded from its cache), or None.

    None where ``eval.quality`` is false, or unset where the data set has no labels and no
    classifier is named (:func:`quality_note` says why).

    Raises:
        UserError: ``eval.quality`` (or ``eval.rank_by: fd``) asks for the measures and there is
            neither a label nor a named classifier, or the named classifier is unusable.
    """
    wanted = config.eval.quality
    if wanted is False:
        return None
    unmeasured = config.eval.classifier is None and getattr(dataset, "train_labels", None) is None
    if unmeasured and wanted is None and config.eval.rank_by != "fd":
        return None
    from raygan import quality

    return quality.for_data(dataset, config.eval.classifier)


def quality_note(config: ExperimentConfig, dataset: Any) -> str | None:
    """Why a run on images has no FD, classes or TVD beside Parzen (one line), or None: where it has
    them, where the user turned them off (eval.quality false), and for point sets, which have their own."""
    if config.eval.quality is False or not getattr(dataset, "bounded", True):
        return None
    if config.eval.classifier is None and getattr(dataset, "train_labels", None) is None:
        name = getattr(dataset, "name", config.data.name)
        return (f"FD, classes and TVD not measured: {name} has no class labels to train a classifier on; ranked on Parzen "
                "alone (name a classifier of images of its shape with eval.classifier for FD)")
    return None


def preflight(config: ExperimentConfig, dataset: Any = None) -> tuple[str, Any, Any]:
    """Check the storage, the resume and the scheduler settings; load the data and its classifier.

    Returns:
        The experiment's path, the data set and its QualityModel (or None).

    Raises:
        UserError: an unwritable storage path, an experiment that exists (without resume) or
            differs from the saved one (with resume), missing data, bad scheduler settings.
    """
    from ray import tune

    from raygan.data import load_data
    from raygan.search import tune_config

    path = experiment_path(config)
    if not _is_uri(path):
        _check_storage(Path(path).parent)
    recorded = None
    if config.tune.resume:
        saved = saved_experiment(path)
        if saved is None or not tune.Tuner.can_restore(path):
            raise UserError(f"nothing to resume at {path!r}; run without --resume to start the experiment")
        check_same_experiment(config, saved, path)
        recorded = saved_split(path)  # a user's data: the very split the experiment started with
    elif not _is_uri(path) and Path(path).exists():
        raise UserError(f"experiment {path!r} already exists; pass --resume to continue it or --name for a new one")
    if dataset is None:
        dataset = load_data(config.data, seed=config.tune.seed, recorded=recorded)
    if config.model.conditional and getattr(dataset, "train_labels", None) is None:
        raise UserError(f"model.conditional needs class labels, and {config.data.name} has none; set model.conditional: false")
    check_models(config, dataset)
    tune_config(config)  # validates the scheduler settings
    return path, dataset, load_quality_model(config, dataset)


def check_models(config: ExperimentConfig, dataset: Any) -> None:
    """Build each architecture the trials may run (model.arch and every search.arch) on the data's
    shape once, on the CPU: a user's factory that cannot be imported or returns the wrong thing, or
    a conv pair on a shape it cannot halve, is refused here rather than in every trial.

    Raises:
        ConfigError: an architecture that does not fit the data, or a D that ``train.r1``'s
            penalty cannot differentiate.
    """
    import torch

    from raygan import hyperparameters
    from raygan.algorithm import check_r1
    from raygan.models import build_pair

    if getattr(dataset, "train", None) is None:  # a stand-in without arrays (tests of the settings alone)
        return
    shape = tuple(dataset.train.shape[1:])
    labels = getattr(dataset, "train_labels", None)
    num_classes = getattr(dataset, "num_classes", None) if labels is not None else None
    for arch in dict.fromkeys((config.model.arch, *config.search.arch)):
        model = hyperparameters.apply(config, {"arch": arch}).model
        with torch.random.fork_rng(devices=[]):
            _, discriminator = build_pair(model, shape, dataset.bounded, num_classes)
        if config.train.r1 > 0:
            real = torch.as_tensor(dataset.train[:2], dtype=torch.float32)
            conditional = getattr(discriminator, "num_classes", None)
            check_r1(discriminator, real, torch.as_tensor(labels[:2], dtype=torch.int64) if conditional else None)


# --------------------------------------------------------------------------------------------
# Step 2: fit. Start (or join) Ray and the evaluators, run the population.


def _init_ray(config: ExperimentConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    if config.tune.address is not None:
        ray.init(address=config.tune.address, log_to_driver=False)
        return
    # Locally, the evaluators are idle most of the time: they get logical CPUs of their own on top
    # of the machine's cores so that they do not take a trial's place.
    ray.init(num_cpus=(os.cpu_count() or 1) + math.ceil(config.eval.replicas * config.eval.cpus), include_dashboard=False,
             log_to_driver=False)


def _gpus(config: ExperimentConfig) -> tuple[float, float]:
    """(per trial, per evaluator replica): what was asked for, else the default share where there are GPUs."""
    import ray

    cluster_gpus = ray.cluster_resources().get("GPU", 0)
    return config.tune.gpus_for(config.tune.gpus_per_trial, cluster_gpus), config.tune.gpus_for(config.eval.gpus, cluster_gpus)


def _check_resources(config: ExperimentConfig) -> None:
    """Refuse what a local Ray can never start: nothing joins it later, so such a trial (or an
    evaluator replica) would wait, PENDING, until the time budget ran out. A cluster may scale up: no check."""
    import ray

    if config.tune.address is not None:
        return
    have = ray.cluster_resources()
    trial_gpus, eval_gpus = _gpus(config)
    asks = (
        ("a trial", "CPU", config.tune.cpus_per_trial, "--cpus-per-trial"),
        ("a trial", "GPU", trial_gpus, "--gpus-per-trial"),
        ("the evaluator", "CPU", config.eval.cpus, "eval.cpus"),
        ("the evaluator", "GPU", eval_gpus, "eval.gpus"),
        # The replicas hold their resources for the whole run, and at least one trial must fit beside them.
        ("a trial beside the evaluator's replicas", "CPU", config.tune.cpus_per_trial + config.eval.replicas * config.eval.cpus,
         "eval.replicas"),
    )
    for who, resource, amount, setting in asks:
        if amount > have.get(resource, 0.0):
            raise UserError(f"{who} asks for {amount:g} {resource}s but this machine's Ray has {have.get(resource, 0.0):g}; lower {setting}")


def _progress_reporter(config: ExperimentConfig) -> Any:
    """The live table: each trial's hyperparameters (those its Tune config carries), D(x),
    D(G(z)) and its scores."""
    from ray.tune import CLIReporter

    from raygan import hyperparameters
    from raygan.search import param_space

    carried = param_space(config)
    return CLIReporter(
        parameter_columns={name: name for name in hyperparameters.names() if name in carried},
        metric_columns={
            keys.TRAINING_ITERATION: "steps",
            keys.ALGORITHM_ITERATION: "iters",
            keys.D_REAL: "D(x)",
            keys.D_FAKE: "D(G(z))",
            keys.PARZEN_VALID_LL: "parzen_valid_ll",
            keys.CLASSES_COVERED: "classes",
            keys.FD: "FD",
            keys.ITERATIONS_PER_S: "iter/s",
            keys.CPUS: "cpus",
        },
        sort_by_metric=True,  # metric and mode come from the TuneConfig
        max_report_frequency=20,
        max_progress_rows=32,
    )


def _run_config(config: ExperimentConfig, path: str, verbose: int, callbacks: Sequence[Any]) -> Any:
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from raygan.search import NoteCtrlC

    return tune.RunConfig(
        name=config.tune.name,
        storage_path=path.rsplit("/", 1)[0],
        stop={keys.TRAINING_ITERATION: config.tune.max_iterations},
        failure_config=tune.FailureConfig(max_failures=config.tune.max_failures),
        checkpoint_config=tune.CheckpointConfig(
            # The most recent ones, not the best by score: PBT's exploit restores the donor's
            # latest checkpoint, which a score-ranked policy may already have deleted.
            num_to_keep=config.tune.checkpoints_kept,
            checkpoint_frequency=config.tune.checkpoint_every,
            checkpoint_at_end=True,
        ),
        verbose=verbose,
        progress_reporter=_progress_reporter(config),
        callbacks=[*callbacks, CSVLoggerCallback(), JsonLoggerCallback(), NoteCtrlC()],
        # On remote storage the trials' TensorBoard events are written to their working directories
        # (raygan.trainable.trial_log_dir): Tune uploads those with each checkpoint.
        sync_config=tune.SyncConfig(sync_artifacts=_is_uri(path)),
    )


def data_source(config: ExperimentConfig, path: str, dataset: Any, in_memory: bool = False) -> Any:
    """Where the evaluator replicas load the data set from, on any node, at any restart: the
    experiment's data settings (for a user's data, with the split the experiment recorded), or
    for a data set handed over in memory (tests, benchmarks) a snapshot of it written to the
    experiment's storage.

    Returns:
        A :class:`raygan.data.DataSource`.
    """
    from raygan.data import DataSource, write_snapshot

    if in_memory:
        snapshot = f"{path}/{DATASET_FILE}"
        write_snapshot(dataset, snapshot)
        return DataSource(config.data, config.tune.seed, snapshot=snapshot)
    split = f"{path}/{DATA_SPLIT_FILE}" if getattr(dataset, "split_record", None) is not None else None
    return DataSource(config.data, config.tune.seed, split=split)


def fit(config: ExperimentConfig, path: str, dataset: Any, quality: Any = None, verbose: int = 1,
        callbacks: Sequence[Any] = (), in_memory: bool = False) -> tuple[Any, Any]:
    """Start Ray and the evaluators, write the experiment file, run the population.

    Args:
        dataset: the data set the trials train on (its training split goes into the object store).
        quality: the data set's QualityModel (the replicas load it from its cache), or None.
        in_memory: ``dataset`` was handed over rather than loaded from ``config.data``: the
            evaluator replicas read it back from a snapshot (:func:`data_source`).

    Returns:
        Tune's ResultGrid and the :class:`~raygan.evaluator.EvaluatorPool`.

    Raises:
        KeyboardInterrupt: the run was interrupted (Ctrl-C); its state is saved for ``resume``.
    """
    from ray import tune

    from raygan import userdata
    from raygan.evaluator import evaluator_name, start_evaluators
    from raygan.quality import resolve_cache_dir
    from raygan.search import CTRL_C, param_space, tune_config
    from raygan.trainable import with_data

    # Tune's newer console output ignores progress reporters; ours shows the GAN's numbers.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Trials write their own TensorBoard events (raygan.monitor); Tune's automatic TBX logger would
    # add a copy of every result and a second HParams session to each run. Its CSV and JSON
    # loggers (what Tune's analysis reads) are passed explicitly in _run_config.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    _init_ray(config)
    _check_resources(config)
    trial_gpus, eval_gpus = _gpus(config)
    if not config.tune.resume and getattr(dataset, "split_record", None) is not None:
        # A user's data: its split, before the replicas that load it and the file that makes the experiment resumable.
        _write_text(f"{path}/{DATA_SPLIT_FILE}", userdata.record(dataset))
    source = data_source(config, path, dataset, in_memory)
    evaluators = start_evaluators(source, config.eval, name=evaluator_name(config.tune.name, config.tune.storage_path),
                                  classifier_cache=None if quality is None else str(resolve_cache_dir()), gpus=eval_gpus)
    # Tune's time budget runs from fit()'s start; a resumed run's remainder lives in Tune's own
    # stopper, so its trials go without a deadline (they score on eval.every as before).
    deadline = None if config.tune.resume or config.tune.time_budget_s is None else time.time() + config.tune.time_budget_s
    trainable = with_data({"train": dataset.train, "bounded": dataset.bounded, "train_labels": getattr(dataset, "train_labels", None)},
                          config.tune.cpus_per_trial, trial_gpus, deadline)
    if config.tune.resume:
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        # A trial's request is the unit a ResourceChangingScheduler grows it by; the evaluator's is never handed out.
        trial_resources = {"CPU": config.tune.cpus_per_trial, "GPU": trial_gpus}
        reserved = {"CPU": config.eval.replicas * config.eval.cpus, "GPU": config.eval.replicas * eval_gpus}
        tuner = tune.Tuner(trainable, param_space=param_space(config), tune_config=tune_config(config, trial_resources, reserved),
                           run_config=_run_config(config, path, verbose, callbacks))
        _write_text(f"{path}/{EXPERIMENT_FILE}", yaml.safe_dump(to_dict(config), sort_keys=False))
    CTRL_C.clear()
    results = tuner.fit()
    if CTRL_C.is_set():
        # Tune ends fit() early on Ctrl-C, after saving the experiment's state: say so (main tells
        # the user to --resume) rather than rank unfinished trials and write best/ from one.
        raise KeyboardInterrupt
    return results, evaluators


# --------------------------------------------------------------------------------------------
# Step 3: report. Rank the trials' ranked states, score the best on the test split once, write best/.


def _latest_checkpoint(result: Any) -> Any:
    """The trial's most recent checkpoint that still holds its scored generator, or None.

    Tune's ``result.checkpoint`` can name a checkpoint that is gone (a trial that errored after
    PBT's exploit); then the newest one kept on storage serves.
    """
    import pyarrow.fs

    from raygan.files import SCORES_FILE

    kept = [c for c, _ in (result.best_checkpoints or [])]  # oldest first
    for checkpoint in [result.checkpoint, *reversed(kept)]:
        if checkpoint is None:
            continue
        info = checkpoint.filesystem.get_file_info(f"{checkpoint.path}/{SCORES_FILE}")
        if info.type == pyarrow.fs.FileType.File:
            return checkpoint
    return None


def _trial_row(result: Any) -> tuple[TrialRow, Any]:
    """A leaderboard row from the scores of the generator in the trial's latest checkpoint, and
    that checkpoint (None where the trial has none)."""
    from raygan import hyperparameters
    from raygan.files import read_scores

    metrics = result.metrics or {}
    scores = dict(metrics)
    checkpoint = _latest_checkpoint(result)
    if checkpoint is not None:
        with checkpoint.as_directory() as checkpoint_dir:
            scores = read_scores(checkpoint_dir)
    row = TrialRow(
        trial_id=metrics.get(keys.TRIAL_ID, Path(result.path).name),
        parzen_valid_ll=finite_or(scores.get(keys.PARZEN_VALID_LL)),
        config=hyperparameters.trial_hyperparameters(result.config or {}),  # empty: never reported
        iterations=int(scores.get(keys.TRAINING_ITERATION) or metrics.get(keys.TRAINING_ITERATION) or 0),
        status="ERROR" if result.error else "OK",
        rank_score=finite_or(scores.get(keys.RANK_SCORE, scores.get(keys.PARZEN_VALID_LL))),
        quality={k.removeprefix("eval/"): scores[k] for k in (keys.FD, keys.CLASSES_COVERED, keys.TVD) if k in scores},
    )
    return row, checkpoint


PARZEN_KEYS = ("parzen_valid_ll", "parzen_test_ll", "parzen_test_se", "sigma")


def _best_summary(config: ExperimentConfig, row: TrialRow, trial_config: dict[str, Any], samples: Any, evaluators: Any,
                  labels: Any = None) -> dict[str, Any]:
    """summary.json: the best trial's scores on eval.num_samples samples, the reference's beside
    them, and the model's Parzen score at the reference's number of centres (on mnist5k only
    4,000 training images exist, so the paper's 10,000 centres cannot be matched by real data).
    ``labels``: the classes a conditional generator was asked for (its label accuracy is scored)."""
    scores = evaluators.score_test(samples, labels)
    reference = evaluators.reference()
    summary = {
        **{k: scores[k] for k in PARZEN_KEYS},
        "trial_id": row.trial_id,
        "training_iteration": row.iterations,
        "config": {k: v for k, v in trial_config.items() if k != "experiment"},
        "reference": {k: reference[k] for k in (*PARZEN_KEYS, "num_samples")},
        "dataset": config.data.name,
        "num_samples": len(samples),
        "ranking_samples": min(config.eval.ranking_samples, config.eval.num_samples),
    }
    if reference["num_samples"] < len(samples):
        n = reference["num_samples"]
        matched = evaluators.score_test(samples[:n], None if labels is None else labels[:n])
        summary["at_reference_size"] = {"num_samples": reference["num_samples"], **{k: matched[k] for k in PARZEN_KEYS}}
    if "quality" in scores:
        summary["quality"] = {**scores["quality"], "reference": reference.get("quality")}
    return summary


def report_best(config: ExperimentConfig, path: str, results: Any, evaluators: Any) -> Report:
    """Rank the trials, score the best one's ranked generator on the test split, write best/.

    Raises:
        UserError: every trial diverged, or none was scored or checkpointed.
    """
    import torch

    from raygan.models import class_grid_labels, generate, load_generator
    from raygan.monitor import write_experiment_summary
    from raygan.files import GENERATOR_FILE
    from raygan.trainable import experiment_from_trial_config

    ranked = [(*_trial_row(result), result) for result in results]  # (row, checkpoint, result)
    leaderboard = sort_leaderboard([row for row, _, _ in ranked])
    if not any(math.isfinite(row.rank_score) for row in leaderboard):
        # Nothing to rank (Tune would still name a lone trial "best", NaN generator and all).
        if any((r.metrics or {}).get(keys.DIVERGED) for r in results):
            raise UserError("every trial diverged (NaN or infinite losses); lower the learning rates (search.lr_d, search.lr_g)")
        raise UserError("no trial was scored; give the experiment more time (--time-budget-s, --max-iterations)")
    with_checkpoint = [entry for entry in ranked if entry[1] is not None]
    if not with_checkpoint:
        raise UserError("no trial produced a checkpoint; give the experiment more time (--time-budget-s, --max-iterations)")
    best_row, best_checkpoint, best = max(with_checkpoint, key=lambda entry: (entry[0].rank_score, entry[0].parzen_valid_ll))
    with best_checkpoint.as_directory() as checkpoint_dir:
        generator = load_generator(Path(checkpoint_dir) / GENERATOR_FILE)
        n = config.eval.num_samples
        labels = None if generator.num_classes is None else class_grid_labels(n, generator.num_classes)  # every class alike
        samples = generate(generator, n, seed=config.eval.seed, labels=labels)
        summary = _best_summary(config, best_row, best.config, samples.numpy(), evaluators,
                                None if labels is None else labels.numpy())
        with tempfile.TemporaryDirectory() as staging:
            local_best = Path(path) / "best" if not _is_uri(path) else Path(staging) / "best"
            write_best(local_best, Path(checkpoint_dir) / GENERATOR_FILE, experiment_from_trial_config(best.config),
                       summary, torch.as_tensor(samples))
            # The leaderboard and the best trial's numbers as one more TensorBoard run, <experiment>/summary.
            write_experiment_summary(local_best.parent / "summary", [dataclasses.asdict(row) for row in leaderboard], summary)
            if _is_uri(path):
                import pyarrow.fs

                pyarrow.fs.copy_files(str(local_best), f"{path}/best")
                pyarrow.fs.copy_files(str(local_best.parent / "summary"), f"{path}/summary")
    return Report(leaderboard, summary, path, f"{path}/best")


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
    in_memory = dataset is not None
    path, dataset, quality = preflight(config, dataset)
    results, evaluators = fit(config, path, dataset, quality, verbose, callbacks, in_memory=in_memory)
    report = report_best(config, path, results, evaluators)
    disk = {**dataclasses.asdict(checkpoint_usage(path)), "kept_per_trial": config.tune.checkpoints_kept}
    report = dataclasses.replace(report, extra={**report.extra, "checkpoints": disk})
    note = quality_note(config, dataset) if quality is None else None
    if note is not None:
        report = dataclasses.replace(report, extra={**report.extra, "quality_note": note})
    report = add_refined(config, report, dataset, evaluators, quality)
    return add_mixture(config, report, dataset)


def add_refined(config: ExperimentConfig, report: Report, dataset: Any, evaluators: Any, quality: Any = None) -> Report:
    """The best generator's samples corrected by its own discriminator (raygan.refine), one sampler per
    ``refine.methods``, scored like the raw ones (same count, same seed, test split once) and added to
    summary.json's "refined"; each one's first 100 samples as best/samples_<method>.png. D is
    calibrated on the validation split (and, for finetune, trained on the training split) only;
    with ``refine.by_class``, the run's domain classifier ``quality`` (trained on the training labels)
    picks each sample's class."""
    import ray

    from raygan import images, refine
    from raygan.files import atomic_write_bytes, atomic_write_json
    from raygan.models import class_grid_labels

    if not config.refine.methods:
        return report
    if _is_uri(report.experiment_path):
        note = (f"refined samplers: not scored on remote storage; run python -m raygan.evaluate --refine drs on a local "
                f"copy of {report.best_dir}/generator.pt")
        return dataclasses.replace(report, extra={**report.extra, "refine_note": note})
    best_dir = Path(report.best_dir)
    model = refine.load_refinable(best_dir / "generator.pt")
    ratios = refine.calibrate_all(model, dataset, config.refine, seed=config.eval.seed)
    n = config.eval.num_samples
    labels = None if model.num_classes is None else class_grid_labels(n, model.num_classes)
    shares = refine.classes_for(quality, dataset.valid, config.refine)
    refined: dict[str, Any] = {}
    for method in config.refine.methods:
        try:
            r = refine.refine(model.members, ratios, model.weights, n, method, config.refine, seed=config.eval.seed,
                              labels=labels, classes=shares)
        except refine.RefineError as e:
            refined[method] = {"error": str(e)}
            continue
        scores = evaluators.score_test(r.samples.numpy(), None if labels is None else labels.numpy())
        refined[method] = {**{k: scores[k] for k in PARZEN_KEYS}, "quality": scores.get("quality"), "num_samples": n,
                           **r.as_dict(), "calibration": ratios[0].as_dict()}
        atomic_write_bytes(best_dir / f"samples_{method}.png", images.png_bytes(r.samples[:100], nrow=10, padding=1))
    summary = {**report.summary, "refined": refined}
    atomic_write_json(best_dir / "summary.json", summary)
    return dataclasses.replace(report, summary=summary)


def add_mixture(config: ExperimentConfig, report: Report, dataset: Any = None) -> Report:
    """The population as one generator: the best ``mixture.members`` trials mixed with weights
    fitted on validation (raygan.mixture), scored like the best trial, saved as best/mixture.pt
    and added to summary.json's "mixture". Skipped (with a note) on remote storage and where
    fewer than two trials can be mixed."""
    from raygan import mixture
    from raygan.files import atomic_write_json

    if config.mixture.members < 2:
        return report
    if _is_uri(report.experiment_path):
        note = f"mixture: not built on remote storage; run python -m raygan.mixture --run DIR on a local copy of {report.experiment_path}"
        return dataclasses.replace(report, extra={**report.extra, "mixture_note": note})
    chosen = mixture.select_members(mixture.trial_checkpoints(report.experiment_path), config.mixture.members)
    if len(chosen) < 2:
        note = "mixture: fewer than two trials have a scored, finite generator; nothing to mix"
        return dataclasses.replace(report, extra={**report.extra, "mixture_note": note})
    comparison = mixture.build_from_run(report.experiment_path, members=config.mixture.members,
                                       fit_to=config.mixture.fit_to, num_samples=config.eval.num_samples, log=lambda line: None,
                                       data=dataset)
    summary = {**report.summary, "mixture": comparison.as_json()}
    atomic_write_json(Path(report.best_dir) / "summary.json", summary)
    return dataclasses.replace(report, summary=summary)


# --------------------------------------------------------------------------------------------
# The command line: each flag sets one config field and borrows that field's docstring as help.

_FLAGS = {  # flag -> (section, setting)
    "dataset": ("data", "name"),
    "data_root": ("data", "root"),
    "resize": ("data", "resize"),
    **{
        k: ("tune", k)
        for k in ("num_trials", "scheduler", "cpus_per_trial", "gpus_per_trial", "time_budget_s", "max_iterations",
                  "storage_path", "name", "resume", "address", "seed")
    },
}
_CHOICES = {"scheduler": SCHEDULERS}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m raygan.tune",
        description="Train a population of GANs (Goodfellow et al., 2014) with Ray Tune and rank them. "
        "Every setting is listed, with its default and meaning, by python -m raygan.config.",
    )
    p.add_argument("--config", help="YAML file with sections data/model/train/eval/search/tune (see experiments/)")
    docs = {"data": field_docs(DataConfig), "tune": field_docs(TuneConfig)}
    types = {section: {f.name: f.type for f in dataclasses.fields(cls)} for section, cls in (("data", DataConfig), ("tune", TuneConfig))}
    for flag, (section, key) in _FLAGS.items():
        option = "--" + flag.replace("_", "-")
        help_text = docs[section].get(key, "").replace("%", "%%")
        if key == "resume":
            p.add_argument(option, action="store_true", default=None, help=help_text)
            continue
        kind = {"int": int, "float": float}.get(str(types[section].get(key, "str")).split(" ")[0], str)
        if flag == "dataset":
            kind = dataset_argument
        p.add_argument(option, type=kind, choices=_CHOICES.get(flag), help=help_text)
    return p


def _explicit_values(argv: Sequence[str] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the YAML file's settings, the flags' settings): only what the user gave."""
    args = _parser().parse_args(argv)
    flags: dict[str, dict[str, Any]] = {}
    for flag, (section, key) in _FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            flags.setdefault(section, {})[key] = value
    return (load_yaml(args.config) if args.config else {}), flags


def config_from_args(argv: Sequence[str] | None = None) -> ExperimentConfig:
    """Parse the command line (and the YAML file it names) into an ExperimentConfig.

    With ``--resume`` the saved experiment's settings are the base, so ``--name X --resume``
    alone continues X as it was started (and any other setting given is checked against it).
    """
    file_values, flags = _explicit_values(argv)
    given = merge(file_values, flags)
    config = build(ExperimentConfig, given)
    if config.tune.resume:
        saved = saved_experiment(experiment_path(config))
        if saved is not None:
            config = build(ExperimentConfig, merge(saved, given))
    return config


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
