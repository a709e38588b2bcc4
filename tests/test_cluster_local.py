"""experiments/cluster_local.py: cluster.yaml's path rehearsed with Ray's fake multi-node provider.

The fast tests check the derived local config against cluster.yaml, the arithmetic of the
report (steps redone after a lost node, nodes counted dead or alive), that the process
cleanup stops exactly the sessions it started, and the CPU fallback of a trial whose GPU
torch cannot see. The slow test starts the local cluster for real: a CPU head and GPU workers
from zero, four trials of 0.25 GPU, and checks that they were packed on one GPU node.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import cluster_local

CLUSTER = yaml.safe_load(cluster_local.CLUSTER_YAML.read_text())
GPU_TYPE = "ray.worker.gpu"
HEAD_ID = "f" * 51 + "00000"  # the fake provider's node ids: fff...00000 for the head, then 00001, ...


def _node(n: int) -> str:
    return HEAD_ID[:-5] + f"{n:05d}"


def _rows(*steps_and_nodes: tuple[int, int]) -> list[dict]:
    return [{"trial_id": "t", "training_iteration": s, "node_id": _node(n), "algorithm/iteration": 10 * s} for s, n in steps_and_nodes]


# ------------------------------------------------------------------------------ the local config


def test_local_config_keeps_cluster_yaml_node_types_and_limits():
    from ray.autoscaler._private.util import validate_config

    local = cluster_local.local_cluster_config(CLUSTER, "127.0.0.1:6390")
    validate_config(local)  # Ray's autoscaler schema, as the head's monitor applies it

    head = CLUSTER["available_node_types"][CLUSTER["head_node_type"]]
    local_head = local["available_node_types"][local["head_node_type"]]
    assert local["head_node_type"] == cluster_local.FAKE_HEAD_TYPE
    assert {k: v for k, v in local_head["resources"].items() if k != "object_store_memory"} == head["resources"]
    assert (local_head["min_workers"], local_head["max_workers"]) == (0, 0)

    workers = {n: t for n, t in CLUSTER["available_node_types"].items() if n != CLUSTER["head_node_type"]}
    assert set(local["available_node_types"]) == set(workers) | {cluster_local.FAKE_HEAD_TYPE}
    for name, node_type in workers.items():
        ours = local["available_node_types"][name]
        assert {k: v for k, v in ours["resources"].items() if k != "object_store_memory"} == node_type["resources"]
        assert (ours["min_workers"], ours["max_workers"]) == (node_type["min_workers"], node_type["max_workers"])
        assert ours["node_config"] == {} and ours["labels"] == {cluster_local.NODE_TYPE_LABEL: name}
    for key in ("max_workers", "upscaling_speed", "idle_timeout_minutes"):
        assert local[key] == CLUSTER[key]
    assert local["provider"]["type"] == "fake_multinode" and local["provider"]["gcs_address"] == "127.0.0.1:6390"
    assert not local["setup_commands"] and not local["file_mounts"] and local["docker"] == {}


def test_max_gpu_workers_caps_the_gpu_types_only():
    assert cluster_local.gpu_worker_types(CLUSTER) == [GPU_TYPE]
    capped = cluster_local.local_cluster_config(CLUSTER, "127.0.0.1:6390", max_gpu_workers=1)
    assert capped["available_node_types"][GPU_TYPE]["max_workers"] == 1
    assert capped["available_node_types"][GPU_TYPE]["min_workers"] == 0
    uncapped = cluster_local.local_cluster_config(CLUSTER, "127.0.0.1:6390", max_gpu_workers=99)
    assert uncapped["available_node_types"][GPU_TYPE]["max_workers"] == CLUSTER["available_node_types"][GPU_TYPE]["max_workers"]


# ------------------------------------------------------------------------------ the report


@pytest.mark.parametrize(
    "steps, redone, resumed_from",
    [
        ([(1, 1), (2, 1), (3, 1), (4, 1), (5, 1)], 0, None),  # never moved
        ([(1, 1), (2, 1), (3, 1), (3, 2), (4, 2)], 1, 2),  # lost after step 3, checkpoint at 2: step 3 again
        ([(1, 1), (2, 1), (3, 2), (4, 2)], 0, 2),  # lost right after its checkpoint: nothing redone
        ([(1, 1), (2, 1), (3, 1), (4, 1), (3, 2), (4, 2), (5, 2), (6, 2), (5, 3), (6, 3)], 2 + 2, 2),  # two losses
    ],
)
def test_steps_redone_and_resume_point(steps, redone, resumed_from):
    rows = _rows(*steps)
    assert cluster_local.iterations_redone(rows) == redone
    assert cluster_local.resume_step(rows, _node(1)) == resumed_from


def _facts(nodes: dict[int, tuple[bool, str | None, float]], evaluator: int = 0) -> dict:
    return {
        "head": HEAD_ID,
        "nodes": {_node(n): {"alive": a, "type": t, "gpus": g} for n, (a, t, g) in nodes.items()},
        "evaluator_nodes": [_node(evaluator)],
    }


def test_summary_counts_dead_gpu_nodes_by_type_and_finds_the_evaluator():
    # Node 1 was lost (the GCS reports no resources for it), trial a moved to node 3; node 2 kept b.
    trials = {
        "a": _rows((1, 1), (2, 1), (3, 1), (3, 3), (4, 3)),
        "b": _rows((1, 2), (2, 2), (3, 2), (4, 2)),
        "c": _rows((1, 2), (2, 2)),  # unfinished
    }
    facts = _facts({0: (True, None, 0), 1: (False, GPU_TYPE, 0), 2: (True, GPU_TYPE, 1), 3: (True, GPU_TYPE, 1)})
    kill = {"node": _node(1), "trials": ["a"], "at_s": 12.0}
    report = cluster_local.summarise(trials, facts, [GPU_TYPE], max_iterations=4, checkpoint_every=2, kill=kill)

    assert report["gpu_nodes_started"] == 3
    assert report["trials_per_node"] == {"00001": 1, "00002": 2, "00003": 1}
    assert report["max_trials_per_gpu_node"] == 2 and report["trials_on_head"] == 0
    assert report["trials_finished"] == 2 and report["trials"] == 3
    assert report["evaluator_on_head"] is True
    assert report["iterations_lost"] == {"a": 1} and report["resumed_from_step"] == {"a": 2}
    assert report["lost_trials_resumed_on"] == ["00003"] and report["lost_trials_finished"] == 1

    elsewhere = cluster_local.summarise(trials, {**facts, "evaluator_nodes": [_node(2)]}, [GPU_TYPE], 4, 2, None)
    assert elsewhere["evaluator_on_head"] is False and "iterations_lost" not in elsewhere


def test_busiest_node_is_the_one_with_most_unfinished_trials():
    trials = {
        "a": _rows((1, 1), (2, 1)),
        "b": _rows((1, 1)),
        "c": _rows((1, 2), (2, 2)),
        "d": _rows((1, 2), (2, 2), (3, 2), (4, 2)),  # finished: does not count
    }
    assert cluster_local.busiest_node(trials, max_iterations=4) == (_node(1), ["a", "b"])
    assert cluster_local.busiest_node({"d": trials["d"]}, max_iterations=4) is None


# ------------------------------------------------------------------------------ processes


def test_stop_ends_every_process_of_its_sessions_and_nothing_else():
    # Ours: a session whose leader ignores SIGTERM and has a child (SIGKILL must finish it).
    ours = subprocess.Popen(["bash", "-c", "trap '' TERM; sleep 300 & wait"], start_new_session=True)
    other = subprocess.Popen(["sleep", "300"], start_new_session=True)  # someone else's
    try:
        sessions = cluster_local.Sessions({ours.pid})
        deadline = time.monotonic() + 10
        while len(sessions.pids()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(sessions.pids()) == 2  # bash and its sleep
        assert sessions.stop(grace_s=1.0) == 0
        assert ours.wait(timeout=10) == -signal.SIGKILL
        assert other.poll() is None  # never touched
    finally:
        for p in (ours, other):
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()


# ------------------------------------------------------------------------------ a fake GPU


@pytest.mark.parametrize(
    "gpu_ids, cuda, device, noted",
    [([0], False, "cpu", True), ([], False, "cpu", False), ([], True, "cpu", False), ([0], True, "cuda", False)],
)
def test_trial_device_falls_back_to_the_cpu_and_says_why(gpu_ids, cuda, device, noted):
    from raygan.trainable import trial_device

    got, note = trial_device(gpu_ids=gpu_ids, cuda_available=cuda)
    assert got.type == device
    assert (note is not None) == noted
    if noted:
        assert "torch sees no CUDA device" in note and "CPU" in note


def test_a_device_note_is_written_once_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import TENSORS, EventAccumulator

    from raygan.monitor import TrialMonitor

    monitor = TrialMonitor(tmp_path / "trial", {"k": 1})
    monitor.log_note("device", "Ray assigned GPU [0] to this trial but torch sees no CUDA device: training on the CPU")
    monitor.close()
    events = EventAccumulator(str(tmp_path / "trial"), size_guidance={TENSORS: 0})
    events.Reload()
    (tag,) = [t for t in events.Tags()["tensors"] if t.startswith("notes/")]
    (event,) = events.Tensors(tag)
    assert b"torch sees no CUDA device" in event.tensor_proto.string_val[0]
    assert cluster_local.count_device_notes(tmp_path) == 1


# ------------------------------------------------------------------------------ the real cluster


@pytest.mark.slow
@pytest.mark.ray
def test_local_cluster_packs_four_fractional_trials_on_one_autoscaled_gpu_node():
    """cluster.yaml's head and GPU worker type (capped at one worker), started from zero workers;
    four trials of 0.25 GPU. About 90 s on 2 cores, all in subprocesses of its own."""
    options = cluster_local.Options(num_trials=4, max_iterations=2, max_gpu_workers=1, timeout_s=480)
    report = cluster_local.rehearse(options)

    assert report["tune_exit_code"] == 0, report.get("tune_log_tail")
    assert report["gpu_nodes_started"] == 1
    assert list(report["trials_per_node"].values()) == [4] and report["max_trials_per_gpu_node"] == 4
    assert report["trials_on_head"] == 0  # the head declares no GPU
    assert report["evaluator_on_head"] is True  # created before any GPU node existed
    assert report["trials_finished"] == report["trials"] == 4
    assert report["cpu_fallback_trials"] == 4  # fake GPUs: each trial trained on the CPU and said so
    assert report["ray_processes_left"] == 0
