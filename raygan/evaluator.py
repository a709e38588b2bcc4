"""The Parzen evaluation actor: holds the validation and test splits, scores samples for trials.

One named, restartable actor serves the whole population: trials find it by name and pass
their samples by object reference. All the maths is in :mod:`raygan.parzen`; this module only
keeps the data on the actor's device, serialises access to it, and counts its busy time.

Ranking never sees the test set: :meth:`ParzenEvaluator.score_valid` reads the validation split
only; :meth:`ParzenEvaluator.score_test` is for the final report.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import ray
import torch

from raygan import keys, parzen, ranking
from raygan.config import EvalConfig

EVALUATOR_NAME = "raygan-parzen-evaluator"
MAX_CONCURRENCY = 16  # calls that may wait on the actor at once; the lock scores them one by one

T = TypeVar("T")


def _parzen_dict(result: parzen.ParzenResult) -> dict[str, float]:
    return {
        "parzen_valid_ll": result.valid_ll,
        "parzen_test_ll": result.test_ll,
        "parzen_test_se": result.test_se,
        "sigma": result.sigma,
    }


class ParzenEvaluator:
    """Scores generated samples with the Parzen-window protocol (paper Section 5) and, where the
    data set has a domain classifier, its sample-quality measures on the same samples.

    A plain class: :func:`get_or_create_evaluator` makes it a Ray actor; tests may use it directly.

    Args:
        valid: validation split, (M, C, H, W) or (M, D).
        test: test split, (T, C, H, W) or (T, D).
        train_reference: training images for the held-out-data reference, or None.
        eval_config: sigma grid, chunk size, number of reference centres, ranking rule, CPU request.
        quality: the data set's :class:`~raygan.quality.QualityModel`, or None (Parzen only).
    """

    def __init__(
        self,
        valid: np.ndarray,
        test: np.ndarray,
        train_reference: np.ndarray | None,
        eval_config: EvalConfig,
        quality: Any = None,
    ) -> None:
        self.config = eval_config
        # As many torch threads as CPUs requested: more would steal cores from the trials.
        torch.set_num_threads(max(1, math.floor(eval_config.cpus)))
        gpu = bool(ray.get_gpu_ids()) if ray.is_initialized() else False
        self.device = torch.device("cuda", 0) if gpu and torch.cuda.is_available() else torch.device("cpu")
        self.valid = self._tensor(valid)
        self.test = self._tensor(test)
        self.train_reference = None if train_reference is None else np.asarray(train_reference)
        self.quality = None if quality is None else quality.to(self.device)
        self.min_classes = eval_config.min_classes
        if self.min_classes is None and self.quality is not None:
            # All but one of the classes real data show (every class of a labelled set)
            self.min_classes = self.quality.expected_classes(eval_config.min_class_share) - 1
        self._reference: dict[str, Any] | None = None
        self._lock = threading.Lock()  # one scoring at a time: they share the device and the threads
        self._calls, self._busy_s = 0, 0.0

    def _tensor(self, x: Any) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x), dtype=torch.float32).to(self.device)

    def _timed(self, fn: Callable[[], T]) -> T:
        with self._lock:
            start = time.perf_counter()
            try:
                return fn()
            finally:
                self._calls += 1
                self._busy_s += time.perf_counter() - start

    def score_valid(self, samples: np.ndarray, labels: np.ndarray | None = None) -> dict[str, float]:
        """Validation LL at the sigma chosen on validation: what trials are ranked on.

        Args:
            samples: generated samples, (N, C, H, W) or (N, D), e.g. passed by object reference.
            labels: for a conditional generator's samples, the (N,) classes they were asked for:
                adds the label accuracy and the mean per-class FD where there is a classifier.

        Returns:
            Result keys (:mod:`raygan.keys`): the Parzen validation LL, its sigma and the rank
            score the scheduler ranks on; -inf and NaN for samples that are not all finite (a
            diverged generator ranks last, and NaN never reaches the scheduler).
        """

        def run() -> dict[str, float]:
            centres = self._tensor(samples)
            if not bool(torch.isfinite(centres).all()):
                return {keys.PARZEN_VALID_LL: -math.inf, keys.SIGMA: math.nan, keys.RANK_SCORE: -math.inf}
            sigma, valid_ll = parzen.validation_score(
                centres, self.valid, self.config.sigmas, chunk_size=self.config.chunk_size
            )
            scores = {keys.PARZEN_VALID_LL: valid_ll, keys.SIGMA: sigma}
            quality, conditional = self._quality(centres, labels)
            if quality is not None:
                scores.update({keys.FD: quality.fd, keys.CLASSES_COVERED: quality.classes_covered,
                               keys.TVD: quality.tvd, keys.CONFIDENCE: quality.confidence})
                if conditional is not None:
                    scores[keys.LABEL_ACCURACY] = conditional.label_accuracy
                    scores[keys.CLASS_FD] = float(np.nanmean(conditional.per_class_fd))
            scores[keys.RANK_SCORE] = ranking.rank_score(
                valid_ll, None if quality is None else quality.fd, None if quality is None else quality.classes_covered,
                self.config.rank_by, self.min_classes,
            )
            return scores

        return self._timed(run)

    def _quality(self, samples: torch.Tensor, labels: np.ndarray | None) -> tuple[Any, Any]:
        """The classifier's scores and, for samples asked for by class, its conditional ones (one pass)."""
        if self.quality is None or samples.ndim != 4:
            return None, None
        return self.quality.score_with_labels(samples, labels, min_share=self.config.min_class_share)

    def score_test(self, samples: np.ndarray, labels: np.ndarray | None = None) -> dict[str, float]:
        """The full protocol, test split included: for the final report only, never for ranking.

        Args:
            samples: generated samples, (N, C, H, W) or (N, D).
            labels: for a conditional generator's samples, the (N,) classes they were asked for.

        Returns:
            ``parzen_valid_ll``, ``parzen_test_ll``, ``parzen_test_se`` and ``sigma``, and
            ``quality`` (the classifier's measures, a dict) where the evaluator has a classifier;
            with labels, ``quality`` also holds ``label_accuracy`` and ``per_class_fd`` (a list).
        """

        def run() -> dict[str, Any]:
            centres = self._tensor(samples)
            scores: dict[str, Any] = _parzen_dict(
                parzen.evaluate(centres, self.valid, self.test, self.config.sigmas, chunk_size=self.config.chunk_size)
            )
            quality, conditional = self._quality(centres, labels)
            if quality is not None:
                scores["quality"] = quality.as_dict()
                if conditional is not None:
                    scores["quality"].update(conditional.as_dict())
            return scores

        return self._timed(run)

    def reference(self) -> dict[str, float]:
        """The held-out-data reference (real training images as centres), computed once.

        Returns:
            The same keys as :meth:`score_test`, and ``num_samples``: the training images used as
            centres (fewer than ``eval.num_samples`` where the training split is smaller).

        Raises:
            ValueError: the evaluator was built without training images.
        """
        if self.train_reference is None:
            raise ValueError("this evaluator was built without training images for the reference")

        def run() -> dict[str, Any]:
            if self._reference is None:  # checked under the lock: concurrent callers compute it once
                self._reference = _parzen_dict(
                    parzen.reference(
                        self._tensor(self.train_reference),
                        self.valid,
                        self.test,
                        self.config.num_samples,
                        self.config.sigmas,
                        seed=self.config.seed,  # the same centres as raygan.evaluate's and raygan.mixture's reference
                        chunk_size=self.config.chunk_size,
                    )
                )
                self._reference["num_samples"] = min(self.config.num_samples, len(self.train_reference))
                if self.quality is not None and self.valid.ndim == 4:  # the validation split, read as samples
                    self._reference["quality"] = self.quality.reference(self.valid, min_share=self.config.min_class_share).as_dict()
            return self._reference

        return self._timed(run)

    def stats(self) -> dict[str, float]:
        """Calls served and seconds spent scoring, to show evaluation does not dominate the trials' time.

        Returns:
            ``{"calls": ..., "busy_s": ...}`` since this process started.
        """
        return {"calls": self._calls, "busy_s": self._busy_s}

    def pid(self) -> int:
        """The actor's process id (tests kill it to check restarts)."""
        return os.getpid()


