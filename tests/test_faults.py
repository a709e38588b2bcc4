"""Faults a long population run must survive, each injected for real on a local Ray.

A diverging trial (a learning rate that turns the losses into NaN), a trial actor's process
killed, the evaluator actor's process killed, the driver killed and resumed, and a crash in
the middle of writing a result file.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from raygan.config import ModelConfig, SearchConfig, replace
from test_tune import _trainable, evaluator, tiny_dataset, tiny_experiment  # noqa: F401 (evaluator: a fixture)

pytestmark = pytest.mark.ray

DIVERGING_LR = 1e3  # without D's max-norm the tiny pair's losses are NaN after one Tune step


def _histories(experiment: str | Path) -> dict[str, list[dict]]:
    """Every result each trial reported, in order, read back from the trials' result.json.

    Safe to call while Tune is writing: a line not yet complete is left out.
    """
    out: dict[str, list[dict]] = {}
    for path in sorted(Path(experiment).glob("*/result.json")):
        for line in path.read_text().splitlines():
            try:
                result = json.loads(line)
            except ValueError:
                continue
            out.setdefault(result["trial_id"], []).append(result)
    return out


@pytest.mark.parametrize("scheduler", ["pbt", "asha"])
def test_a_diverging_trial_is_replaced_or_stopped_and_the_experiment_goes_on(ray_local, tmp_path, monkeypatch, scheduler):
    """Two trials, one with a learning rate that makes its losses NaN at once. PBT replaces it by
    exploit at a perturbation; ASHA stops it; the run ends normally either way, the healthy trial
    ranks first and best/ holds a healthy generator."""
    from ray import tune

    from raygan import search
    from raygan.models import generate, load_generator
    from raygan.tune import run_experiment

    iterations_per_step, max_iterations = 20, 10  # several perturbations: PBT's first may find no donor checkpoint yet
    config = tiny_experiment(tmp_path, scheduler=scheduler, num_trials=1, max_iterations=max_iterations,
                             iterations_per_step=iterations_per_step, checkpoint_every=1)
    config = replace(
        config,
        model=replace(config.model, d_max_norm=None),  # the paper's max-norm keeps even absurd losses finite
        search=replace(config.search, k=(1, 2), lr_g=(0.05, 0.05), prior=("uniform",), g_loss=("non-saturating",),
                       perturbation_interval=2, grace_period=max_iterations),
    )
    original = search.param_space

    def one_healthy_one_diverging(config):  # the search space as the user would write it, plus a grid
        return {**original(config), "lr_d": tune.grid_search([0.05, DIVERGING_LR])}

    monkeypatch.setattr(search, "param_space", one_healthy_one_diverging)
    report = run_experiment(config, dataset=tiny_dataset(), verbose=0)

    histories = _histories(report.experiment_path)
    assert len(histories) == 2
    (bad,) = [t for t, h in histories.items() if any(r["hparams/lr_d"] > 1 for r in h)]
    (good,) = [t for t in histories if t != bad]
    bad_history = histories[bad]
    assert bad_history[0]["diverged"] is True and bad_history[0]["eval/parzen_valid_ll"] == -math.inf
    assert not any(r["diverged"] for r in histories[good])
    rows = {row.trial_id: row for row in report.leaderboard}
    assert rows[good].iterations == max_iterations and math.isfinite(rows[good].parzen_valid_ll)

    if scheduler == "pbt":
        # Replaced by exploit: from some result on it holds a copy of the healthy trial's state
        # (weights, optimisers, step counter) with explored hyperparameters, and trains again.
        replaced = [i for i, r in enumerate(bad_history) if not r["diverged"]]
        assert replaced, [(r["training_iteration"], r["diverged"]) for r in bad_history]
        assert all(bad_history[i]["diverged"] for i in range(replaced[0]))  # it never recovered on its own
        assert all(not r["diverged"] for r in bad_history[replaced[0]:])
        first = bad_history[replaced[0]]
        assert first["hparams/lr_d"] < 1 and math.isfinite(first["eval/parzen_valid_ll"])
        assert first["algorithm/iteration"] == first["training_iteration"] * iterations_per_step
        assert rows[bad].iterations == max_iterations and math.isfinite(rows[bad].parzen_valid_ll)
        assert rows[bad].config["lr_d"] < 1
    else:
        # Stopped at the step that diverged: no compute spent on NaN weights.
        assert len(bad_history) == 1 and rows[bad].iterations == 1
        assert rows[bad].parzen_valid_ll == -math.inf
        assert report.leaderboard[0].trial_id == good and report.leaderboard[-1].trial_id == bad

    summary = json.loads((Path(report.best_dir) / "summary.json").read_text())
    assert summary["trial_id"] == report.leaderboard[0].trial_id and math.isfinite(summary["parzen_test_ll"])
    assert summary["config"]["lr_d"] < 1
    samples = generate(load_generator(Path(report.best_dir) / "generator.pt"), 50)
    assert torch.isfinite(samples).all()


def test_when_every_trial_diverges_the_user_is_told_in_one_sentence(ray_local, tmp_path):
    """Nothing to rank: a UserError that says what to change (the CLI prints it, exit code 2),
    not Tune's RuntimeError from deep inside the result grid, and no best/ from a NaN generator."""
    from raygan.errors import UserError
    from raygan.tune import run_experiment

    config = tiny_experiment(tmp_path, scheduler="asha", num_trials=1, max_iterations=2)
    config = replace(
        config,
        model=replace(config.model, d_max_norm=None),
        search=replace(config.search, lr_d=(DIVERGING_LR, DIVERGING_LR), lr_g=(DIVERGING_LR, DIVERGING_LR)),
    )
    with pytest.raises(UserError, match="diverged") as caught:
        run_experiment(config, dataset=tiny_dataset(), verbose=0)
    assert "\n" not in str(caught.value) and "lr_d" in str(caught.value)
    assert not (tmp_path / "tiny" / "best").exists()


