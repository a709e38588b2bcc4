"""GANTrainable: one G/D pair per Tune trial (one Ray actor), calling into the pure core.

Each method is a few lines: ``setup`` builds the core's :class:`~raygan.algorithm.GANTrainer`
on the trial's device from the training set in Ray's object store; ``step`` runs Algorithm 1
iterations and, every ``eval.every`` steps, has the Parzen evaluator actor score a batch of
samples; ``save_checkpoint``/``load_checkpoint`` carry the trainer's full state so PBT's
exploit copies a donor exactly; ``reset_config`` applies a PBT mutation in place. A
:class:`~raygan.monitor.TrialMonitor` writes each result, and a grid of the evaluation's
fixed-noise samples, as TensorBoard events into the trial's directory.
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs
import ray
import torch
from ray import tune

from raygan.algorithm import GANTrainer
from raygan.config import ExperimentConfig, build, replace
from raygan.evaluator import evaluator_name, find_evaluator
from raygan.files import atomic_torch_save
from raygan.models import generate, save_generator
from raygan.monitor import TrialMonitor, search_domains, shows_as_image

# The hyperparameters a trial's Tune config carries (searched, mutated by PBT); everything
# else of the experiment travels unchanged under the "experiment" key.
HYPERPARAMETERS = ("k", "lr_d", "lr_g", "momentum", "prior", "g_loss", "seed")
TRAINER_FILE = "trainer.pt"
GENERATOR_FILE = "generator.pt"
EVAL_SEED = 1234  # fixed noise for Parzen samples: trials and steps are compared on the same z
SAMPLE_GRID = 64  # the first of each evaluation's fixed-noise samples, shown in TensorBoard


def experiment_from_trial_config(config: dict[str, Any]) -> ExperimentConfig:
    """The trial's ExperimentConfig: the base experiment with the trial's hyperparameters in it."""
    base = build(ExperimentConfig, config["experiment"])
    train = replace(base.train, **{k: config[k] for k in HYPERPARAMETERS if k in config and k != "prior"})
    model = replace(base.model, prior=config.get("prior", base.model.prior))
    return replace(base, train=train, model=model)


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


class GANTrainable(tune.Trainable):
    """A Tune trial holding one G/D pair; see the module docstring."""

    def setup(self, config: dict[str, Any], data: dict[str, Any]) -> None:
        self.experiment = experiment_from_trial_config(config)
        cpus = self.experiment.tune.cpus_per_trial
        torch.set_num_threads(max(1, int(cpus)))
        self.device, device_note = trial_device()
        with warnings.catch_warnings():  # the object store's arrays are read-only; we never write them
            warnings.simplefilter("ignore", UserWarning)
            train = torch.from_numpy(data["train"]).to(self.device)  # zero-copy on the CPU
        self.trainer = GANTrainer(self.experiment.model, self.experiment.train, train, bool(data["bounded"]))
        self.iterations_per_step = self.experiment.tune.iterations_per_step or steps_per_epoch(
            len(train), self.experiment.train.batch_size
        )
        self.parzen_valid_ll = -math.inf
        self.sigma = math.nan
        self.diverged = False
        self.step_s = 0.0  # the last trained step's seconds: a diverged trial waits as long per step
        # Which Ray node ran each result: node_ip cannot tell apart nodes that share an address
        # (containers on one host, test clusters), and it shows where a trial went after a node loss.
        self.node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
        self.monitor = self._open_monitor(config)
        if device_note:  # said once per trial actor: in its log and in TensorBoard
            warnings.warn(device_note, RuntimeWarning, stacklevel=1)
            self.monitor.log_note("device", device_note)

    def _open_monitor(self, config: dict[str, Any]) -> TrialMonitor:
        hparams = {k: config[k] for k in HYPERPARAMETERS if k in config}
        return TrialMonitor(trial_log_dir(self), hparams, domains=search_domains(self.experiment.search),
                            histograms=self.experiment.eval.histograms)

    def step(self) -> dict[str, Any]:
        result = self._train_and_evaluate()
        self.monitor.log_step(self.iteration + 1, result)  # the result's training_iteration
        return result

    def _train_and_evaluate(self) -> dict[str, Any]:
        if self.diverged:  # nothing to learn from NaN weights: wait for PBT to replace us,
            # at the pace of a trained step: racing through the remaining steps would end the trial
            # before its peers reach a perturbation and hold checkpoints for PBT to copy.
            time.sleep(self.step_s)
            return self._result(None, 0.0, eval_s=0.0)
        start = time.perf_counter()
        metrics = self.trainer.run(self.iterations_per_step)
        train_s = time.perf_counter() - start
        eval_s = 0.0
        if not metrics.finite:
            self.diverged = True
            self.parzen_valid_ll = -math.inf
        elif self.iteration == 0 or (self.iteration + 1) % self.experiment.eval.every == 0 or self._last_step():
            # The first step is always scored (schedulers need the metric in every result), and
            # the last, so the final ranking is of the final generators.
            eval_start = time.perf_counter()
            self._evaluate()
            eval_s = time.perf_counter() - eval_start
        self.step_s = train_s + eval_s
        return self._result(metrics, self.iterations_per_step / train_s, eval_s)

    def _last_step(self) -> bool:
        return self.iteration + 1 >= self.experiment.tune.max_iterations

    def _evaluate(self) -> None:
        num = min(self.experiment.eval.ranking_samples, self.experiment.eval.num_samples)
        samples = generate(self.trainer.generator, num, seed=EVAL_SEED)
        if shows_as_image(self.trainer.generator.data_shape):  # the same z at every evaluation
            self.monitor.log_samples(self.iteration + 1, samples[:SAMPLE_GRID])
        self.monitor.log_histograms(self.iteration + 1, self.trainer.generator, self.trainer.discriminator)
        scores = ray.get(find_evaluator(evaluator_name(self.experiment.tune.name)).score_valid.remote(ray.put(samples.cpu().numpy())))
        self.parzen_valid_ll, self.sigma = scores["parzen_valid_ll"], scores["sigma"]

    def _result(self, metrics: Any, iterations_per_s: float, eval_s: float) -> dict[str, Any]:
        hp = self.trainer.current_hyperparameters()
        result = {
            "eval/parzen_valid_ll": self.parzen_valid_ll,
            "eval/sigma": self.sigma,
            "eval/seconds": eval_s,
            "perf/iterations_per_s": iterations_per_s,
            "algorithm/iteration": self.trainer.iteration,
            "hparams/k": hp["k"],
            "hparams/lr_d": hp["lr_d"],
            "hparams/lr_g": hp["lr_g"],
            "hparams/momentum": hp["momentum"],
            "diverged": self.diverged,
            "node_id": self.node_id,
        }
        if metrics is not None:
            result.update({"loss/d": metrics.d_loss, "loss/g": metrics.g_loss, "d/real": metrics.d_real, "d/fake": metrics.d_fake})
        if self.diverged and self.experiment.tune.scheduler != "pbt":
            result["done"] = True  # no scheduler here will replace it: stop it
        return result

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        state = self.trainer.state_dict()
        state["parzen_valid_ll"], state["sigma"], state["diverged"] = self.parzen_valid_ll, self.sigma, self.diverged
        atomic_torch_save(state, Path(checkpoint_dir) / TRAINER_FILE)
        save_generator(Path(checkpoint_dir) / GENERATOR_FILE, self.trainer.generator)

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        state = torch.load(Path(checkpoint_dir) / TRAINER_FILE, map_location=self.device, weights_only=True)
        self.trainer.load_state_dict(state)
        self.parzen_valid_ll, self.sigma, self.diverged = state["parzen_valid_ll"], state["sigma"], state["diverged"]
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
        self.trainer = GANTrainer(experiment.model, experiment.train, self.trainer.data, self.trainer.generator.bounded)
        self.parzen_valid_ll, self.sigma, self.diverged = -math.inf, math.nan, False
        self.experiment = experiment
        self.config = new_config
        if trial_log_dir(self) != self.monitor.logdir:  # Tune reused this actor for another trial
            self.monitor.close()
            self.monitor = self._open_monitor(new_config)
        return True

    def cleanup(self) -> None:
        self.monitor.close()


def with_data(data: dict[str, np.ndarray | bool], cpus: float, gpus: float) -> Any:
    """GANTrainable with the training set put into the object store once, and its resources.

    Args:
        data: ``{"train": float32 array (N, C, H, W), "bounded": bool}``.
        cpus: CPUs per trial (torch threads follow it).
        gpus: GPU fraction per trial (0.25 puts four trials on one GPU).
    """
    trainable = tune.with_parameters(GANTrainable, data=data)
    return tune.with_resources(trainable, {"cpu": cpus, "gpu": gpus})

