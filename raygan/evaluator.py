"""The Parzen evaluation actors: each holds the validation and test splits and scores samples for trials.

A pool of ``eval.replicas`` named, restartable actors serves the whole population
(:func:`start_evaluators`); a trial finds them by name (:meth:`EvaluatorPool.find`), sends its
samples by object reference to the replica with the shortest queue, and gets back its scores
with the seconds the call waited before the replica started on it. A replica loads its data
itself from a small :class:`~raygan.data.DataSource` (and its classifier from the cache, or
trains it again), so Ray can restart it anywhere from its constructor's arguments alone, after
the driver or any other process that held objects for it is gone. All the maths is in
:mod:`raygan.parzen`; this module only keeps the data on the actor's device, serialises access
to it, and counts its busy and waiting time.

Ranking never sees the test set: :meth:`ParzenEvaluator.score_valid` reads the validation split
only; :meth:`ParzenEvaluator.score_test` is for the final report.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import ray
import torch

from raygan import keys, parzen, ranking
from raygan.config import EvalConfig
from raygan.data import DataSource, load_source

EVALUATOR_NAME = "raygan-parzen-evaluator"
# Calls that may wait inside one replica at once (the lock scores them one by one); more wait in
# Ray's queue. Enough for every trial of a large population to be counted by queue_length.
MAX_CONCURRENCY = 64
CONTROL = "control"  # the concurrency group of the calls that never wait for the scoring lock
QUEUE_POLL_S = 2.0  # how long a trial waits for the replicas' queue lengths; a silent one counts as busy

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

    A plain class that takes its data as arrays (tests may use it directly); the actor is its
    subclass :class:`EvaluatorReplica`, which loads its data itself (:func:`start_evaluators`).

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
        self._counts = threading.Lock()  # guards the counters below, which calls outside the scoring lock read
        self._calls, self._busy_s, self._waited_s, self._queued = 0, 0.0, 0.0, 0

    def _tensor(self, x: Any) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x), dtype=torch.float32).to(self.device)

    def _timed(self, fn: Callable[[], T], submitted_at: float | None = None) -> tuple[T, float]:
        """``fn()`` under the scoring lock, and the seconds the call waited for it.

        The wait runs from ``submitted_at`` (the caller's ``time.time()`` when it sent the call,
        so Ray's own queue and the samples' transfer count too) or, where that is None, from the
        call's arrival here.
        """
        arrived = time.time()
        with self._counts:
            self._queued += 1
        try:
            with self._lock:
                waited = max(0.0, time.time() - (arrived if submitted_at is None else submitted_at))
                start = time.perf_counter()
                try:
                    return fn(), waited
                finally:
                    with self._counts:
                        self._calls += 1
                        self._busy_s += time.perf_counter() - start
                        self._waited_s += waited
        finally:
            with self._counts:
                self._queued -= 1

    def score_valid(self, samples: np.ndarray, labels: np.ndarray | None = None,
                    submitted_at: float | None = None) -> dict[str, float]:
        """Validation LL at the sigma chosen on validation: what trials are ranked on.

        Args:
            samples: generated samples, (N, C, H, W) or (N, D), e.g. passed by object reference.
            labels: for a conditional generator's samples, the (N,) classes they were asked for:
                adds the label accuracy and the mean per-class FD where there is a classifier.
            submitted_at: the caller's ``time.time()`` when it sent the call (None: its arrival).

        Returns:
            Result keys (:mod:`raygan.keys`): the Parzen validation LL, its sigma and the rank
            score the scheduler ranks on, -inf and NaN for samples that are not all finite (a
            diverged generator ranks last, and NaN never reaches the scheduler); and
            ``keys.QUEUE_SECONDS``, how long the call waited before this evaluator started on it.
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

        scores, waited = self._timed(run, submitted_at)
        return {**scores, keys.QUEUE_SECONDS: waited}

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

        return self._timed(run)[0]

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

        return self._timed(run)[0]

    @ray.method(concurrency_group=CONTROL)
    def queue_length(self) -> int:
        """Calls waiting for the scoring lock or being scored now: how a trial picks a replica."""
        return self._queued

    @ray.method(concurrency_group=CONTROL)
    def stats(self) -> dict[str, float]:
        """Calls served, seconds spent scoring and seconds callers waited, to show evaluation
        keeps up with the trials.

        Returns:
            ``{"calls": ..., "busy_s": ..., "waited_s": ..., "queued": ...}`` since this process started.
        """
        with self._counts:
            return {"calls": self._calls, "busy_s": self._busy_s, "waited_s": self._waited_s, "queued": self._queued}

    @ray.method(concurrency_group=CONTROL)
    def pid(self) -> int:
        """The actor's process id (tests kill it to check restarts)."""
        return os.getpid()


