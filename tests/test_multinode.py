"""Several Ray nodes on one machine (``ray.cluster_utils.Cluster``): trials spread over the
nodes, and a trial whose node is lost resumes from its last checkpoint on another node.

The cluster: a head node with one CPU, taken by the Parzen evaluator (created while the head is
the only node, so it lives there, as it does on the real cluster's head), and three one-CPU
worker nodes. A trial asks for one CPU, so at most one trial fits on a node and none on the
head: the population has to spread. The node-loss test removes a worker node that hosts a
trial; the evaluator is deliberately kept out of it (its own restart, ``max_restarts=-1``, is
another matter), and the test checks that it kept serving without restarting.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from ray.tune import Callback

# tests/ is on sys.path under pytest's default (prepend) import mode: reuse test_tune's tiny setup.

pytestmark = pytest.mark.ray

NAME = "multinode"  # every test's experiment name: they share the evaluator the fixture starts
WORKERS = 3  # two trials and a spare node for the one that loses its node
# A dead node (its raylet refuses connections) is declared dead after 3 failed health checks
# 1 s apart, not Ray's default 5 checks 3 s apart, so that the lost trial restarts soon; a live
# node on a loaded machine still gets 5 s to answer each check, so it is never declared dead.
FAST_NODE_DEATH = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 1000,
    "health_check_timeout_ms": 5000,
    "health_check_failure_threshold": 3,
}


@pytest.fixture(scope="module")
def cluster(without_local_ray, tiny_dataset, tiny_experiment, snapshot_source):
    """A head (1 CPU, the evaluator) and WORKERS worker nodes (1 CPU each), the driver connected."""
    import ray
    from ray.cluster_utils import Cluster

    from raygan.evaluator import evaluator_name, replica_names, start_evaluators

    # The cluster writes its address to <RAY_TMPDIR>/ray/ray_current_cluster, where a plain
    # ray.init() anywhere on this machine would find and join it: keep it in a private place.
    temp = tempfile.mkdtemp(prefix="rg-")  # short: Ray's socket paths must fit in 107 bytes
    previous = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = temp
    cluster = None
    try:
        cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 1, "include_dashboard": False, "_system_config": FAST_NODE_DEATH},
        )
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        data, config = tiny_dataset(), tiny_experiment(Path(temp), name=NAME)
        evaluators = start_evaluators(snapshot_source(data, temp), config.eval, name=evaluator_name(NAME, config.tune.storage_path))
        (evaluator,) = evaluators.handles
        evaluator_pid = ray.get(evaluator.pid.remote(), timeout=60)  # placed: the head is the only node
        for _ in range(WORKERS):
            cluster.add_node(num_cpus=1, wait=False)
        cluster.wait_for_nodes(timeout=60)
        (replica,) = replica_names(evaluator_name(NAME, config.tune.storage_path), config.eval.replicas)
        yield SimpleNamespace(cluster=cluster, evaluator=evaluator, evaluator_pid=evaluator_pid, evaluator_name=replica)
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        if previous is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = previous
        shutil.rmtree(temp, ignore_errors=True)


def _persisted_iterations(experiment: str, trial_id: str) -> list[int]:
    """training_iteration of each line of a trial's result.json in the experiment's storage."""
    (path,) = Path(experiment).glob(f"*_{trial_id}_*/result.json")
    return [json.loads(line)["training_iteration"] for line in path.read_text().splitlines()]


def _actor_node(cluster, name: str) -> str:
    """The node id of the live actor with this name."""
    actors = cluster.global_state.actor_table(None).values()
    (node,) = [a["Address"]["NodeID"] for a in actors if a["Name"] == name and a["State"] == "ALIVE"]
    return node


EVERY, TOTAL = 2, 8  # checkpoint interval and Tune steps per trial in the node-loss run
KEYS = ("training_iteration", "node_id", "pid", "algorithm/iteration")  # what the tests read of a result


class Choreographer(Callback):
    """A Tune callback that records every result and steps in twice, so that the run goes the
    same way on any machine, idle or loaded. It runs in Tune's driver loop, between a trial's
    result and the next step Tune asks of it.

    1. Overlap: a trial that reports before the other has reported anything is frozen (SIGSTOP)
       until the other reports. Otherwise a fast first trial could finish before the second
       one's actor has started, and Tune would hand its actor, node included, to the second
       trial (``reuse_actors``): the two would run one after the other on one node.
    2. Node loss: once both have reported and a trial reports its ``lose_after``-th result, its
       process is frozen, its node's raylet and agents are killed without warning (SIGKILL, as
       when a machine dies: Ray finds out by the node's missed health checks), then the process.
    """

    def __init__(self, cluster, lose_after: int) -> None:
        self.cluster, self.lose_after = cluster, lose_after
        self.results: dict[str, list[dict]] = {}  # trial id -> its results, in order
        self.lost: dict | None = None  # trial, node_id, pid and iteration of the lost trial
        self._frozen: int | None = None
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def __getstate__(self) -> dict:
        # Tune pickles its run config, callbacks included, into tuner.pkl; a live cluster
        # handle and a lock are no part of what a restored experiment needs.
        return {"lose_after": self.lose_after}

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.results.setdefault(trial.trial_id, []).append({k: result[k] for k in KEYS})
        if len(self.results) == 1 and self._frozen is None and self._timer is None:
            self._frozen = result["pid"]
            os.kill(self._frozen, signal.SIGSTOP)
            self._timer = threading.Timer(150.0, self.thaw)  # never a hang: the test then fails on overlap
            self._timer.daemon = True
            self._timer.start()
        elif len(self.results) >= 2:
            self.thaw()
            if self.lost is None and result["training_iteration"] >= self.lose_after:
                self._lose(trial.trial_id, result)

    def thaw(self) -> None:
        with self._lock:
            if self._frozen is not None:
                _signal(self._frozen, signal.SIGCONT)
                self._frozen = None
            if self._timer is not None:
                self._timer.cancel()

    def _lose(self, trial_id: str, result: dict) -> None:
        pid, node_id = result["pid"], result["node_id"]
        os.kill(pid, signal.SIGSTOP)
        (node,) = [n for n in self.cluster.worker_nodes if n.node_id == node_id]
        self.cluster.remove_node(node, allow_graceful=False)
        _signal(pid, signal.SIGKILL)
        self.lost = {"trial": trial_id, "node_id": node_id, "pid": pid, "iteration": result["training_iteration"]}


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def node_loss_run(cluster, tmp_path_factory, tiny_dataset, tiny_experiment):
    """Two trials on a head and three workers; one trial's node is lost after its first checkpoint.

    Returns the report, every trial's results in order, the lost trial and the config.
    """
    from raygan.tune import run_experiment

    config = tiny_experiment(
        tmp_path_factory.mktemp("multinode"),
        name=NAME,
        cpus_per_trial=1.0,  # a whole worker node: one trial per node
        scheduler="random",  # FIFO: no PBT exploit, so a trial's iterations only move by the node loss
        max_iterations=TOTAL,
        checkpoint_every=EVERY,
        max_failures=2,
    )
    choreographer = Choreographer(cluster.cluster, lose_after=EVERY + 1)  # after a checkpoint exists
    try:
        report = run_experiment(config, dataset=tiny_dataset(), verbose=0, callbacks=[choreographer])
    finally:
        choreographer.thaw()
    assert choreographer.lost is not None, "no trial reached the point where its node was to be lost"
    return SimpleNamespace(report=report, results=choreographer.results, lost=choreographer.lost, config=config)


def test_trials_spread_over_the_nodes(cluster, node_loss_run):
    results, lost = node_loss_run.results, node_loss_run.lost
    assert len(results) == 2
    # Where each trial ran before the node loss (the other trial was never moved).
    first_nodes = {trial: rows[0]["node_id"] for trial, rows in results.items()}
    (other,) = set(results) - {lost["trial"]}
    assert {r["node_id"] for r in results[other]} == {first_nodes[other]}
    assert first_nodes[lost["trial"]] == lost["node_id"]
    assert len(set(first_nodes.values())) == 2, first_nodes  # one trial per node
    head = cluster.cluster.head_node.node_id
    assert head not in first_nodes.values()  # the head's CPU is the evaluator's
    # They ran at the same time, each on its own node (not one after the other on one node).
    pids = {trial: {r["pid"] for r in rows} for trial, rows in results.items()}
    assert not pids[other] & pids[lost["trial"]]


def test_a_trial_on_a_lost_node_resumes_elsewhere_from_its_last_checkpoint(cluster, node_loss_run):
    report, results, lost, config = node_loss_run.report, dict(node_loss_run.results), node_loss_run.lost, node_loss_run.config

    # Every trial completed, the moved one included.
    assert [(row.iterations, row.status) for row in report.leaderboard] == [(TOTAL, "OK"), (TOTAL, "OK")]
    moved = results.pop(lost["trial"])
    (other,) = results.values()
    assert [r["training_iteration"] for r in other] == list(range(1, TOTAL + 1))

    # The moved trial: steps 1..L on the lost node, then R+1..TOTAL on another live node, where R
    # is its last checkpoint: at most one checkpoint interval of progress is done again.
    before = [r for r in moved if r["node_id"] == lost["node_id"]]
    after = [r for r in moved if r["node_id"] != lost["node_id"]]
    assert moved == before + after, "results from the lost node after the move"
    done = [r["training_iteration"] for r in before]
    assert done == list(range(1, len(done) + 1)) and len(done) >= lost["iteration"]
    resumed = [r["training_iteration"] for r in after]
    assert resumed and resumed == list(range(resumed[0], TOTAL + 1)), resumed
    checkpoint = resumed[0] - 1
    assert checkpoint % EVERY == 0 and len(done) - EVERY <= checkpoint <= len(done), (done, resumed)
    assert checkpoint > 0  # resumed from a checkpoint, not from scratch
    # Tune's own record in the experiment's storage tells the same story.
    assert _persisted_iterations(report.experiment_path, lost["trial"]) == done + resumed
    new_nodes = {r["node_id"] for r in after}
    live_workers = {node.node_id for node in cluster.cluster.worker_nodes}
    assert len(new_nodes) == 1 and new_nodes <= live_workers, (new_nodes, live_workers)
    # The restored trainer carries on from the checkpoint's Algorithm 1 counter, not from zero.
    per_step = config.tune.iterations_per_step
    assert after[0]["algorithm/iteration"] == (checkpoint + 1) * per_step
    assert moved[-1]["algorithm/iteration"] == TOTAL * per_step

    # The evaluator, on the head, kept serving through the loss without restarting.
    import ray

    assert _actor_node(cluster.cluster, cluster.evaluator_name) == cluster.cluster.head_node.node_id
    assert ray.get(cluster.evaluator.pid.remote(), timeout=60) == cluster.evaluator_pid
