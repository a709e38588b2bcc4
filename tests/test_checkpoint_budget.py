"""The disk budget: ``tune.checkpoints_kept`` per trial, and never a PBT exploit of a checkpoint
the budget deleted; the run's checkpoint bytes as the report counts them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from raygan.config import ConfigError, ExperimentConfig, SearchConfig, TuneConfig, replace
from raygan.files import checkpoint_usage
from raygan.search import BudgetedPBT, checkpoints_pbt_needs, make_scheduler


def _pbt(perturbation_interval: int, checkpoint_every: int, kept: int) -> ExperimentConfig:
    return ExperimentConfig(search=SearchConfig(perturbation_interval=perturbation_interval),
                            tune=TuneConfig(scheduler="pbt", checkpoint_every=checkpoint_every, checkpoints_kept=kept))


def _pbt_inside(scheduler):
    """The PBT that runs the exploits, inside the ResourceChangingScheduler that tune.reallocate puts around it."""
    from ray.tune.schedulers import ResourceChangingScheduler

    assert isinstance(scheduler, ResourceChangingScheduler)
    return scheduler._base_scheduler


@pytest.mark.parametrize(("interval", "every", "needed"), [(4, 2, 3), (2, 1, 3), (5, 2, 4), (2, 4, 2), (1, 1, 2)])
def test_pbt_needs_one_checkpoint_more_than_a_donor_saves_between_perturbations(interval, every, needed):
    assert checkpoints_pbt_needs(_pbt(interval, every, 10)) == needed
    assert isinstance(_pbt_inside(make_scheduler(_pbt(interval, every, needed))), BudgetedPBT)
    with pytest.raises(ConfigError, match=f"checkpoints_kept {needed - 1} is too few for PBT.*at least {needed}"):
        make_scheduler(_pbt(interval, every, needed - 1))


def test_the_other_schedulers_keep_as_few_checkpoints_as_asked():
    for scheduler in ("asha", "random"):
        config = _pbt(4, 1, 1)
        make_scheduler(replace(config, tune=replace(config.tune, scheduler=scheduler)))  # no exploit, no rule


class _Trial:
    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


def test_pbt_skips_an_exploit_whose_donor_checkpoint_is_gone(tmp_path, monkeypatch):
    from ray.tune import Checkpoint
    from ray.tune.schedulers import PopulationBasedTraining

    copied = []
    monkeypatch.setattr(PopulationBasedTraining, "_exploit", lambda self, controller, trial, donor: copied.append(donor))
    scheduler = _pbt_inside(make_scheduler(_pbt(4, 2, 3)))
    trial, donor = _Trial("a"), _Trial("b")
    kept, deleted = tmp_path / "checkpoint_000004", tmp_path / "checkpoint_000002"
    kept.mkdir()
    scheduler._trial_state[donor] = type("State", (), {"last_checkpoint": Checkpoint(str(deleted))})()
    scheduler._exploit(None, trial, donor)
    assert copied == [] and scheduler.skipped_exploits == 1
    scheduler._trial_state[donor].last_checkpoint = Checkpoint(str(kept))
    scheduler._exploit(None, trial, donor)
    assert copied == [donor] and scheduler.skipped_exploits == 1


def test_checkpoint_usage_counts_checkpoint_directories_only(tmp_path):
    experiment = tmp_path / "run"
    for trial, checkpoints in (("t0", 3), ("t1", 1)):
        for i in range(checkpoints):
            directory = experiment / trial / f"checkpoint_{i:06d}"
            directory.mkdir(parents=True)
            (directory / "trainer.pt").write_bytes(b"x" * 1000)
            (directory / "scores.json").write_bytes(b"{}")
        (experiment / trial / "result.json").write_bytes(b"y" * 500)  # not a checkpoint
    (experiment / "best").mkdir()
    (experiment / "best" / "generator.pt").write_bytes(b"z" * 700)
    (experiment / "t2").mkdir()  # a trial without checkpoints
    usage = checkpoint_usage(str(experiment))
    assert (usage.trials, usage.checkpoints, usage.bytes, usage.most_per_trial) == (2, 4, 4 * 1002, 3)
    assert checkpoint_usage(str(tmp_path / "nothing")).checkpoints == 0


@pytest.mark.ray
@pytest.mark.slow  # a minute on 2 cores; test_pbt_skips_an_exploit_whose_donor_checkpoint_is_gone covers the skip in the default suite
def test_pbt_never_exploits_a_checkpoint_the_budget_deleted(ray_local, tmp_path, tiny_dataset, tiny_experiment, monkeypatch):
    """Four trials, two at a time (PBT pauses each at its perturbation until the others catch up),
    a checkpoint every step and the fewest kept that PBT allows: the budget deletes checkpoints all
    along, every exploit finds its donor's checkpoint on disk, no restore fails, and no trial ever
    holds more than the budget."""
    from raygan import search
    from raygan.tune import run_experiment

    found: list[bool] = []
    exploit = search.BudgetedPBT._exploit

    def recording(self, controller, trial, donor):
        found.append(search._on_storage(self._trial_state[donor].last_checkpoint))
        exploit(self, controller, trial, donor)

    monkeypatch.setattr(search.BudgetedPBT, "_exploit", recording)
    steps, kept = 6, 3
    config = tiny_experiment(tmp_path, num_trials=4, cpus_per_trial=1.5, max_iterations=steps, checkpoint_every=1,
                             checkpoints_kept=kept)  # the session's Ray: 4 CPUs, one of them the evaluator's
    assert checkpoints_pbt_needs(config) == kept
    report = run_experiment(config, dataset=tiny_dataset(), verbose=0)

    assert found and all(found), found  # PBT exploited, and never a deleted checkpoint
    exploits = (Path(report.experiment_path) / "pbt_global.txt").read_text().splitlines()
    assert len(exploits) == len(found)
    assert [row.status for row in report.leaderboard] == ["OK"] * 4  # every restore found its files
    disk = report.extra["checkpoints"]
    assert disk["trials"] == 4 and disk["most_per_trial"] == kept and disk["checkpoints"] <= 4 * kept
    for trial_dir in Path(report.experiment_path).glob("*/"):
        if (trial_dir / "result.json").exists():
            results = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
            assert results[-1]["training_iteration"] == steps
            assert len(results) > kept  # a checkpoint every step: it saved more than it keeps
            assert 1 <= len(list(trial_dir.glob("checkpoint_*"))) <= kept
    assert disk["bytes"] == sum(os.path.getsize(f) for f in Path(report.experiment_path).glob("*/checkpoint_*/*"))