class EvaluatorReplica(ParzenEvaluator):
    """One evaluator of the pool as Ray runs it: it gets its data back on its own.

    The constructor's arguments are small, plain values that Ray keeps in the actor's creation
    task: a restart, on this node or another, loads the splits from ``source`` and the classifier
    from ``classifier_cache`` (training it again, deterministically, where that node has no copy),
    never from objects that a dead driver or node owned.

    Args:
        source: where the experiment's data set comes from (:func:`raygan.data.load_source`).
        eval_config: the protocol's settings.
        classifier_cache: the directory of the domain classifier's cache file
            (:func:`raygan.quality.for_data`: ``eval.classifier`` where set, else the data set's
            own classifier), or None for Parzen only.
    """

    def __init__(self, source: DataSource, eval_config: EvalConfig, classifier_cache: str | None = None) -> None:
        dataset = load_source(source)
        model = None
        if classifier_cache is not None:
            from raygan import quality

            model = quality.for_data(dataset, eval_config.classifier, cache_dir=classifier_cache)
        super().__init__(dataset.valid, dataset.test, dataset.train, eval_config, model)


def evaluator_name(experiment_name: str, storage_path: str) -> str:
    """The evaluator's actor name for one experiment: its name and where it is stored, as configured.

    Experiments sharing a cluster must not share an evaluator (each holds its own data), and two
    of the same name may run at once under different storage paths; so the name carries a digest
    of the storage path too. The driver and every trial compute it from the same config.
    """
    digest = hashlib.sha256(str(storage_path).encode()).hexdigest()[:8]
    return f"{EVALUATOR_NAME}-{experiment_name}-{digest}"


def replica_names(name: str, replicas: int) -> list[str]:
    """The actor names of a pool's replicas: ``<name>-0`` ... ``<name>-<replicas - 1>``."""
    return [f"{name}-{i}" for i in range(replicas)]


def start_evaluators(
    source: DataSource,
    eval_config: EvalConfig,
    name: str = EVALUATOR_NAME,
    classifier_cache: str | None = None,
    gpus: float = 0.0,
    namespace: str | None = None,
) -> EvaluatorPool:
    """The experiment's ``eval_config.replicas`` named evaluator actors, each started if it is not running yet.

    Each restarts without limit if its process dies (Ray runs its constructor again with the
    same small arguments, and it loads its data again from ``source``), and calls made through
    the handle are retried after a restart. Up to ``MAX_CONCURRENCY`` scoring calls may wait on a
    replica at once; they are scored one after another. Each replica's resources are explicit:
    ``eval_config.cpus`` CPUs and ``gpus`` GPUs.

    Args:
        source: where the replicas load the data set from.
        eval_config: the protocol's settings, the pool's size and each replica's CPUs.
        name: the pool's name (:func:`evaluator_name`); the replicas are :func:`replica_names`.
        classifier_cache: the domain classifier's cache directory, or None for Parzen only.
        gpus: each replica's GPU request (:meth:`raygan.config.TuneConfig.gpus_for` resolves ``eval.gpus``).
        namespace: the Ray namespace (None: the job's).

    Returns:
        The pool.
    """
    actor = ray.remote(concurrency_groups={CONTROL: 2})(EvaluatorReplica)
    handles = [
        actor.options(
            name=replica,
            namespace=namespace,
            get_if_exists=True,
            max_restarts=-1,
            max_task_retries=-1,
            max_concurrency=MAX_CONCURRENCY,
            num_cpus=eval_config.cpus,
            num_gpus=gpus,
        ).remote(source, eval_config, classifier_cache)
        for replica in replica_names(name, eval_config.replicas)
    ]
    return EvaluatorPool(handles)


