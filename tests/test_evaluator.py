"""The Parzen evaluator actors on a local Ray: same numbers as parzen.py, concurrent callers,
restarts, a pool of replicas that sends each call to the least busy one, the queue's wait."""

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
from raygan.config import EvalConfig, replace
from raygan.data import Dataset
from raygan.evaluator import (
    EVALUATOR_NAME,
    EvaluatorPool,
    evaluator_name,
    shortest_queue,
    start_evaluators,
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


@pytest.fixture(scope="module")
def source(data, snapshot_source, tmp_path_factory):
    """Where the evaluators load the module's data from (a snapshot file)."""
    dataset = Dataset("random", data["train"], data["valid"], data["test"], bounded=True)
    return snapshot_source(dataset, tmp_path_factory.mktemp("evaluator-data"))


def _name() -> str:
    return f"test-{EVALUATOR_NAME}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def evaluator(ray_local, source):
    """A fresh one-replica pool under a name of its own, killed afterwards so no test sees another's."""
    name = _name()
    pool = start_evaluators(source, CONFIG, name=name)
    yield name, pool
    pool.kill()


def without_wait(scores: dict) -> dict:
    """A trial's scores without the seconds they waited (which differ from call to call)."""
    assert scores[keys.QUEUE_SECONDS] >= 0
    return {k: v for k, v in scores.items() if k != keys.QUEUE_SECONDS}


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
    _, pool = evaluator
    started = time.perf_counter()
    valid = pool.score_valid(data["samples"])  # by object reference
    sigma, valid_ll = parzen.validation_score(data["samples"], data["valid"], SIGMAS)
    assert close(without_wait(valid), {keys.PARZEN_VALID_LL: valid_ll, keys.SIGMA: sigma, keys.RANK_SCORE: valid_ll})

    want = parzen.evaluate(data["samples"], data["valid"], data["test"], SIGMAS)
    test = pool.score_test(data["samples"])
    assert close(test, report(want))

    ref = parzen.reference(data["train"], data["valid"], data["test"], 150, SIGMAS, seed=CONFIG.seed)  # as evaluate, mixture
    got = pool.reference()
    assert close(got, {**report(ref), "num_samples": 150})  # min(eval.num_samples, training images)
    assert pool.reference() == got  # cached

    (stats,) = pool.stats()
    assert stats["calls"] == 4 and 0 < stats["busy_s"] <= time.perf_counter() - started
    assert stats["queued"] == 0 and 0 <= stats["waited_s"] <= time.perf_counter() - started


def test_ranking_never_reads_the_test_set(ray_local, data, snapshot_source, tmp_path):
    poisoned = Dataset("poisoned", data["train"], data["valid"], np.full_like(data["test"], np.nan), bounded=True)
    pool = start_evaluators(snapshot_source(poisoned, tmp_path), CONFIG, name=_name())
    try:
        scores = pool.score_valid(data["samples"])
        assert math.isfinite(scores[keys.PARZEN_VALID_LL]) and scores[keys.SIGMA] in SIGMAS
        assert not math.isfinite(pool.score_test(data["samples"])["parzen_test_ll"])
    finally:
        pool.kill()


def test_diverged_samples_rank_last(ray_local, evaluator, data):
    _, pool = evaluator
    broken = data["samples"].copy()
    broken[3, 0, 0, 0] = np.nan
    scores = pool.score_valid(broken)
    assert scores[keys.PARZEN_VALID_LL] == -math.inf and math.isnan(scores[keys.SIGMA])


def test_two_concurrent_callers_get_their_own_answers(ray_local, evaluator, data):
    name, _ = evaluator

    @ray_local.remote(num_cpus=1)
    def score(samples, start_at):
        time.sleep(max(0.0, start_at - time.time()))  # both calls reach the actor together
        return EvaluatorPool.find(name, 1).score_valid(samples)

    start_at = time.time() + 1.0
    refs = [score.remote(data["samples"], start_at), score.remote(data["other"], start_at)]
    got = [without_wait(scores) for scores in ray_local.get(refs, timeout=120)]
    for result, samples in zip(got, (data["samples"], data["other"]), strict=True):
        sigma, valid_ll = parzen.validation_score(samples, data["valid"], SIGMAS)
        assert close(result, {keys.PARZEN_VALID_LL: valid_ll, keys.SIGMA: sigma, keys.RANK_SCORE: valid_ll})
    assert got[0][keys.PARZEN_VALID_LL] != got[1][keys.PARZEN_VALID_LL]

    # And two threads of one caller, released together, on the same pool.
    results: dict[int, dict] = {}
    pool = EvaluatorPool.find(name, 1)
    barrier = threading.Barrier(2)

    def call(i: int, samples: np.ndarray) -> None:
        barrier.wait()
        results[i] = without_wait(pool.score_valid(samples))

    threads = [threading.Thread(target=call, args=(i, s)) for i, s in enumerate((data["other"], data["samples"]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == {0: got[1], 1: got[0]}


def test_killed_actor_restarts_and_still_answers(ray_local, evaluator, data):
    name, pool = evaluator
    before = without_wait(pool.score_valid(data["samples"]))
    (pid,) = pool.pids()
    os.kill(pid, signal.SIGKILL)
    # The next call may reach the dead process first; Ray retries it on the restarted one.
    after = without_wait(pool.score_valid(data["samples"]))
    assert after == before
    assert pool.pids() != [pid]
    assert EvaluatorPool.find(name, 1).stats()[0]["calls"] == 1  # a fresh process, data reloaded


def test_starting_the_pool_again_returns_the_running_replicas(ray_local, evaluator, source):
    name, pool = evaluator
    again = start_evaluators(source, CONFIG, name=name)
    assert again.pids() == pool.pids()


def test_the_shortest_queue_wins_and_ties_go_round_from_home():
    assert shortest_queue([3, 1, 2]) == 1
    assert shortest_queue([0, 0, 0], home=0) == 0 and shortest_queue([0, 0, 0], home=2) == 2
    assert shortest_queue([0, 5, 0], home=1) == 2  # the next tied one after home, cyclically
    assert shortest_queue([math.inf, 7], home=0) == 1  # a replica that did not answer is the busiest


@pytest.fixture
def two_replicas(ray_local, source, data):
    """A pool of two replicas, and samples that take one of them a while to score."""
    pool = start_evaluators(source, replace(CONFIG, replicas=2, cpus=0.5), name=_name())
    slow = np.random.default_rng(1).random((50_000, 1, 8, 8), dtype=np.float32)  # 0.1-1 s of scoring, against ~1 ms for data["samples"]
    yield pool, slow
    pool.kill()


def test_a_pool_sends_each_call_to_the_replica_with_the_shorter_queue(ray_local, two_replicas, data):
    pool, slow = two_replicas
    busy, idle = pool.handles
    long_call = busy.score_valid.remote(slow)
    deadline = time.monotonic() + 120
    while ray_local.get(busy.queue_length.remote()) < 1:  # answered outside the scoring lock
        assert time.monotonic() < deadline
        time.sleep(0.01)
    # Home (the tie-break) points at the busy replica; the queue lengths send the call elsewhere.
    scores = EvaluatorPool(pool.handles, home=0).score_valid(data["samples"])
    ray_local.get(long_call, timeout=120)
    assert [s["calls"] for s in pool.stats()] == [1, 1]
    sigma, valid_ll = parzen.validation_score(data["samples"], data["valid"], SIGMAS)
    assert close(without_wait(scores), {keys.PARZEN_VALID_LL: valid_ll, keys.SIGMA: sigma, keys.RANK_SCORE: valid_ll})
    # And with both idle, trials with different homes go to different replicas.
    for home in (0, 1):
        EvaluatorPool(pool.handles, home=home).score_valid(data["samples"])
    assert [s["calls"] for s in pool.stats()] == [2, 2]


def test_a_call_behind_another_reports_the_time_it_waited(ray_local, two_replicas, data):
    pool, slow = two_replicas
    replica = pool.handles[0]
    sent = time.time()
    first = replica.score_valid.remote(slow, submitted_at=sent)
    deadline = time.monotonic() + 120
    while ray_local.get(replica.queue_length.remote()) < 1:  # the slow call is in: it is scored first
        assert time.monotonic() < deadline
        time.sleep(0.01)
    second = replica.score_valid.remote(data["samples"], submitted_at=sent)
    waits = [scores[keys.QUEUE_SECONDS] for scores in ray_local.get([first, second], timeout=120)]
    stats = pool.stats()[0]
    # Counted from the same moment, the second call waited through the whole of the first's
    # scoring, which is nearly all of the two calls' busy time (the small one takes ~1 % of it).
    assert waits[1] >= 0.9 * stats["busy_s"] and waits[0] < waits[1]
    assert stats["calls"] == 2 and stats["waited_s"] == pytest.approx(sum(waits))


def test_two_experiments_of_one_name_in_different_places_get_their_own_evaluators():
    # Each evaluator holds its own experiment's data; the name alone would let a second run
    # (or a test right after another) pick up the first one's actor, or one that is shutting down.
    a, b = evaluator_name("raygan", "~/raygan_results"), evaluator_name("raygan", "s3://bucket/raygan")
    assert a != b and a == evaluator_name("raygan", "~/raygan_results")
    assert a.startswith(f"{EVALUATOR_NAME}-raygan-") and evaluator_name("other", "~/raygan_results") != a
