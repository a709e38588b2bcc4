"""Faults a long population run must survive, each injected for real on a local Ray.

A diverging trial (a learning rate that turns the losses into NaN), a trial actor's process
killed, the evaluator actor's process killed, the driver killed and resumed, and a crash in
the middle of writing a result file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from raygan.config import ModelConfig, SearchConfig, replace
from test_tune import _trainable, evaluator, tiny_dataset, tiny_experiment  # noqa: F401 (evaluator: a fixture)

pytestmark = pytest.mark.ray

DIVERGING_LR = 1e3  # without D's max-norm the tiny pair's losses are NaN after one Tune step


def _histories(experiment: str | Path) -> dict[str, list[dict]]:
    """Every result each trial reported, in order, read back from the trials' result.json."""
    out: dict[str, list[dict]] = {}
    for path in sorted(Path(experiment).glob("*/result.json")):
        for line in path.read_text().splitlines():
            if line.strip():
                result = json.loads(line)
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

    iterations_per_step, max_iterations = 20, 8
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
    (bad,) = [t for t, h in histories.items() if h[0]["hparams/lr_d"] > 1]
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
