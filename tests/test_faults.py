"""Faults a long population run must survive, each injected for real on a local Ray.

A diverging trial (a learning rate that turns the losses into NaN), a trial actor's process
killed, the evaluator actor's process killed, the driver stopped (Ctrl-C, SIGKILL) and resumed,
and a crash in the middle of writing a result file; with them, what Tune does around a fault:
PBT's explore after an exploit, and an actor reused for a fresh trial.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from raygan import keys
from raygan.config import ModelConfig, load_config, replace

pytestmark = pytest.mark.ray

DIVERGING_LR = 1e5  # the tiny pair's losses are NaN after one Tune step (at 1e3 they reach 1e21 and stay finite)


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


# PBT's replacement of a diverged trial takes a minute on 2 cores: slow; ASHA's stop stays in the default suite.
@pytest.mark.parametrize("scheduler", [pytest.param("pbt", marks=pytest.mark.slow), "asha"])
def test_a_diverging_trial_is_replaced_or_stopped_and_the_experiment_goes_on(ray_local, tmp_path, monkeypatch, scheduler, tiny_dataset, tiny_experiment):
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
                       perturbation_interval=2, grace_period=max_iterations, start_from_base=False),
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


def test_when_every_trial_diverges_the_user_is_told_in_one_sentence(ray_local, tmp_path, tiny_dataset, tiny_experiment):
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
    pbt = make_scheduler(replace(config, tune=replace(config.tune, scheduler="pbt")))._base_scheduler  # inside the resource mover
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


def test_an_actor_reused_for_a_fresh_trial_starts_from_that_trials_own_initialisation(evaluator, tmp_path, make_trainable):
    """reuse_actors: Tune hands a finished (here: diverged) trial's actor to a new trial through
    reset_config, with no checkpoint to restore: nothing of the old trial may leak into it."""
    used = make_trainable(seed=1, lr_d=DIVERGING_LR)
    with torch.no_grad():
        for p in used.trainer.discriminator.parameters():
            p.fill_(float("nan"))
    assert used.train()["diverged"] is True

    fresh_config = dict(used.config, seed=2, lr_d=0.05)
    assert used.reset_config(fresh_config)
    fresh = make_trainable(seed=2, lr_d=0.05)  # what a new actor would hold
    for net in ("generator", "discriminator"):
        a, b = getattr(used.trainer, net).state_dict(), getattr(fresh.trainer, net).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), net
    assert used.trainer.iteration == 0 and not used.diverged and used.scores[keys.PARZEN_VALID_LL] == -math.inf
    a, b = used.train(), fresh.train()
    assert a["diverged"] is False and math.isfinite(a["eval/parzen_valid_ll"])
    assert a["eval/parzen_valid_ll"] == b["eval/parzen_valid_ll"] and a["loss/d"] == b["loss/d"]


def test_a_trial_whose_process_is_killed_resumes_from_its_last_checkpoint_and_finishes(ray_local, tmp_path, tiny_dataset, tiny_experiment):
    """SIGKILL the trial actor's process in the middle of a step: Tune restarts the trial
    (FailureConfig from tune.max_failures) from its last checkpoint and it runs to the end."""
    from raygan.tune import run_experiment

    iterations_per_step, max_iterations = 300, 6
    # reallocate "none": a lone trial handed the idle CPUs would also restart in a new process.
    config = tiny_experiment(tmp_path, scheduler="random", num_trials=1, max_iterations=max_iterations,
                             iterations_per_step=iterations_per_step, checkpoint_every=1, max_failures=2, reallocate="none")
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


def test_a_killed_evaluator_restarts_and_answers_the_calls_in_flight(ray_local, tmp_path, snapshot_source):
    """SIGKILL the evaluator's process while it is scoring one call and others wait on it: it
    restarts (max_restarts=-1), loads its data again from its data source, and every call,
    including those in flight, is answered with the right score (max_task_retries=-1)."""
    import uuid

    from raygan import parzen
    from raygan.config import EvalConfig
    from raygan.data import Dataset
    from raygan.evaluator import start_evaluators

    rng = np.random.default_rng(0)
    valid = rng.random((3000, 1, 16, 16), dtype=np.float32)
    test = rng.random((500, 1, 16, 16), dtype=np.float32)
    batches = [rng.random((3000, 1, 16, 16), dtype=np.float32) for _ in range(6)]  # each about 0.5 s to score
    eval_config = EvalConfig(num_samples=3000, cpus=0.5)
    source = snapshot_source(Dataset("random", test, valid, test, bounded=True), tmp_path)
    pool = start_evaluators(source, eval_config, name=f"test-faults-{uuid.uuid4().hex[:8]}")
    (handle,) = pool.handles
    try:
        (pid,) = pool.pids()
        calls = [handle.score_valid.remote(ray_local.put(b)) for b in batches]
        deadline = time.monotonic() + 120
        while pool.stats()[0]["calls"] < 1:  # stats does not wait for the scoring lock
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(pid, signal.SIGKILL)
        answers = ray_local.get(calls, timeout=180)
        new_pid = pool.pids()[0]
        served_after_restart = pool.stats()[0]["calls"]
    finally:
        pool.kill()

    assert new_pid != pid
    # The calls in flight were re-run by the new process. All of them can be: a call counted as
    # served just before the kill, whose answer had not yet left the old process, is re-run too.
    assert 1 <= served_after_restart <= len(batches)
    for batch, answer in zip(batches, answers):
        sigma, valid_ll = parzen.validation_score(batch, valid, eval_config.sigmas, chunk_size=eval_config.chunk_size)
        assert answer[keys.SIGMA] == sigma and answer[keys.PARZEN_VALID_LL] == pytest.approx(valid_ll, rel=1e-6, abs=1e-4)


def _objects_in_plasma() -> int:
    """How many objects the session's Ray holds in its object store now, on every node."""
    import re

    import ray
    from ray._private.internal_api import memory_summary

    summary = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)  # never another session's Ray
    return int(re.search(r"Plasma memory usage \d+ MiB, (\d+) objects", summary).group(1))