def test_pbt_explore_always_gives_a_config_a_trial_can_run():
    """PBT perturbs a donor's config at every exploit; a config it makes that cannot be run (a
    string multiplied by 1.2, a momentum above 1) crashes the driver or errors the trial, hours in.
    Explore many times from the edges of the default search space and build each result."""
    import random

    from ray.tune.schedulers.pbt import _explore

    from raygan.config import ExperimentConfig, to_dict
    from raygan.search import make_scheduler
    from raygan.trainable import experiment_from_trial_config

    config = ExperimentConfig()
    pbt = make_scheduler(config)
    search = config.search
    random.seed(0)
    for i in range(400):
        donor = {
            "experiment": to_dict(config),
            "seed": i,
            "k": random.choice(search.k),
            "momentum": random.choice(search.momentum),  # the ends of the ranges: perturbed outward
            "lr_d": random.choice(search.lr_d),
            "lr_g": random.choice(search.lr_g),
            "prior": random.choice(search.prior),
            "g_loss": random.choice(search.g_loss),
        }
        explored, _ = _explore(donor, pbt._hyperparam_mutations, pbt._resample_probability,
                               pbt._perturbation_factors, pbt._custom_explore_fn)
        trial = experiment_from_trial_config(explored)  # raises ConfigError for a config a trial cannot run
        assert trial.train.k in search.k and trial.model.prior in search.prior and trial.train.g_loss in search.g_loss
        assert search.momentum[0] <= trial.train.momentum <= search.momentum[1]
        for name in ("lr_d", "lr_g"):
            low, high = getattr(search, name)
            assert low <= getattr(trial.train, name) <= high


def test_an_actor_reused_for_a_fresh_trial_starts_from_that_trials_own_initialisation(evaluator, tmp_path):
    """reuse_actors: Tune hands a finished (here: diverged) trial's actor to a new trial through
    reset_config, with no checkpoint to restore: nothing of the old trial may leak into it."""
    used = _trainable(tmp_path / "used", seed=1, lr_d=DIVERGING_LR)
    with torch.no_grad():
        for p in used.trainer.discriminator.parameters():
            p.fill_(float("nan"))
    assert used.train()["diverged"] is True

    fresh_config = dict(used.config, seed=2, lr_d=0.05)
    assert used.reset_config(fresh_config)
    fresh = _trainable(tmp_path / "fresh", seed=2, lr_d=0.05)  # what a new actor would hold
    for net in ("generator", "discriminator"):
        a, b = getattr(used.trainer, net).state_dict(), getattr(fresh.trainer, net).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), net
    assert used.trainer.iteration == 0 and not used.diverged and used.parzen_valid_ll == -math.inf
    a, b = used.train(), fresh.train()
    assert a["diverged"] is False and math.isfinite(a["eval/parzen_valid_ll"])
    assert a["eval/parzen_valid_ll"] == b["eval/parzen_valid_ll"] and a["loss/d"] == b["loss/d"]
    used.stop()
    fresh.stop()


