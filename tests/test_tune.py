"""The population trainer with a real local Ray: end to end, PBT's exploit, resume, resources."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from raygan.config import (
    EvalConfig,
    ExperimentConfig,
    SearchConfig,
    TuneConfig,
    load_config,
)

pytestmark = pytest.mark.ray


def test_end_to_end_tune_of_two_trials(ray_local, tmp_path, tiny_dataset, tiny_experiment):
    from raygan.tune import format_report, run_experiment

    config = tiny_experiment(tmp_path)
    report = run_experiment(config, dataset=tiny_dataset(), verbose=0)

    assert len(report.leaderboard) == 2
    assert all(row.iterations == 4 and row.status == "OK" for row in report.leaderboard)
    scores = [row.parzen_valid_ll for row in report.leaderboard]
    assert scores == sorted(scores, reverse=True) and all(math.isfinite(s) for s in scores)

    best = Path(report.best_dir)
    summary = json.loads((best / "summary.json").read_text())
    for key in ("parzen_valid_ll", "parzen_test_ll", "parzen_test_se", "sigma", "trial_id", "config"):
        assert key in summary
    assert summary["sigma"] in config.eval.sigmas
    # The summary's numbers are the Parzen protocol's on best/generator.pt's own samples.
    from raygan import parzen
    from raygan.models import generate, load_generator

    data = tiny_dataset()
    samples = generate(load_generator(best / "generator.pt"), config.eval.num_samples, seed=config.eval.seed)
    want = parzen.evaluate(samples, data.valid, data.test, config.eval.sigmas)
    assert summary["parzen_test_ll"] == pytest.approx(want.test_ll, abs=1e-3)
    assert summary["parzen_test_se"] == pytest.approx(want.test_se, abs=1e-3)
    assert summary["sigma"] == want.sigma
    assert set(summary["config"]) >= {"lr_d", "lr_g", "momentum", "prior"}  # what the tiny search varies
    assert math.isfinite(report.reference["parzen_test_ll"])

    state = torch.load(best / "generator.pt", weights_only=True)  # loads without unpickling code
    assert state["format"].startswith("raygan-generator")
    saved = load_config(best / "config.yaml")
    assert saved.train.momentum == summary["config"]["momentum"] and saved.model.prior == summary["config"]["prior"]
    assert (best / "samples.png").stat().st_size > 0
    assert oct((best / "summary.json").stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # the user's umask, not 0600

    # The population as one generator: both trials mixed, weights on the simplex, scored like the best trial.
    mixture = summary["mixture"]
    weights = [m["weight"] for m in mixture["members"]]
    assert len(weights) == 2 and all(w >= 0 for w in weights) and sum(weights) == pytest.approx(1, abs=1e-6)
    assert mixture["best_single"]["trial_id"] == summary["trial_id"] and (best / "mixture.pt").is_file()
    assert math.isfinite(mixture["mixture"]["parzen_test_ll"])
    # The best generator's samples corrected by its own D (raygan.refine), scored the same way.
    drs = summary["refined"]["drs"]
    assert math.isfinite(drs["parzen_test_ll"]) and 0 < drs["acceptance"] <= 1 and drs["num_samples"] == config.eval.num_samples
    assert drs["calibration"]["method"] == config.refine.calibration and (best / "samples_drs.png").stat().st_size > 0
    assert drs["by_class"] is False  # the tiny data have no labels: D alone
    assert state["discriminator"]["format"] == "raygan-discriminator/1"
    from raygan import refine

    again, _ = refine.sample_file(best / "generator.pt", data, config.eval.num_samples, "drs", config.refine, seed=config.eval.seed)
    assert parzen.evaluate(again.samples, data.valid, data.test, config.eval.sigmas).test_ll == pytest.approx(drs["parzen_test_ll"], abs=1e-3)
    text = format_report(report)
    assert "Leaderboard" in text and "Held-out-data reference" in text and "Mixture of the best 2 trials" in text
    assert "corrected by its own discriminator" in text

    # Every step is scored in the tiny config: each result says how long its samples waited for the
    # evaluator, a part of the step's evaluation time.
    for result_file in Path(report.experiment_path).glob("*/result.json"):
        for line in result_file.read_text().splitlines():
            result = json.loads(line)
            assert 0 <= result["eval/queue_seconds"] <= result["eval/seconds"]
            # Training on one torch thread uses at most about a second of CPU per second of wall.
            assert result["perf/iterations_per_cpu_s"] >= 0.5 * result["perf/iterations_per_s"] > 0
    # The checkpoints on disk, as the report counts them, and the line that says so.
    disk = report.extra["checkpoints"]
    on_disk = [f for f in Path(report.experiment_path).glob("*/checkpoint_*/*")]
    assert disk["bytes"] == sum(f.stat().st_size for f in on_disk) > 0
    assert 1 <= disk["most_per_trial"] <= config.tune.checkpoints_kept and disk["trials"] == 2
    assert f"in {disk['checkpoints']} checkpoints of 2 trials" in text


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_existing_experiment_is_not_overwritten(ray_local, tmp_path, tiny_dataset, tiny_experiment):
    from raygan.errors import UserError
    from raygan.tune import run_experiment

    config = tiny_experiment(tmp_path, name="taken")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("results")
    with pytest.raises(UserError, match="already exists"):
        run_experiment(config, dataset=tiny_dataset(), verbose=0)
    assert (tmp_path / "taken" / "keep.txt").read_text() == "results"


def test_pbt_exploit_copies_the_donors_weights_and_optimiser_state(evaluator, tmp_path, make_trainable):
    donor = make_trainable(seed=1, lr_d=0.1)
    taker = make_trainable(seed=2, k=3, prior="gaussian")
    donor.train()
    donor.train()
    taker.train()
    checkpoint = donor.save(str(tmp_path / "ckpt"))

    # PBT's exploit with reuse_actors: reset_config to the explored config, then restore.
    explored = dict(taker.config, k=2, lr_g=0.02, prior="hypersphere")
    assert taker.reset_config(explored)
    taker.restore(checkpoint)

    for net in ("generator", "discriminator"):
        a = getattr(donor.trainer, net).state_dict()
        b = getattr(taker.trainer, net).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    for opt in ("opt_d", "opt_g"):
        a = getattr(donor.trainer, opt).state_dict()["state"]
        b = getattr(taker.trainer, opt).state_dict()["state"]
        assert all(torch.equal(a[i]["momentum_buffer"], b[i]["momentum_buffer"]) for i in a)
    assert taker.trainer.iteration == donor.trainer.iteration
    # ... and keeps the explored hyperparameters, not the donor's.
    assert taker.trainer.train.k == 2 and taker.trainer.train.lr_g == 0.02
    assert taker.trainer.model.prior == "hypersphere"
    donor.stop()
    taker.stop()


def test_save_load_continue_equals_uninterrupted(evaluator, tmp_path, make_trainable):
    straight = make_trainable()
    for _ in range(3):
        straight.train()

    first = make_trainable()
    first.train()
    checkpoint = first.save(str(tmp_path / "ckpt"))
    first.stop()
    resumed = make_trainable(seed=99)  # a fresh actor, even with another init
    resumed.restore(checkpoint)
    resumed.train()
    resumed.train()

    a, b = straight.trainer.generator.state_dict(), resumed.trainer.generator.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    a, b = straight.trainer.discriminator.state_dict(), resumed.trainer.discriminator.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    straight.stop()
    resumed.stop()


def test_a_diverged_trial_reports_it_and_stops_training(evaluator, tmp_path, make_trainable):
    trial = make_trainable()
    with torch.no_grad():
        for p in trial.trainer.discriminator.parameters():
            p.fill_(float("nan"))
    result = trial.train()
    assert result["diverged"] is True and result["eval/parzen_valid_ll"] == -math.inf
    before = trial.trainer.iteration
    trial.train()
    assert trial.trainer.iteration == before  # no compute spent on NaN weights
    trial.stop()


def test_resources_ask_for_a_gpu_fraction_when_the_cluster_has_gpus(monkeypatch):
    import ray

    from raygan import tune as raygan_tune
    from raygan.trainable import with_data

    config = ExperimentConfig(tune=TuneConfig(default_gpu_fraction=0.5), eval=EvalConfig(gpus=0.125))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 2.0})
    assert raygan_tune._gpus(config) == (0.5, 0.125)  # trials: the default share; the evaluator: what it asked
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0})
    assert raygan_tune._gpus(config) == (0.0, 0.125)

    trainable = with_data({"train": np.zeros((4, 1, 2, 2), np.float32), "bounded": True}, cpus=2, gpus=0.25)
    request = trainable.default_resource_request({})
    assert request.required_resources == {"CPU": 2.0, "GPU": 0.25}


def test_yaml_configs_in_experiments_load():
    root = Path(__file__).resolve().parents[1] / "experiments"
    files = sorted(root.glob("*.yaml"))
    assert files
    for path in files:
        load_config(path)
    assert load_config(root / "mnist5k.yaml") == ExperimentConfig()  # the default run is the defaults
    assert yaml.safe_load((root / "mnist5k.yaml").read_text())["data"]["name"] == "mnist5k"


def test_pbts_explore_never_changes_a_lineage_setting():
    """PBT copies a donor's whole config and perturbs only the mutations raygan hands it: the
    architecture, the learning rule and the prior travel with the weights, unchanged."""
    import random

    from ray.tune.schedulers.pbt import _explore

    from raygan import search

    config = ExperimentConfig(search=SearchConfig(arch=("conv", "mlp"), optimizer=("adam", "sgd"), prior=("uniform", "gaussian")))
    mutations = search._mutations(config.search)
    donor = {"arch": "mlp", "optimizer": "sgd", "prior": "gaussian", "lr_d": 1e-3, "lr_g": 1e-3, "momentum": 0.5, "k": 1}
    random.seed(0)
    for _ in range(200):
        explored, _ = _explore(dict(donor), mutations, 0.25, [1.2, 0.8],
                               custom_explore_fn=lambda c: search._clip_to_search(c, config.search))
        assert {k: explored[k] for k in ("arch", "optimizer", "prior")} == {"arch": "mlp", "optimizer": "sgd", "prior": "gaussian"}
        assert config.search.lr_d[0] <= explored["lr_d"] <= config.search.lr_d[1]


def test_a_copy_of_another_trials_checkpoint_gets_a_new_random_stream(evaluator, tmp_path, make_trainable, monkeypatch):
    """PBT's exploit (a checkpoint of another trial) reseeds the copy; a trial's own checkpoint
    (crash recovery) continues its stream exactly."""
    from raygan.trainable import GANTrainable

    monkeypatch.setattr(GANTrainable, "trial_id", property(lambda self: f"trial-{self.config['seed']}"))
    donor = make_trainable(seed=1)
    donor.train()
    checkpoint = donor.save(str(tmp_path / "ckpt"))
    own, copy = make_trainable(seed=1), make_trainable(seed=2)
    own.restore(checkpoint)
    copy.restore(checkpoint)
    for t in (donor, own, copy):
        t.train()
    g = {name: t.trainer.generator.state_dict() for name, t in (("donor", donor), ("own", own), ("copy", copy))}
    assert all(torch.equal(g["donor"][k], g["own"][k]) for k in g["donor"])  # the same stream
    assert not all(torch.equal(g["donor"][k], g["copy"][k]) for k in g["donor"])  # a new one


def test_a_checkpoint_holds_the_generator_that_was_scored(evaluator, tmp_path, make_trainable):
    """Under a time budget Tune may stop a trial between evaluations: best/ must hold the state
    its score belongs to, not the weights trained since."""
    from raygan.models import generator_state
    from raygan.files import read_scores

    trial = make_trainable()
    from raygan.config import replace

    trial.experiment = replace(trial.experiment, eval=replace(trial.experiment.eval, every=2))
    trial.train()  # step 1: always scored
    trial.train()  # step 2: (2) % 2 == 0, scored
    scored = {k: v.clone() for k, v in generator_state(trial.trainer.sample_generator)["state_dict"].items()}
    trial.train()  # step 3: trained, not scored
    path = trial.save(str(tmp_path / "ckpt")).checkpoint.path
    saved = torch.load(Path(path) / "generator.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(saved[k], scored[k]) for k in scored)
    current = trial.trainer.sample_generator.state_dict()
    assert not all(torch.equal(saved[k], current[k]) for k in saved)
    assert read_scores(path)["training_iteration"] == 2


def test_decision_steps_are_tunes_own():
    """The steps a trial scores at whatever eval.every says are the milestones of Tune's own ASHA
    bracket, or PBT's perturbations."""
    from ray.tune.schedulers.async_hyperband import _Bracket

    from raygan.config import ExperimentConfig, replace
    from raygan.search import decision_steps

    for grace, rf, max_t in [(2, 4, 200), (1, 2, 16), (3, 3, 100), (5, 4, 5), (8, 2, 4)]:
        config = ExperimentConfig()
        config = replace(config, search=replace(config.search, grace_period=grace, reduction_factor=rf),
                         tune=replace(config.tune, max_iterations=max_t))
        tunes = {milestone for milestone, _ in _Bracket(min(grace, max_t), max_t, rf, 0)._rungs}
        assert decision_steps(config) == tunes, (grace, rf, max_t)
    assert decision_steps(ExperimentConfig()) == {2, 8, 32, 128}  # the default run's
    pbt = ExperimentConfig()
    pbt = replace(pbt, tune=replace(pbt.tune, scheduler="pbt", max_iterations=13))
    assert decision_steps(pbt) == {4, 8, 12}  # perturbation_interval 4
    assert decision_steps(replace(pbt, tune=replace(pbt.tune, scheduler="random"))) == frozenset()


