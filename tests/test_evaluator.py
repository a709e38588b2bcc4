"""The Parzen evaluator actor on a local Ray: same numbers as parzen.py, concurrent callers, restarts."""

from __future__ import annotations

import math
import os
import signal
import threading
import time
import uuid

import numpy as np
import pytest

from raygan import keys, parzen
from raygan.config import EvalConfig
from raygan.evaluator import (
    EVALUATOR_NAME,
    evaluator_name,
    find_evaluator,
    get_or_create_evaluator,
)

pytestmark = pytest.mark.ray

SIGMAS = (0.1, 0.3, 1.0)
CONFIG = EvalConfig(num_samples=150, sigmas=SIGMAS, chunk_size=64, cpus=1.0)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return {
        "samples": rng.random((200, 1, 8, 8), dtype=np.float32),
        "other": rng.random((200, 64), dtype=np.float32),
        "valid": rng.random((100, 1, 8, 8), dtype=np.float32),
        "test": rng.random((80, 1, 8, 8), dtype=np.float32),
        "train": rng.random((300, 1, 8, 8), dtype=np.float32),
    }


@pytest.fixture
def evaluator(ray_local, data):
    """A fresh evaluator under a name of its own, killed afterwards so no test sees another's."""
    name = f"test-{EVALUATOR_NAME}-{uuid.uuid4().hex[:8]}"
    handle = get_or_create_evaluator(data["valid"], data["test"], data["train"], CONFIG, name=name)
    yield name, handle
    ray_local.kill(handle, no_restart=True)


def report(result: parzen.ParzenResult) -> dict:
    return {
        "parzen_valid_ll": result.valid_ll,
        "parzen_test_ll": result.test_ll,
        "parzen_test_se": result.test_se,
        "sigma": result.sigma,
    }


def close(a: dict, b: dict) -> bool:
    # The actor runs torch on one thread, the test on two: the BLAS may round differently.
    return a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-4) for k in a)


def test_scores_equal_parzen_called_directly(ray_local, evaluator, data):
    _, handle = evaluator
    started = time.perf_counter()
    valid = ray_local.get(handle.score_valid.remote(ray_local.put(data["samples"])))  # by object reference
    sigma, valid_ll = parzen.validation_score(data["samples"], data["valid"], SIGMAS)
    assert close(valid, {keys.PARZEN_VALID_LL: valid_ll, keys.SIGMA: sigma, keys.RANK_SCORE: valid_ll})

    want = parzen.evaluate(data["samples"], data["valid"], data["test"], SIGMAS)
    test = ray_local.get(handle.score_test.remote(data["samples"]))
    assert close(test, report(want))

    ref = parzen.reference(data["train"], data["valid"], data["test"], 150, SIGMAS, seed=CONFIG.seed)  # as evaluate, mixture
    got = ray_local.get(handle.reference.remote())
    assert close(got, {**report(ref), "num_samples": 150})  # min(eval.num_samples, training images)
    assert ray_local.get(handle.reference.remote()) == got  # cached

    stats = ray_local.get(handle.stats.remote())
    assert stats["calls"] == 4 and 0 < stats["busy_s"] <= time.perf_counter() - started


def test_ranking_never_reads_the_test_set(ray_local, data):
    name = f"test-{EVALUATOR_NAME}-{uuid.uuid4().hex[:8]}"
    poisoned = np.full_like(data["test"], np.nan)
    handle = get_or_create_evaluator(data["valid"], poisoned, None, CONFIG, name=name)
    try:
        scores = ray_local.get(handle.score_valid.remote(data["samples"]))
        assert math.isfinite(scores[keys.PARZEN_VALID_LL]) and scores[keys.SIGMA] in SIGMAS
        assert not math.isfinite(ray_local.get(handle.score_test.remote(data["samples"]))["parzen_test_ll"])
    finally:
        ray_local.kill(handle, no_restart=True)


def test_diverged_samples_rank_last(ray_local, evaluator, data):
    _, handle = evaluator
    broken = data["samples"].copy()
    broken[3, 0, 0, 0] = np.nan
    scores = ray_local.get(handle.score_valid.remote(broken))
    assert scores[keys.PARZEN_VALID_LL] == -math.inf and math.isnan(scores[keys.SIGMA])


def test_two_concurrent_callers_get_their_own_answers(ray_local, evaluator, data):
    name, _ = evaluator

    @ray_local.remote(num_cpus=1)
    def score(samples, start_at):
        time.sleep(max(0.0, start_at - time.time()))  # both calls reach the actor together
        return ray_local.get(find_evaluator(name).score_valid.remote(samples))

    start_at = time.time() + 1.0
    refs = [score.remote(data["samples"], start_at), score.remote(data["other"], start_at)]
    got = ray_local.get(refs, timeout=120)
    for result, samples in zip(got, (data["samples"], data["other"]), strict=True):
        sigma, valid_ll = parzen.validation_score(samples, data["valid"], SIGMAS)
        assert close(result, {keys.PARZEN_VALID_LL: valid_ll, keys.SIGMA: sigma, keys.RANK_SCORE: valid_ll})
    assert got[0][keys.PARZEN_VALID_LL] != got[1][keys.PARZEN_VALID_LL]

    # And two threads of one caller, released together, on the same handle.
    results: dict[int, dict] = {}
    handle = find_evaluator(name)
    barrier = threading.Barrier(2)

    def call(i: int, samples: np.ndarray) -> None:
        barrier.wait()
        results[i] = ray_local.get(handle.score_valid.remote(samples))

    threads = [threading.Thread(target=call, args=(i, s)) for i, s in enumerate((data["other"], data["samples"]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == {0: got[1], 1: got[0]}


def test_killed_actor_restarts_and_still_answers(ray_local, evaluator, data):
    name, handle = evaluator
    before = ray_local.get(handle.score_valid.remote(data["samples"]))
    pid = ray_local.get(handle.pid.remote())
    os.kill(pid, signal.SIGKILL)
    # The next call may reach the dead process first; Ray retries it on the restarted one.
    after = ray_local.get(handle.score_valid.remote(data["samples"]), timeout=120)
    assert after == before
    assert ray_local.get(handle.pid.remote()) != pid
    assert ray_local.get(find_evaluator(name).stats.remote())["calls"] >= 1  # a fresh process, data reloaded


def test_get_or_create_returns_the_running_actor(ray_local, evaluator, data):
    name, handle = evaluator
    again = get_or_create_evaluator(data["valid"], data["test"], data["train"], CONFIG, name=name)
    assert ray_local.get(again.pid.remote()) == ray_local.get(handle.pid.remote())


def test_two_experiments_of_one_name_in_different_places_get_their_own_evaluators():
    # Each evaluator holds its own experiment's data; the name alone would let a second run
    # (or a test right after another) pick up the first one's actor, or one that is shutting down.
    a, b = evaluator_name("raygan", "~/raygan_results"), evaluator_name("raygan", "s3://bucket/raygan")
    assert a != b and a == evaluator_name("raygan", "~/raygan_results")
    assert a.startswith(f"{EVALUATOR_NAME}-raygan-") and evaluator_name("other", "~/raygan_results") != a