def test_a_trial_whose_process_is_killed_resumes_from_its_last_checkpoint_and_finishes(ray_local, tmp_path):
    """SIGKILL the trial actor's process in the middle of a step: Tune restarts the trial
    (FailureConfig from tune.max_failures) from its last checkpoint and it runs to the end."""
    from raygan.tune import run_experiment

    iterations_per_step, max_iterations = 300, 6
    config = tiny_experiment(tmp_path, scheduler="random", num_trials=1, max_iterations=max_iterations,
                             iterations_per_step=iterations_per_step, checkpoint_every=1, max_failures=2)
    experiment = tmp_path / config.tune.name
    killed: dict[str, int] = {}

    def kill_after_two_checkpoints() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            for history in _histories(experiment).values():
                trial_dir = next(experiment.glob(f"*{history[0]['trial_id']}*"))
                if len(history) >= 2 and len(list(trial_dir.glob("checkpoint_*"))) >= 2:
                    time.sleep(0.1)  # into the next step (each takes about a second here)
                    os.kill(history[-1]["pid"], signal.SIGKILL)
                    killed.update(pid=history[-1]["pid"], after=history[-1]["training_iteration"])
                    return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_after_two_checkpoints, daemon=True)
    killer.start()
    report = run_experiment(config, dataset=tiny_dataset(), verbose=0)
    killer.join(timeout=10)

    assert killed, "the trial finished before it could be killed"
    (row,) = report.leaderboard
    assert row.status == "OK" and row.iterations == max_iterations and math.isfinite(row.parzen_valid_ll)
    (history,) = _histories(experiment).values()
    before = [r for r in history if r["pid"] == killed["pid"]]
    after = [r for r in history if r["pid"] != killed["pid"]]
    assert before and after and len({r["pid"] for r in after}) == 1  # one restart, in a new process
    resumed_at = after[0]["training_iteration"]
    assert 2 <= resumed_at - 1 <= killed["after"]  # from a checkpoint it had written, not from scratch
    assert [r["training_iteration"] for r in after] == list(range(resumed_at, max_iterations + 1))
    for r in after:  # Tune's counter and the trainer's restored state agree
        assert r["algorithm/iteration"] == r["training_iteration"] * iterations_per_step
    # A step run by both processes (after the checkpoint, before the kill) gives the same numbers:
    # the checkpoint holds the RNG state as well as the weights.
    for r in after:
        for b in before:
            if b["training_iteration"] == r["training_iteration"]:
                assert (b["loss/d"], b["loss/g"]) == (r["loss/d"], r["loss/g"])


def test_a_killed_evaluator_restarts_and_answers_the_calls_in_flight(ray_local):
    """SIGKILL the evaluator's process while it is scoring one call and others wait on it: it
    restarts (max_restarts=-1), reloads its data from its constructor's arguments, and every
    call, including those in flight, is answered with the right score (max_task_retries=-1)."""
    import uuid

    from raygan import parzen
    from raygan.config import EvalConfig
    from raygan.evaluator import get_or_create_evaluator

    rng = np.random.default_rng(0)
    valid = rng.random((3000, 1, 16, 16), dtype=np.float32)
    test = rng.random((500, 1, 16, 16), dtype=np.float32)
    batches = [rng.random((3000, 1, 16, 16), dtype=np.float32) for _ in range(6)]  # each about 0.5 s to score
    eval_config = EvalConfig(num_samples=3000, cpus=0.5)
    handle = get_or_create_evaluator(valid, test, None, eval_config, name=f"test-faults-{uuid.uuid4().hex[:8]}")
    try:
        pid = ray_local.get(handle.pid.remote(), timeout=120)
        calls = [handle.score_valid.remote(ray_local.put(b)) for b in batches]
        deadline = time.monotonic() + 120
        while ray_local.get(handle.stats.remote())["calls"] < 1:  # stats does not wait for the scoring lock
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(pid, signal.SIGKILL)
        answers = ray_local.get(calls, timeout=180)
        new_pid = ray_local.get(handle.pid.remote())
        served_after_restart = ray_local.get(handle.stats.remote())["calls"]
    finally:
        ray_local.kill(handle, no_restart=True)

    assert new_pid != pid
    assert 1 <= served_after_restart < len(batches)  # the calls in flight were re-run by the new process
    for batch, answer in zip(batches, answers):
        sigma, valid_ll = parzen.validation_score(batch, valid, eval_config.sigmas, chunk_size=eval_config.chunk_size)
        assert answer["sigma"] == sigma and answer["parzen_valid_ll"] == pytest.approx(valid_ll, rel=1e-6, abs=1e-4)
