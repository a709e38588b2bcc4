"""The Parzen evaluation actor: holds the validation and test splits, scores samples for trials.

One named, restartable actor serves the whole population: trials find it by name and pass
their samples by object reference. All the maths is in :mod:`raygan.parzen`; this module only
keeps the data on the actor's device and serialises access to it.

Ranking never sees the test set: :meth:`ParzenEvaluator.score_valid` uses the validation split
only; :meth:`ParzenEvaluator.score_test` is for the final report.
"""

from __future__ import annotations

import math
import os
import threading
import time
from typing import Any

import numpy as np
import ray
import torch

from raygan import parzen
from raygan.config import EvalConfig

EVALUATOR_NAME = "raygan-parzen-evaluator"
DEFAULT_GPU_FRACTION = 0.25


def _result(result: parzen.ParzenResult) -> dict[str, float]:
    return {
        "parzen_valid_ll": result.valid_ll,
        "parzen_test_ll": result.test_ll,
        "parzen_test_se": result.test_se,
        "sigma": result.sigma,
    }


class ParzenEvaluator:
    """Scores generated samples with the Parzen-window protocol (paper Section 5).

    Args:
        valid: validation split, float32 (M, C, H, W) or (M, D).
        test: test split, float32 (T, C, H, W) or (T, D).
        train_reference: training images for the held-out-data reference, or None.
        eval_config: sigma grid, chunk size, number of reference centres, CPU request.
    """

    def __init__(self, valid: np.ndarray, test: np.ndarray, train_reference: np.ndarray | None, eval_config: EvalConfig) -> None:
        self.config = eval_config
        torch.set_num_threads(max(1, math.floor(eval_config.cpus)))
        gpu = bool(ray.get_gpu_ids()) if ray.is_initialized() else False
        self.device = torch.device("cuda", 0) if gpu and torch.cuda.is_available() else torch.device("cpu")
        self.valid = torch.as_tensor(np.asarray(valid), dtype=torch.float32).to(self.device)
        self.test = torch.as_tensor(np.asarray(test), dtype=torch.float32).to(self.device)
        self.train_reference = None if train_reference is None else np.asarray(train_reference)
        self._reference: dict[str, float] | None = None
        self._lock = threading.Lock()  # one scoring at a time: they share the device and the threads
        self._calls, self._busy_s = 0, 0.0

    def _samples(self, samples: Any) -> torch.Tensor:
        return torch.as_tensor(np.asarray(samples), dtype=torch.float32).to(self.device)

    def _timed(self, fn: Any) -> Any:
        with self._lock:
            start = time.perf_counter()
            try:
                return fn()
            finally:
                self._calls += 1
                self._busy_s += time.perf_counter() - start

    def score_valid(self, samples: Any) -> dict[str, float]:
        """Validation LL at the sigma chosen on validation: what trials are ranked on.

        Returns:
            ``{"parzen_valid_ll": ..., "sigma": ...}``.
        """

        def run() -> dict[str, float]:
            sigmas = self.config.sigmas
            grid = parzen.log_likelihood_grid(self._samples(samples), self.valid, sigmas, chunk_size=self.config.chunk_size)
            mean_ll = grid.mean(0)  # one distance pass scores every sigma of the grid
            best = int(torch.argmax(mean_ll))
            return {"parzen_valid_ll": float(mean_ll[best]), "sigma": sigmas[best]}

        return self._timed(run)

    def score_test(self, samples: Any) -> dict[str, float]:
        """The full protocol, test split included: for the final report only, never for ranking.

        Returns:
            ``parzen_valid_ll``, ``parzen_test_ll``, ``parzen_test_se``, ``sigma``.
        """
        return self._timed(
            lambda: _result(parzen.evaluate(self._samples(samples), self.valid, self.test, self.config.sigmas, chunk_size=self.config.chunk_size))
        )

    def reference(self) -> dict[str, float]:
        """The held-out-data reference (real training images as centres), computed once."""
        if self.train_reference is None:
            raise ValueError("this evaluator was built without training images for the reference")
        if self._reference is None:
            self._reference = self._timed(
                lambda: _result(
                    parzen.reference(
                        torch.as_tensor(self.train_reference).to(self.device),
                        self.valid,
                        self.test,
                        self.config.num_samples,
                        self.config.sigmas,
                        chunk_size=self.config.chunk_size,
                    )
                )
            )
        return self._reference

    def stats(self) -> dict[str, float]:
        """Calls served and seconds spent scoring: evaluation must not dominate the trials' time."""
        return {"calls": self._calls, "busy_s": self._busy_s}

    def pid(self) -> int:
        """The actor's process id (tests kill it to check restarts)."""
        return os.getpid()


def evaluator_name(experiment_name: str) -> str:
    """The evaluator's actor name for one experiment (experiments sharing a cluster don't mix data)."""
    return f"{EVALUATOR_NAME}-{experiment_name}"


def _gpus(eval_config: EvalConfig) -> float:
    if eval_config.gpus is not None:
        return eval_config.gpus
    return DEFAULT_GPU_FRACTION if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def get_or_create_evaluator(
    valid: np.ndarray,
    test: np.ndarray,
    train_reference: np.ndarray | None,
    eval_config: EvalConfig,
    name: str = EVALUATOR_NAME,
    namespace: str | None = None,
) -> Any:
    """The named evaluator actor, started if it is not running yet.

    It restarts without limit if its process dies (its constructor runs again with the same
    arguments, reloading the data), and calls made through the handle are retried after a
    restart. Up to 16 calls may wait on it at once; they are scored one after another.

    Returns:
        The actor handle.
    """
    actor = ray.remote(ParzenEvaluator).options(
        name=name,
        namespace=namespace,
        get_if_exists=True,
        max_restarts=-1,
        max_task_retries=-1,
        max_concurrency=16,
        num_cpus=eval_config.cpus,
        num_gpus=_gpus(eval_config),
    )
    return actor.remote(valid, test, train_reference, eval_config)


def find_evaluator(name: str = EVALUATOR_NAME, namespace: str | None = None) -> Any:
    """The running evaluator actor, looked up by name (trials call this)."""
    return ray.get_actor(name, namespace=namespace)