@pytest.mark.parametrize("scheduler, search, expected", [
    ("asha", dict(grace_period=2, reduction_factor=3), [2, 4, 6, 8]),  # rungs 2, 6, 18
    ("pbt", dict(perturbation_interval=3), [3, 4, 6, 8]),  # perturbations 3, 6, 9, ...
])
def test_a_trial_scores_where_its_scheduler_decides(evaluator, tmp_path, make_trainable, tiny_experiment,
                                                    scheduler, search, expected):
    """ASHA (at its rungs) and PBT (at its perturbations) decide on the score a result carries: a
    trial scores there even between its eval.every steps, and only there and at those steps."""
    from raygan import keys
    from raygan.config import replace

    config = tiny_experiment(tmp_path, scheduler=scheduler, max_iterations=20)
    config = replace(config, eval=replace(config.eval, every=4), search=replace(config.search, **search))
    trial = make_trainable(experiment=config)
    scored = [step for step in range(1, 9) if trial.train()[keys.EVAL_SECONDS] > 0]
    assert scored == expected


@pytest.mark.parametrize(("deadline", "left", "step_s", "eval_s", "last"), [
    (None, 0.0, 5.0, 1.0, False),  # no time budget: never
    (True, 100.0, 5.0, 1.0, False),  # the next step, and its scoring, still end in time
    (True, 5.5, 5.0, 1.0, True),  # the next step would not: score this one
    (True, 6.0, 5.0, 1.0, False),  # the next step and its scoring end exactly in time
    (True, 0.5, 5.0, 1.0, False),  # too late to score even this one
])
def test_the_last_step_before_the_deadline_is_the_last_that_can_be_scored_in_time(deadline, left, step_s, eval_s, last):
    from raygan.trainable import DEADLINE_SLACK_S, last_step_before_deadline

    now = 1000.0
    deadline = None if deadline is None else now + DEADLINE_SLACK_S + left
    assert last_step_before_deadline(now, deadline, step_s, eval_s) is last


