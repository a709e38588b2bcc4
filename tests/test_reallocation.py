"""Compute follows the winners: Tune's ResourceChangingScheduler moves the CPUs of finished trials to
the running ones, and a trial restarted with more CPUs continues exactly where it stopped."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from ray.tune.execution.placement_groups import PlacementGroupFactory
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining
from ray.tune.schedulers.resource_changing_scheduler import (
    DistributeResources,
    DistributeResourcesToTopJob,
    ResourceChangingScheduler,
)

from raygan import keys
from raygan.config import ExperimentConfig, TuneConfig, replace
from raygan.trainable import GANTrainable, trial_cpus

pytestmark = pytest.mark.ray


def _histories(experiment: str | Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for path in sorted(Path(experiment).glob("*/result.json")):
        for line in path.read_text().splitlines():
            result = json.loads(line)
            out.setdefault(result["trial_id"], []).append(result)
    return out


@pytest.mark.parametrize(("reallocate", "allocation"), [("even", DistributeResources), ("best", DistributeResourcesToTopJob)])
@pytest.mark.parametrize(("scheduler", "base"), [("pbt", PopulationBasedTraining), ("asha", ASHAScheduler), ("random", FIFOScheduler)])
def test_every_scheduler_is_wrapped_so_that_freed_resources_move(reallocate, allocation, scheduler, base):
    from raygan.search import make_scheduler, tune_config

    config = ExperimentConfig(tune=TuneConfig(scheduler=scheduler, reallocate=reallocate))
    wrapped = make_scheduler(config, {"CPU": 0.5, "GPU": 0.25}, {"CPU": 1.0, "GPU": 0.25})
    assert isinstance(wrapped, ResourceChangingScheduler) and isinstance(wrapped._base_scheduler, base)
    function = wrapped._resources_allocation_function.allocation
    assert type(function) is allocation
    assert function.increase_by == {"CPU": 0.5, "GPU": 0.25}  # a trial grows by its own request
    assert function.reserve_resources == {"CPU": 1.0, "GPU": 0.25}  # the evaluator's is never handed out
    assert tune_config(config).reuse_actors is False  # Tune's ResourceChangingScheduler needs a fresh actor per change


class _Trial:
    def __init__(self, cpus, gpus=0.0):
        self.placement_group_factory = PlacementGroupFactory([{"CPU": cpus, "GPU": gpus}])


@pytest.mark.parametrize(("old", "new", "moves"), [
    ((0.5, 0.0), (1.0, 0.0), False),  # one thread either way: no restart for nothing
    ((1.0, 0.0), (1.5, 0.0), False),
    ((0.5, 0.0), (2.0, 0.0), True),  # two threads
    ((1.5, 0.0), (2.0, 0.0), True),
    ((0.5, 0.25), (1.0, 0.5), True),  # a larger GPU share
])
def test_resources_move_only_where_they_change_how_the_trial_runs(old, new, moves):
    from raygan.search import WhenItChangesTheRun

    offered = PlacementGroupFactory([{"CPU": new[0], "GPU": new[1]}])
    gate = WhenItChangesTheRun(lambda *args: offered)
    assert (gate(None, _Trial(*old), {}, None) is offered) is moves
    assert WhenItChangesTheRun(lambda *args: None)(None, _Trial(*old), {}, None) is None


def test_no_reallocation_keeps_the_bare_scheduler_and_reuses_actors():
    from raygan.search import make_scheduler, tune_config

    config = ExperimentConfig(tune=TuneConfig(reallocate="none"))
    assert isinstance(make_scheduler(config), PopulationBasedTraining)
    assert tune_config(config).reuse_actors is True


def test_a_trial_holds_the_cpus_of_its_placement_group():
    assert trial_cpus(None, 0.5) == 0.5  # outside Tune: what the experiment asks for
    assert trial_cpus(PlacementGroupFactory([{"CPU": 2.0, "GPU": 0.5}]), 0.5) == 2.0


def test_a_trial_restored_with_more_cpus_continues_exactly_on_more_threads(evaluator, tmp_path, make_trainable, monkeypatch):
    """The ResourceChangingScheduler's restart: checkpoint on 1 CPU, a new actor on 2, restore. The
    trainer's state (both nets, both optimisers, the counters, the random stream) is restored bit
    for bit; only the thread count differs, and training goes on as if never stopped."""
    straight = make_trainable()
    for _ in range(3):
        straight.train()

    first = make_trainable()
    first.train()
    saved = {k: v for k, v in first.trainer.state_dict().items()}
    checkpoint = first.save(str(tmp_path / "ckpt"))
    first.stop()

    monkeypatch.setattr(GANTrainable, "trial_resources", property(lambda self: PlacementGroupFactory([{"CPU": 2.0}])))
    bigger = make_trainable(seed=99)
    assert bigger.cpus == 2.0 and torch.get_num_threads() == 2
    bigger.restore(checkpoint)
    restored = bigger.trainer.state_dict()
    for net in ("generator", "discriminator"):
        assert all(torch.equal(saved[net][k], restored[net][k]) for k in saved[net])
    for opt in ("opt_d", "opt_g"):
        a, b = saved[opt]["state"], restored[opt]["state"]
        assert all(torch.equal(a[i][s], b[i][s]) for i in a for s in a[i] if isinstance(a[i][s], torch.Tensor))
    assert restored["iteration"] == saved["iteration"] and torch.equal(restored["rng"]["cpu"], saved["rng"]["cpu"])

    results = [bigger.train(), bigger.train()]
    assert [r[keys.CPUS] for r in results] == [2.0, 2.0]
    assert [r[keys.ALGORITHM_ITERATION] for r in results] == [40, 60]  # 20 iterations per step, no step lost or repeated
    a, b = straight.trainer.generator.state_dict(), bigger.trainer.generator.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # these tiny nets' ops run on one thread either way
    straight.stop()
    bigger.stop()


DIVERGING_LR = 1e5


def test_the_cpus_of_a_stopped_trial_go_to_the_running_one(ray_local, tmp_path, monkeypatch, tiny_dataset, tiny_experiment):
    """Two trials hold every CPU the local Ray has for trials (1.5 each; the evaluator's 1 CPU is
    reserved). One diverges and stops at its first step; the other is restarted from its checkpoint
    with both trials' CPUs (3) and finishes every step, its iteration counter unbroken."""
    from ray import tune

    from raygan import search
    from raygan.tune import run_experiment

    config = tiny_experiment(tmp_path, scheduler="random", reallocate="even", cpus_per_trial=1.5, max_iterations=8, num_trials=1,
                             checkpoint_every=1)
    config = replace(config, model=replace(config.model, d_max_norm=None), refine=replace(config.refine, methods=()),
                     search=replace(config.search, start_from_base=False))  # the grid below, not the base point, makes the trials
    original = search.param_space
    monkeypatch.setattr(search, "param_space", lambda c: {**original(c), "lr_d": tune.grid_search([0.05, DIVERGING_LR])})
    report = run_experiment(config, dataset=tiny_dataset(), verbose=0)

    histories = _histories(report.experiment_path)
    (bad,) = [t for t, h in histories.items() if h[0]["diverged"]]
    (good,) = [t for t in histories if t != bad]
    assert len(histories[bad]) == 1
    survivor = histories[good]
    cpus = [r[keys.CPUS] for r in survivor]
    assert cpus[0] == 1.5 and cpus[-1] == 3.0 and cpus == sorted(cpus), cpus
    assert [r[keys.ALGORITHM_ITERATION] for r in survivor] == [20 * (i + 1) for i in range(8)]
    assert math.isfinite(report.leaderboard[0].parzen_valid_ll) and report.leaderboard[0].trial_id == good