def _objects_in_plasma_once_quiet() -> int:
    """The object store's count once it has held still for a second: an earlier test's objects may
    still be on their way out, and a count read while they go would not be this test's baseline."""
    count, since = _objects_in_plasma(), time.monotonic()
    deadline = since + 60
    while time.monotonic() - since < 1.0 and time.monotonic() < deadline:
        time.sleep(0.1)
        now = _objects_in_plasma()
        if now != count:
            count, since = now, time.monotonic()
    return count


def _sigkill(pid: int) -> None:
    """Kill a process as a crash would, and wait until it is gone."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_the_evaluator_restarts_after_its_creators_references_are_gone(ray_local, capfd):
    """Ray runs a restarted actor's constructor again with the same arguments; an argument held in
    the object store is gone once its owner drops it (or dies with its node), and the restart
    fails (Ray issue 53727). The control shows that with an actor fed by ray.put. An evaluator
    replica's arguments are its data's name and seed: killed after the creator dropped everything
    it had, it comes back, loads its data itself, and scores exactly as before."""
    import gc
    import uuid

    import ray

    from raygan import parzen
    from raygan.config import DataConfig, EvalConfig
    from raygan.data import DataSource, load_dataset
    from raygan.evaluator import start_evaluators

    class HoldsArrays:  # defined here: Ray ships it by value (the workers cannot import tests/)
        """An actor fed its data as its creator's objects in the object store, as raygan's evaluator was."""

        def __init__(self, valid: np.ndarray) -> None:
            self.total = float(np.asarray(valid).sum())

        def pid(self) -> int:
            return os.getpid()

        def sum(self) -> float:
            return self.total

    # The control: its constructor's argument lives in the object store, owned by this driver.
    stored = _objects_in_plasma_once_quiet()
    array = ray_local.put(np.ones((1000, 1000), dtype=np.float32))  # too large to travel inline in the task
    held = ray_local.remote(HoldsArrays).options(max_restarts=-1, max_task_retries=-1).remote(array)
    assert ray_local.get(held.sum.remote(), timeout=120) == 1_000_000 and _objects_in_plasma() == stored + 1
    del array
    gc.collect()
    deadline = time.monotonic() + 60
    while _objects_in_plasma() > stored:  # until the object store has freed it
        assert time.monotonic() < deadline
        time.sleep(0.05)
    _sigkill(ray_local.get(held.pid.remote()))
    with pytest.raises(ray.exceptions.RayActorError, match="could not be computed"):
        ray_local.get(held.sum.remote(), timeout=120)
    assert "53727" in capfd.readouterr().err  # Ray warned about it when the actor was made

    # The evaluator replica: made from a DataSource; no object of its creator's behind it.
    eval_config = EvalConfig(num_samples=500, ranking_samples=500, sigmas=(0.05, 0.1, 0.2), cpus=0.5)
    source = DataSource(DataConfig(name="ring-8"), seed=5)
    pool = start_evaluators(source, eval_config, name=f"test-faults-{uuid.uuid4().hex[:8]}")
    try:
        samples = np.random.default_rng(1).normal(size=(500, 1, 1, 2)).astype(np.float32)
        before = pool.score_valid(samples)
        gc.collect()
        (pid,) = pool.pids()
        _sigkill(pid)
        after = pool.score_valid(samples)
        assert pool.pids() != [pid] and pool.stats()[0]["calls"] == 1  # a new process answered
    finally:
        pool.kill()
    assert "53727" not in capfd.readouterr().err
    valid = load_dataset("ring-8", seed=5).valid
    sigma, valid_ll = parzen.validation_score(samples, valid, eval_config.sigmas, chunk_size=eval_config.chunk_size)
    for scores in (before, after):
        assert scores[keys.SIGMA] == sigma and scores[keys.PARZEN_VALID_LL] == pytest.approx(valid_ll, rel=1e-6, abs=1e-4)


DRIVER_STEPS = 12  # room to interrupt after two recorded checkpoints (steps 2 and 4), and little more to resume
# checkpoints_kept: every checkpoint is kept here. With the default budget of 4, one --resume after a
# SIGKILL in three logged a traceback from Tune's checkpoint handling (_process_trial_save: the
# state a SIGKILL leaves behind can list checkpoints the budget has deleted since); the run finished.
DRIVER_CONFIG = f"""\
data: {{name: toy-1d}}
model: {{arch: mlp, noise_dim: 2, g_hidden: [16], d_hidden: [16], d_pieces: 2, d_input_dropout: 0.0, d_hidden_dropout: 0.0}}
train: {{batch_size: 50}}
eval: {{num_samples: 200, ranking_samples: 200, sigmas: [0.05, 0.1, 0.2, 0.5], every: 1, cpus: 1.0}}
search: {{perturbation_interval: 2}}
tune: {{scheduler: pbt, num_trials: 2, cpus_per_trial: 1.0, gpus_per_trial: 0.0, time_budget_s: null, max_iterations: {DRIVER_STEPS},
       iterations_per_step: 1000, checkpoint_every: 2, checkpoints_kept: {DRIVER_STEPS}, seed: 0}}
