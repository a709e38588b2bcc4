"""A real TensorBoard server over two trials' TrialMonitor logs, queried through its HTTP data API.

The server binds 127.0.0.1 only, on a port the OS picked, and is always stopped.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import torch
from tensorboard.plugins.hparams import summary_v2 as hp

from raygan.monitor import HPARAMS_METRICS, TrialMonitor, write_experiment_summary

STARTUP_S = 60  # TensorBoard imports a lot; on a loaded 2-core machine it can take a while
TRIALS = {"trial_a": {"k": 1, "prior": "uniform", "lr_d": 0.05}, "trial_b": {"k": 3, "prior": "gaussian", "lr_d": 0.2}}


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_population(root: Path) -> None:
    """Two trials of three steps each, as GANTrainable writes them, and the experiment summary."""
    domains = {"k": hp.Discrete([1, 3]), "prior": hp.Discrete(["uniform", "gaussian"]), "lr_d": hp.RealInterval(0.02, 0.3)}
    for name, hparams in TRIALS.items():
        monitor = TrialMonitor(root / name, hparams, domains=domains)
        for step in (1, 2, 3):
            monitor.log_step(step, {"loss/d": 1.3, "loss/g": 0.8, "d/real": 0.55, "d/fake": 0.45,
                                    "eval/parzen_valid_ll": -800.0 + 10 * step * hparams["k"], "hparams/k": hparams["k"]})
            monitor.log_samples(step, torch.rand(16, 1, 8, 8))
        monitor.close()
    row = {"trial_id": "trial_b", "parzen_valid_ll": -710.0, "iterations": 3, "status": "OK", "config": TRIALS["trial_b"]}
    write_experiment_summary(root / "summary", [row], {"trial_id": "trial_b", "training_iteration": 3, "parzen_test_ll": -720.0,
                                                       "parzen_test_se": 3.0, "parzen_valid_ll": -710.0, "sigma": 0.2})


def get(base: str, path: str, **params: str):
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(f"{base}{path}{query}", timeout=10) as response:
        return json.load(response)


def post(base: str, path: str, body: dict):
    request = urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


@pytest.fixture
def tensorboard_server(tmp_path):
    """``(base_url, logdir)`` of a TensorBoard serving ``tmp_path``, once it lists every run."""
    write_population(tmp_path)
    port = free_loopback_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(tmp_path), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"tensorboard exited with {server.returncode}: {server.stderr.read().decode()[-2000:]}")
            try:
                if len(get(base, "/data/runs")) == len(TRIALS) + 1:  # the first load may still be running
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"tensorboard did not serve all runs within {STARTUP_S} s")
            time.sleep(0.3)
        yield base, tmp_path
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        server.stderr.close()


def test_the_server_lists_the_runs_scalars_samples_hparams_and_summary(tensorboard_server):
    base, _ = tensorboard_server
    assert sorted(get(base, "/data/runs")) == ["summary", "trial_a", "trial_b"]

    tags = get(base, "/data/plugin/scalars/tags")
    for trial in TRIALS:
        assert set(tags[trial]) == {"loss/d", "loss/g", "d/real", "d/fake", "eval/parzen_valid_ll", "hparams/k"}
    assert {"best/parzen_test_ll", "best/parzen_valid_ll"} <= set(tags["summary"])
    points = get(base, "/data/plugin/scalars/scalars", run="trial_b", tag="eval/parzen_valid_ll")
    assert [(step, value) for _, step, value in points] == [(1, -770.0), (2, -740.0), (3, -710.0)]

    images = get(base, "/data/plugin/images/tags")
    assert all(images[trial]["samples/fixed_z"]["samples"] == 1 for trial in TRIALS)

    experiment = post(base, "/data/plugin/hparams/experiment", {"experimentName": ""})
    assert {h["name"] for h in experiment["hparamInfos"]} == {"k", "prior", "lr_d"}
    assert [m["name"]["tag"] for m in experiment["metricInfos"]] == list(HPARAMS_METRICS)
    groups = post(base, "/data/plugin/hparams/session_groups", {
        "startIndex": 0, "sliceSize": 10,
        "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
    })["sessionGroups"]
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == set(TRIALS)
    assert by_name["trial_b"]["hparams"] == {"k": 3.0, "prior": "gaussian", "lr_d": 0.2}
    metrics = {m["name"]["tag"]: m["value"] for m in by_name["trial_b"]["metricValues"]}
    logged = {"eval/parzen_valid_ll", "d/real", "d/fake"}  # this trial wrote no classifier measures
    assert metrics["eval/parzen_valid_ll"] == -710.0 and set(metrics) == logged & set(HPARAMS_METRICS)

    assert set(get(base, "/data/plugin/text/tags")["summary"]) == {"summary/leaderboard/text_summary", "summary/best/text_summary"}
