"""GANTrainable: one G/D pair per Tune trial (one Ray actor), calling into the pure core.

Each method is a few lines: ``setup`` builds the core's :class:`~raygan.algorithm.GANTrainer`
on the trial's device from the training set in Ray's object store; ``step`` runs Algorithm 1
iterations and, every ``eval.every`` steps, has a Parzen evaluator actor score a batch of
samples (the pool's least busy replica, which reports how long they waited for it);
``step`` also scores the last step that ends before the search's time budget runs out, and has it
checkpointed, so the answer is the generator at the end of the budget, not up to ``eval.every``
steps older. ``save_checkpoint``/``load_checkpoint`` carry the trainer's full state so PBT's
exploit copies a donor exactly; ``reset_config`` applies a PBT mutation in place. A
:class:`~raygan.monitor.TrialMonitor` writes each result, and a grid of the evaluation's
fixed-noise samples, as TensorBoard events into the trial's directory.
"""

from __future__ import annotations

import math
import time
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs
import ray
import torch
from ray import tune
from ray.tune.result import SHOULD_CHECKPOINT

from raygan import heap, hyperparameters, keys
from raygan.algorithm import GANTrainer
from raygan.config import ExperimentConfig, build, replace
from raygan.errors import CheckpointError
from raygan.evaluator import EvaluatorPool, evaluator_name
from raygan.files import GENERATOR_FILE, TRAINER_FILE, atomic_torch_save, write_scores
from raygan.models import class_grid_labels, generate, generator_state
from raygan.monitor import TrialMonitor, search_domains, shows_as_image

TRAINER_FORMAT = "raygan-trainer/1"  # the trial checkpoint's tag, as generator.pt has its own
SAMPLE_GRID = 64  # the first of each evaluation's fixed-noise samples, shown in TensorBoard
# Seconds kept free before the deadline for the last scored result to reach the driver and be
# checkpointed: Tune's time budget stops every trial, and a step still running is lost.
DEADLINE_SLACK_S = 3.0


def last_step_before_deadline(now: float, deadline: float | None, step_s: float, eval_s: float) -> bool:
    """Whether a step that ends at ``now`` is the last to end before ``deadline`` (Unix seconds; None:
    no time budget): the next step, ``step_s`` seconds of training, would not, and this one can still
    be scored (``eval_s`` seconds) and reported in time."""
    if deadline is None:
        return False
    left = deadline - now - DEADLINE_SLACK_S
    return eval_s <= left < step_s + eval_s


def experiment_from_trial_config(config: dict[str, Any]) -> ExperimentConfig:
    """The trial's ExperimentConfig: the base experiment with the trial's hyperparameters in it."""
    return hyperparameters.apply(build(ExperimentConfig, config["experiment"]), config)


def trial_device(gpu_ids: list | None = None, cuda_available: bool | None = None) -> tuple[torch.device, str | None]:
    """The GPU Ray assigned to this actor, or the CPU; and why not the GPU, where Ray assigned one.

    A node can declare a GPU that torch cannot see: a fake GPU of Ray's fake multi-node provider
    (experiments/cluster_local.py), or a real node whose driver is broken. Such a trial trains on
    the CPU rather than failing, and the returned note says so.

    Args:
        gpu_ids: the GPUs Ray assigned (default: ``ray.get_gpu_ids()``).
        cuda_available: whether torch sees a CUDA device (default: ``torch.cuda.is_available()``).

    Returns:
        The device, and None or a one-sentence note of the fallback to the CPU.
    """
    gpu_ids = ray.get_gpu_ids() if gpu_ids is None else gpu_ids
    cuda_available = torch.cuda.is_available() if cuda_available is None else cuda_available
    if gpu_ids and cuda_available:
        return torch.device("cuda", 0), None  # Ray sets CUDA_VISIBLE_DEVICES to the assigned GPU
    if gpu_ids:
        return torch.device("cpu"), f"Ray assigned GPU {gpu_ids} to this trial but torch sees no CUDA device: training on the CPU"
    return torch.device("cpu"), None


def torch_threads(cpus: float) -> int:
    """The torch threads a trial holding ``cpus`` CPUs runs: whole cores only (two threads on one
    core spin in OpenMP barriers), at least one."""
    return max(1, int(cpus))


def trial_cpus(resources: Any, requested: float) -> float:
    """The CPUs this trial actor holds: its placement group's (Tune's ``Trainable.trial_resources``,
    which a ResourceChangingScheduler changes between restarts), or ``requested`` outside Tune."""
    if resources is None:
        return requested
    return float(resources.required_resources.get("CPU", requested))