def test_a_trial_scores_and_checkpoints_its_last_step_before_the_time_budget_ends(evaluator, tmp_path, make_trainable,
                                                                                 tiny_experiment, monkeypatch):
    """Tune's time budget stops a trial wherever it is: the last step that ends before it is scored
    between eval.every steps and checkpointed at once, so the answer is the generator at the end."""
    from ray.tune.result import SHOULD_CHECKPOINT

    from raygan import keys, trainable as trainable_module
    from raygan.config import replace
    from raygan.files import read_scores
    from raygan.models import generator_state

    config = tiny_experiment(tmp_path, scheduler="asha", max_iterations=20)
    config = replace(config, eval=replace(config.eval, every=4),
                     search=replace(config.search, grace_period=2, reduction_factor=3))  # rungs 2, 6, 18
    asked = []

    def third_step_is_last(now, deadline, step_s, eval_s):
        asked.append(deadline)
        return len(asked) == 3

    monkeypatch.setattr(trainable_module, "last_step_before_deadline", third_step_is_last)
    trial = make_trainable(experiment=config, deadline=1e12)
    results = [trial.train() for _ in range(3)]
    assert [r[keys.EVAL_SECONDS] > 0 for r in results] == [False, True, True]  # step 3: neither rung nor every 4th
    assert [bool(r.get(SHOULD_CHECKPOINT)) for r in results] == [False, False, True]
    assert asked == [1e12] * 3
    scored = {k: v.clone() for k, v in generator_state(trial.trainer.sample_generator)["state_dict"].items()}
    path = trial.save(str(tmp_path / "ckpt")).checkpoint.path
    saved = torch.load(Path(path) / "generator.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(saved[k], scored[k]) for k in scored)
    assert read_scores(path)["training_iteration"] == 3


class _Trial:
    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


def _asha(cls, rf: int):
    scheduler = cls(time_attr="training_iteration", metric="score", mode="max", max_t=16, grace_period=1,
                    reduction_factor=rf)
    trials = {name: _Trial(name) for name in "ABCD"}
    for t in trials.values():
        scheduler.on_trial_add(None, t)
    return scheduler, trials


def _report(scheduler, trial, step: int, score: float) -> str:
    return scheduler.on_trial_result(None, trial, {"training_iteration": step, "score": score})


def test_asha_stops_a_faster_worse_trial_once_the_better_one_reaches_the_rung():
    """Tune's ASHA lets the first trial at a rung go on; a worse trial that always arrives first
    is never stopped. RecheckedASHA stops it at its next result once the better one is recorded."""
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    from raygan.search import RecheckedASHA

    for cls, a_goes_on in [(ASHAScheduler, True), (RecheckedASHA, False)]:
        scheduler, t = _asha(cls, rf=2)
        assert _report(scheduler, t["A"], 1, 1.0) == TrialScheduler.CONTINUE  # first at the rung
        assert _report(scheduler, t["B"], 1, 2.0) == TrialScheduler.CONTINUE  # better than A
        expected = TrialScheduler.CONTINUE if a_goes_on else TrialScheduler.STOP
        assert _report(scheduler, t["A"], 2, 1.5) == expected, cls.__name__
        assert _report(scheduler, t["B"], 2, 2.5) == TrialScheduler.CONTINUE


def test_rechecked_asha_keeps_the_top_share_of_a_rung_whatever_the_arrival_order():
    """Four trials at the first rung, worst first: once all are recorded, only the top half
    (reduction factor 2) or the top quarter (4) goes on, as synchronous successive halving keeps."""
    from ray.tune.schedulers import TrialScheduler

    from raygan.search import RecheckedASHA

    for rf, keep in [(2, {"C", "D"}), (4, {"D"})]:
        scheduler, t = _asha(RecheckedASHA, rf)
        for name, score in zip("ABCD", [1.0, 2.0, 3.0, 4.0]):
            _report(scheduler, t[name], 1, score)
        going_on = {name for name in "ABCD" if _report(scheduler, t[name], 2, 5.0) == TrialScheduler.CONTINUE}
        assert going_on == keep, rf