def shortest_queue(lengths: Sequence[float], home: int = 0) -> int:
    """The index of the shortest queue; a tie goes to the first at or after ``home``, cyclically,
    so that trials with different homes spread over equally idle replicas."""
    n = len(lengths)
    return min(((home + i) % n for i in range(n)), key=lambda i: lengths[i])


class EvaluatorPool:
    """The replicas of one experiment's evaluator behind one evaluator's interface.

    Each call goes to the replica with the shortest queue, asked at the time of the call.

    Args:
        handles: the replicas' actor handles.
        home: breaks ties between equally busy replicas (a trial passes a number of its own).
    """

    def __init__(self, handles: Sequence[Any], home: int = 0) -> None:
        if not handles:
            raise ValueError("an evaluator pool needs at least one replica")
        self.handles = list(handles)
        self.home = home

    @classmethod
    def find(cls, name: str, replicas: int, home: int = 0, namespace: str | None = None) -> EvaluatorPool:
        """The running pool, its replicas looked up by name (trials call this).

        Raises:
            ValueError: a replica of that name is not alive (Ray's error).
        """
        return cls([ray.get_actor(replica, namespace=namespace) for replica in replica_names(name, replicas)], home)

    def choose(self) -> Any:
        """The replica to send the next call to: the one with the fewest calls waiting or running
        (one that does not answer within ``QUEUE_POLL_S``, restarting or not yet placed, counts as busiest)."""
        if len(self.handles) == 1:
            return self.handles[0]
        refs = [h.queue_length.remote() for h in self.handles]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=QUEUE_POLL_S)
        lengths = []
        for ref in refs:
            try:
                lengths.append(ray.get(ref) if ref in ready else math.inf)
            except ray.exceptions.RayError:
                lengths.append(math.inf)
        return self.handles[shortest_queue(lengths, self.home)]

    def score_valid(self, samples: np.ndarray, labels: np.ndarray | None = None) -> dict[str, float]:
        """:meth:`ParzenEvaluator.score_valid` on the least busy replica, the samples passed by
        object reference; the scores include ``keys.QUEUE_SECONDS``, counted from here."""
        replica = self.choose()
        return ray.get(replica.score_valid.remote(ray.put(samples), labels, submitted_at=time.time()))

    def score_test(self, samples: np.ndarray, labels: np.ndarray | None = None) -> dict[str, Any]:
        """:meth:`ParzenEvaluator.score_test` on the least busy replica (the final report's)."""
        return ray.get(self.choose().score_test.remote(ray.put(samples), labels))

    def reference(self) -> dict[str, Any]:
        """:meth:`ParzenEvaluator.reference`, computed by the first replica (it caches it)."""
        return ray.get(self.handles[0].reference.remote())

    def stats(self) -> list[dict[str, float]]:
        """Each replica's :meth:`ParzenEvaluator.stats`, in replica order."""
        return ray.get([h.stats.remote() for h in self.handles])

    def pids(self) -> list[int]:
        """Each replica's process id, in replica order."""
        return ray.get([h.pid.remote() for h in self.handles])

    def kill(self) -> None:
        """End every replica for good (no restart)."""
        for handle in self.handles:
            ray.kill(handle, no_restart=True)