"""
REPO = Path(__file__).resolve().parents[1]


def _session(sid: int) -> list[int]:
    """The processes of one session: a driver started with start_new_session and all it started."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[3]) == sid:
                pids.append(int(entry.name))
    return pids


def _kill_session(sid: int) -> None:
    """SIGKILL what is left of a session we started (a SIGKILLed driver leaves Ray's agents
    behind), and wait until they are gone."""
    deadline = time.monotonic() + 30
    while (left := _session(sid)) and time.monotonic() < deadline:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def _run_cli(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    process = subprocess.Popen(argv, cwd=REPO, env=_cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        process.kill()
        _kill_session(process.pid)
    return subprocess.CompletedProcess(argv, process.returncode, out, err)


def _cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray of its own
    env["OMP_NUM_THREADS"] = "1"
    # Ray's memory monitor kills workers when the machine, not this run, is short of memory: on a
    # shared test machine that is another program's doing.
    env["RAY_memory_monitor_refresh_ms"] = "0"
    return env


def _recorded_checkpoints(experiment: Path, trials: int) -> bool:
    """True once Tune's saved experiment state postdates a checkpoint of every trial: what a
    resume starts from (Tune snapshots its state every few seconds, not at every checkpoint)."""
    states = list(experiment.glob("experiment_state-*.json"))
    trial_dirs = [d for d in experiment.glob("GANTrainable_*") if d.is_dir()]
    if not states or len(trial_dirs) < trials:
        return False
    snapshot = max(p.stat().st_mtime for p in states)
    for trial_dir in trial_dirs:
        checkpoints = sorted(p.stat().st_mtime for p in trial_dir.glob("checkpoint_*"))
        if len(checkpoints) < 2 or checkpoints[-2] > snapshot - 1.0:
            return False
    return True


# A minute and a half each on 2 cores, so slow (the suite must stay under 10 minutes): the default suite
# interrupts and resumes in process (test_your_data.py); these run the CLI as a user does.
@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl-c", "kill -9"])
def test_an_interrupted_driver_resumes_from_its_checkpoints(tmp_path, how):
    """python -m raygan.tune stopped mid-run by Ctrl-C (SIGINT to its process group) or SIGKILL,
    then run again with --resume: the trials continue from their checkpoints to the end."""
    config = tmp_path / "tiny.yaml"
    config.write_text(DRIVER_CONFIG)
    storage = tmp_path / "results"
    experiment = storage / "x"
    argv = [sys.executable, "-m", "raygan.tune", "--config", str(config), "--storage-path", str(storage), "--name", "x"]

    first = subprocess.Popen(argv, cwd=REPO, env=_cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not _recorded_checkpoints(experiment, trials=2):
            assert first.poll() is None, first.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoints recorded in time"
            time.sleep(0.2)
        assert all(len(h) < DRIVER_STEPS for h in _histories(experiment).values())  # still running: a resume has work to do
        if how == "ctrl-c":
            os.killpg(first.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole foreground group
        else:
            os.kill(first.pid, signal.SIGKILL)
        out, err = first.communicate(timeout=120)
    finally:
        first.kill()
        _kill_session(first.pid)
    assert not _session(first.pid)

    if how == "ctrl-c":
        assert first.returncode == 130, err[-3000:]
        assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("interrupted;") and "--resume" in err
        assert "Leaderboard" not in out and not (experiment / "best").exists()  # nothing ranked from unfinished trials
    else:
        assert first.returncode == -signal.SIGKILL
    before = {trial: len(history) for trial, history in _histories(experiment).items()}

    second = _run_cli(argv + ["--resume"], timeout=420)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Leaderboard" in second.stdout and "Traceback" not in second.stderr

    histories = _histories(experiment)
    assert len(histories) == 2
    for trial, history in histories.items():
        resumed = history[before.get(trial, 0):]  # what the second driver's trials reported
        assert resumed, trial
        assert resumed[0]["training_iteration"] >= 2, (trial, [r["training_iteration"] for r in history])
        assert resumed[-1]["training_iteration"] == DRIVER_STEPS
        assert resumed[0]["algorithm/iteration"] == resumed[0]["training_iteration"] * 1000  # restored state, not a fresh init
    summary = json.loads((experiment / "best" / "summary.json").read_text())
    assert summary["trial_id"] in histories and summary["training_iteration"] == DRIVER_STEPS


# ---- atomic writes ---------------------------------------------------------------------------

CRASH_WHILE_WRITING = """
import os, signal, sys
import raygan.files as files

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

if sys.argv[2] == "half-written":
    real_fdopen = files.os.fdopen

    class HalfThenDie:
        def __init__(self, f):
            self.f = f
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            return False
        def write(self, data):
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            os.fsync(self.f.fileno())
            die()

    files.os.fdopen = lambda fd, mode: HalfThenDie(real_fdopen(fd, mode))
else:  # killed after the new bytes are on disk, before the rename
    files.os.replace = die
files.atomic_write_json(sys.argv[1], {"version": 2, "padding": "x" * 100000})
"""


@pytest.mark.parametrize("crash", ["half-written", "before-rename"])
def test_a_process_killed_while_writing_a_result_leaves_the_previous_one(tmp_path, crash):
    from raygan.files import atomic_write_json

    summary = tmp_path / "summary.json"
    atomic_write_json(summary, {"version": 1})
    run = subprocess.run([sys.executable, "-c", CRASH_WHILE_WRITING, str(summary), crash], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == -signal.SIGKILL, run.stderr
    assert json.loads(summary.read_text()) == {"version": 1}
    # What the crash leaves is a hidden temporary file, never a partial file under the final name.
    assert all(p.name.startswith(".summary.json.") and p.name.endswith(".tmp") for p in tmp_path.iterdir() if p != summary)
    assert len(list(tmp_path.iterdir())) == 2


@pytest.mark.parametrize("failing", ["write", "fsync", "replace"])
def test_a_failed_write_keeps_the_previous_generator_and_summary_and_leaves_no_temporary_file(tmp_path, monkeypatch, failing):
    import raygan.files
    from raygan.files import atomic_write_json
    from raygan.models import Generator, load_generator, save_generator

    old = Generator(ModelConfig(arch="mlp", noise_dim=4, g_hidden=(8,)), (1, 2, 2))
    save_generator(tmp_path / "generator.pt", old)
    atomic_write_json(tmp_path / "summary.json", {"version": 1})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    if failing == "write":  # the bytes go out in one write; fail it after half of them
        real_fdopen = raygan.files.os.fdopen

        def half_then_full(fd, mode):
            f = real_fdopen(fd, mode)
            real_write = f.write
            f.write = lambda data: (real_write(data[: len(data) // 2]), disk_full())
            return f

        monkeypatch.setattr(raygan.files.os, "fdopen", half_then_full)
    else:
        monkeypatch.setattr(raygan.files.os, failing, disk_full)
    new = Generator(ModelConfig(arch="mlp", noise_dim=4, g_hidden=(8,)), (1, 2, 2))
    with pytest.raises(OSError):
        save_generator(tmp_path / "generator.pt", new)
    with pytest.raises(OSError):
        atomic_write_json(tmp_path / "summary.json", {"version": 2})
    monkeypatch.undo()

    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # unchanged, nothing added
    loaded = load_generator(tmp_path / "generator.pt")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), old.state_dict().values()))


def test_a_crash_while_writing_best_leaves_every_file_of_the_previous_best_whole(tmp_path, monkeypatch):
    """best/ is rewritten file by file at the end of each run (and of each --resume): a crash in
    the middle leaves each file either the previous one or the new one, complete."""
    import raygan.files
    from raygan.config import ExperimentConfig, to_dict
    from raygan.models import Generator, load_generator, save_generator
    from raygan.report import write_best
    from raygan.trainable import experiment_from_trial_config

    def best_inputs(version: int):
        checkpoint = tmp_path / f"checkpoint_{version}"
        save_generator(checkpoint / "generator.pt", Generator(ModelConfig(arch="mlp", noise_dim=4, g_hidden=(8,)), (1, 4, 4)))
        trial_config = {"experiment": to_dict(ExperimentConfig()), "k": version, "lr_d": 0.1, "lr_g": 0.1,
                        "momentum": 0.5, "prior": "uniform", "g_loss": "minimax", "seed": version}
        experiment = experiment_from_trial_config(trial_config)
        return checkpoint / "generator.pt", experiment, {"version": version}, torch.rand(16, 1, 4, 4)

    best = tmp_path / "best"
    checkpoint, trial_config, summary, samples = best_inputs(1)
    write_best(best, checkpoint, trial_config, summary, samples)
    before = {p.name: p.read_bytes() for p in best.iterdir()}
    assert set(before) == {"generator.pt", "config.yaml", "summary.json", "samples.png"}

    real_replace, calls = raygan.files.os.replace, []

    def crash_on_the_summary(src, dst):
        calls.append(dst)
        if str(dst).endswith("summary.json"):
            raise KeyboardInterrupt  # Ctrl-C (or any crash) right there
        real_replace(src, dst)

    monkeypatch.setattr(raygan.files.os, "replace", crash_on_the_summary)
    with pytest.raises(KeyboardInterrupt):
        write_best(best, *best_inputs(2))
    monkeypatch.undo()

    assert sorted(p.name for p in best.iterdir()) == sorted(before)  # no temporary files left
    assert json.loads((best / "summary.json").read_text()) == {"version": 1}
    assert (best / "samples.png").read_bytes() == before["samples.png"]
    load_generator(best / "generator.pt")  # whichever version, a whole generator
    assert load_config(best / "config.yaml").train.k in (1, 2)