def evaluator_name(experiment_name: str, storage_path: str) -> str:
    """The evaluator's actor name for one experiment: its name and where it is stored, as configured.

    Experiments sharing a cluster must not share an evaluator (each holds its own data), and two
    of the same name may run at once under different storage paths; so the name carries a digest
    of the storage path too. The driver and every trial compute it from the same config.
    """
    digest = hashlib.sha256(str(storage_path).encode()).hexdigest()[:8]
    return f"{EVALUATOR_NAME}-{experiment_name}-{digest}"


def get_or_create_evaluator(
    valid: np.ndarray,
    test: np.ndarray,
    train_reference: np.ndarray | None,
    eval_config: EvalConfig,
    name: str = EVALUATOR_NAME,
    namespace: str | None = None,
    gpus: float = 0.0,
    quality: Any = None,
) -> Any:
    """The named evaluator actor, started if it is not running yet.

    It restarts without limit if its process dies (Ray runs its constructor again with the same
    arguments, so the data reload), and calls made through the handle are retried after a
    restart. Large arrays must come as ``ray.put`` references that the caller keeps alive: Ray
    stores a plain array argument in the object store only until the constructor first runs, so
    a restart would find it gone. Up to ``MAX_CONCURRENCY`` calls may wait on it at once; they are
    scored one after another. Its resources are explicit: ``eval_config.cpus`` CPUs and ``gpus`` GPUs.

    Args:
        valid: validation split (an array, or an ObjectRef to one).
        test: test split (only :meth:`ParzenEvaluator.score_test` reads it).
        train_reference: training images for the held-out-data reference, or None.
        eval_config: the protocol's settings and the actor's resources.
        name: the actor's name, which trials look up.
        namespace: the Ray namespace (None: the job's).
        gpus: its GPU request (:meth:`raygan.config.TuneConfig.gpus_for` resolves ``eval.gpus``).
        quality: the data set's QualityModel (or an ObjectRef to it), or None for Parzen only.

    Returns:
        The actor handle.
    """
    actor = ray.remote(ParzenEvaluator).options(
        name=name,
        namespace=namespace,
        get_if_exists=True,
        max_restarts=-1,
        max_task_retries=-1,
        max_concurrency=MAX_CONCURRENCY,
        num_cpus=eval_config.cpus,
        num_gpus=gpus,
    )
    return actor.remote(valid, test, train_reference, eval_config, quality)


def find_evaluator(name: str = EVALUATOR_NAME, namespace: str | None = None) -> Any:
    """The running evaluator actor, looked up by name (trials call this).

    Args:
        name: the actor's name.
        namespace: the Ray namespace (None: the job's).

    Returns:
        The actor handle.

    Raises:
        ValueError: no actor of that name is alive (Ray's error).
    """
    return ray.get_actor(name, namespace=namespace)