def trial_log_dir(trainable: tune.Trainable) -> str:
    """Where a trial's TensorBoard events go: its directory under the experiment's storage path.

    Ray's public ``Trainable.logdir`` is the actor's scratch working directory (under
    /tmp/ray/session_*), which Tune copies to storage only with ``SyncConfig(sync_artifacts=True)``.
    On local (or mounted) storage the events go straight into the trial directory, so a running
    ``tensorboard --logdir <storage>`` sees them live; on remote storage (s3://) they go into the
    working directory, which run_experiment has Tune sync.
    """
    storage = getattr(trainable, "_storage", None)  # Ray 2.60's StorageContext; None outside Tune
    if storage is not None and isinstance(storage.storage_filesystem, pyarrow.fs.LocalFileSystem):
        return storage.trial_fs_path
    return trainable.logdir


def steps_per_epoch(num_train: int, batch_size: int) -> int:
    """Algorithm 1 iterations in one pass over the training set."""
    return max(1, math.ceil(num_train / batch_size))


NOT_SCORED = {keys.PARZEN_VALID_LL: -math.inf, keys.SIGMA: math.nan, keys.RANK_SCORE: -math.inf}


class GANTrainable(tune.Trainable):
    """A Tune trial holding one G/D pair; see the module docstring.

    Every checkpoint holds the trainer's latest state (``trainer.pt``, for resuming) and the
    generator as it was when last scored (``generator.pt``, with its scores in ``scores.json``):
    what the final ranking reads is the state that was ranked, however the run ended.
    """

    def setup(self, config: dict[str, Any], data: dict[str, Any], deadline: float | None = None) -> None:
        self.experiment = experiment_from_trial_config(config)
        self.deadline = deadline  # when the search's time budget ends (Unix seconds), where raygan.tune knows it
        # Tune's ResourceChangingScheduler restarts a trial with more (or fewer) CPUs from its checkpoint:
        # the threads follow what this actor holds now, not what the trial started with.
        self.cpus = trial_cpus(self.trial_resources, self.experiment.tune.cpus_per_trial)
        torch.set_num_threads(torch_threads(self.cpus))
        heap.keep_freed_memory()  # a worker that read its data zero-copy would page-fault every iteration
        self.device, device_note = trial_device()
        with warnings.catch_warnings():  # the object store's arrays are read-only; we never write them
            warnings.simplefilter("ignore", UserWarning)
            train = torch.from_numpy(data["train"]).to(self.device)  # zero-copy on the CPU
            labels = data.get("train_labels")  # a conditional model's real minibatches keep their labels
            self.train_labels = None if labels is None else torch.from_numpy(np.asarray(labels)).to(self.device)
        self.bounded = bool(data["bounded"])
        self.trainer = self._new_trainer(self.experiment, train)
        from raygan.search import decision_steps  # raygan.search imports this module

        self.decision_steps = decision_steps(self.experiment)
        self.iterations_per_step = self.experiment.tune.iterations_per_step or steps_per_epoch(
            len(train), self.experiment.train.batch_size
        )
        self._forget_scores()
        self.step_s = 0.0  # the last trained step's seconds: a diverged trial waits as long per step
        self.eval_s = 0.0  # the last scoring's seconds
        # Which Ray node ran each result: node_ip cannot tell apart nodes that share an address
        # (containers on one host, test clusters), and it shows where a trial went after a node loss.
        self.node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
        self.monitor = self._open_monitor(config)
        if device_note:  # said once per trial actor: in its log and in TensorBoard
            warnings.warn(device_note, RuntimeWarning, stacklevel=1)
            self.monitor.log_note("device", device_note)

    def _new_trainer(self, experiment: ExperimentConfig, train: torch.Tensor) -> GANTrainer:
        return GANTrainer(experiment.model, experiment.train, train, self.bounded, labels=self.train_labels)

    def _forget_scores(self) -> None:
        self.scores: dict[str, Any] = dict(NOT_SCORED)
        self.ranked_generator: dict[str, Any] | None = None  # generator_state() at the last scoring
        self.ranked_at = 0  # the training_iteration it was scored at
        self.diverged = False

    def _open_monitor(self, config: dict[str, Any]) -> TrialMonitor:
        hparams = hyperparameters.trial_hyperparameters(config)
        return TrialMonitor(trial_log_dir(self), hparams, domains=search_domains(self.experiment.search),
                            histograms=self.experiment.eval.histograms)

    def step(self) -> dict[str, Any]:
        result = self._train_and_evaluate()
        self.monitor.log_step(self.iteration + 1, result)  # the result's training_iteration
        return result

    def _train_and_evaluate(self) -> dict[str, Any]:
        self.queue_s = math.nan  # the step's wait for an evaluator: NaN unless it scores
        if self.diverged:  # nothing to learn from NaN weights: wait for PBT to replace us,
            # at the pace of a trained step: racing through the remaining steps would end the trial
            # before its peers reach a perturbation and hold checkpoints for PBT to copy.
            time.sleep(self.step_s)
            return self._result(None, 0.0, 0.0, eval_s=0.0)
        start, cpu_start = time.perf_counter(), time.process_time()
        metrics = self.trainer.run(self.iterations_per_step)
        train_s, train_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
        eval_s, final = 0.0, False
        if not metrics.finite:
            self.diverged = True
            self.scores = dict(NOT_SCORED)
        else:
            # The last step before the time budget ends: scored and checkpointed (Tune's stop would
            # lose the steps since the last scoring), so the final ranking is of the final generators.
            final = last_step_before_deadline(time.time(), self.deadline, train_s, self.eval_s or train_s)
            step = self.iteration + 1
            if step % self.experiment.eval.every == 0 or step in self.decision_steps or self._last_step() or final:
                # Every eval.every steps (a result in between carries the last scores: -inf before the
                # first), where ASHA or PBT reads the score, so that it decides on fresh ones, and the last.
                eval_start = time.perf_counter()
                self._evaluate()
                eval_s = self.eval_s = time.perf_counter() - eval_start
        self.step_s = train_s + eval_s
        result = self._result(metrics, self.iterations_per_step / train_s, self.iterations_per_step / max(train_cpu_s, 1e-9), eval_s)
        if final:
            # Tune saves one after this step, whatever checkpoint_every says (at max_iterations its
            # checkpoint_at_end does; forcing one there too races the ResourceChangingScheduler's pause).
            result[SHOULD_CHECKPOINT] = True
        return result

    def _last_step(self) -> bool:
        return self.iteration + 1 >= self.experiment.tune.max_iterations

    def _evaluate(self) -> None:
        num = min(self.experiment.eval.ranking_samples, self.experiment.eval.num_samples)
        generator = self.trainer.sample_generator
        # A conditional G is asked for every class equally often, and scored on obeying the label.
        labels = None if generator.num_classes is None else class_grid_labels(num, generator.num_classes)
        samples = generate(generator, num, seed=self.experiment.eval.seed, labels=labels)
        if shows_as_image(generator.data_shape):  # the same z at every evaluation
            # a conditional G's first K * K samples are one row per class (class_grid_labels)
            shown = SAMPLE_GRID if labels is None else generator.num_classes**2
            self.monitor.log_samples(self.iteration + 1, samples[:shown])
        self.monitor.log_histograms(self.iteration + 1, self.trainer.generator, self.trainer.discriminator)
        name = evaluator_name(self.experiment.tune.name, self.experiment.tune.storage_path)
        # Looked up at each scoring: a resumed experiment's driver starts replicas of its own.
        evaluators = EvaluatorPool.find(name, self.experiment.eval.replicas, home=zlib.crc32(self.trial_id.encode()))
        labels = None if labels is None else labels.numpy()
        scores = evaluators.score_valid(samples.cpu().numpy(), labels)
        self.queue_s = scores.pop(keys.QUEUE_SECONDS)
        self.scores = scores
        self.ranked_generator, self.ranked_at = self._generator_state(), self.iteration + 1

    def _generator_state(self) -> dict[str, Any]:
        """G as it is now (its running average, where train.g_average keeps one), with the D trained
        beside it (raygan.refine corrects G's samples with it), copied out of training."""
        state = generator_state(self.trainer.sample_generator, self.trainer.discriminator)
        for part in (state, state["discriminator"]):  # on the CPU, state_dict() shares the training tensors
            part["state_dict"] = {k: v.clone() for k, v in part["state_dict"].items()}
        return state

    def _result(self, metrics: Any, iterations_per_s: float, iterations_per_cpu_s: float, eval_s: float) -> dict[str, Any]:
        result = {
            **self.scores,
            keys.EVAL_SECONDS: eval_s,
            keys.QUEUE_SECONDS: self.queue_s,
            keys.ITERATIONS_PER_S: iterations_per_s,
            keys.ITERATIONS_PER_CPU_S: iterations_per_cpu_s,
            keys.ALGORITHM_ITERATION: self.trainer.iteration,
            keys.CPUS: self.cpus,
            **self._hparams_in_force(),
            keys.DIVERGED: self.diverged,
            keys.NODE_ID: self.node_id,
        }
        if metrics is not None:
            result.update({keys.LOSS_D: metrics.d_loss, keys.LOSS_G: metrics.g_loss,
                           keys.D_REAL: metrics.d_real, keys.D_FAKE: metrics.d_fake})
        if self.diverged and self.experiment.tune.scheduler != "pbt":
            result["done"] = True  # no scheduler here will replace it: stop it
        return result

    def _hparams_in_force(self) -> dict[str, float]:
        """``hparams/<name>`` for each numeric row of the table: the value in force after schedules,
        so a PBT mutation shows as a step in its curve (names and strings live in the HParams run)."""
        in_force = self.trainer.current_hyperparameters()
        out = {}
        for h in hyperparameters.table():
            value = in_force.get(h.name, h.base_value(self.experiment))
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[keys.hparam(h.name)] = value
        return out

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        state = {
            "format": TRAINER_FORMAT,
            "trainer": self.trainer.state_dict(),
            "scores": dict(self.scores),
            "ranked_at": self.ranked_at,
            "diverged": self.diverged,
            "trial_id": self.trial_id,
        }
        atomic_torch_save(state, Path(checkpoint_dir) / TRAINER_FILE)
        ranked = self.ranked_generator or self._generator_state()
        atomic_torch_save(ranked, Path(checkpoint_dir) / GENERATOR_FILE)
        scores = {**self.scores, keys.TRAINING_ITERATION: self.ranked_at, keys.DIVERGED: self.diverged}
        write_scores(checkpoint_dir, scores)

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        state = torch.load(Path(checkpoint_dir) / TRAINER_FILE, map_location=self.device, weights_only=True)
        if not isinstance(state, dict) or state.get("format") != TRAINER_FORMAT:
            raise CheckpointError(f"{checkpoint_dir!r} holds no {TRAINER_FORMAT} checkpoint")
        self.trainer.load_state_dict(state["trainer"])
        if state["trial_id"] != self.trial_id:
            # PBT's exploit: this trial continues from another's weights. A copy that drew the
            # donor's minibatches, noise and dropout masks would be no new sample of the search.
            self.trainer.reseed(self.experiment.train.seed + self.iteration)
        self.scores, self.ranked_at, self.diverged = dict(state["scores"]), state["ranked_at"], state["diverged"]
        self.ranked_generator = torch.load(Path(checkpoint_dir) / GENERATOR_FILE, map_location="cpu", weights_only=True)
        # Tune has set the iteration to the checkpoint's: a crashed trial's re-run steps, or the
        # steps PBT's exploit replaced, are hidden in TensorBoard rather than drawn twice.
        self.monitor.resume_at(self.iteration + 1)

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        experiment = experiment_from_trial_config(new_config)
        if replace(experiment, train=self.experiment.train, model=self.experiment.model) != self.experiment:
            return False  # a different experiment, not a mutation: let Tune start a fresh actor
        # Tune calls this for PBT's exploit (a restore follows) and, with reuse_actors, to hand this
        # actor to a fresh trial (no restore follows): either way start from the new config's own
        # initialisation, never from the previous trial's weights, counters or diverged flag.
        self.trainer = self._new_trainer(experiment, self.trainer.data)
        self._forget_scores()
        self.experiment = experiment
        self.config = new_config
        if trial_log_dir(self) != self.monitor.logdir:  # Tune reused this actor for another trial
            self.monitor.close()
            self.monitor = self._open_monitor(new_config)
        return True

    def cleanup(self) -> None:
        self.monitor.close()


def with_data(data: dict[str, np.ndarray | bool], cpus: float, gpus: float, deadline: float | None = None) -> Any:
    """GANTrainable with the training set put into the object store once, and its resources.

    Args:
        data: ``{"train": float32 array (N, C, H, W), "bounded": bool}``, and ``"train_labels"``
            (int64 (N,), or None) for conditional models.
        cpus: CPUs per trial (torch threads follow it).
        gpus: GPU fraction per trial (0.25 puts four trials on one GPU).
        deadline: when the search's time budget ends (Unix seconds; None: unknown, or none): each
            trial scores and checkpoints its last step before it.
    """
    trainable = tune.with_parameters(GANTrainable, data=data, deadline=deadline)
    return tune.with_resources(trainable, {"cpu": cpus, "gpu": gpus})

