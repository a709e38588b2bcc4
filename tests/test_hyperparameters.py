"""The hyperparameter table drives every place that names a searched dimension.

A throwaway dimension added as one row (and its SearchConfig field) must appear in the search
space, PBT's mutations, the first trial's point, the trial's config, TensorBoard's domains and
the leaderboard, with no other change.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from ray import tune as ray_tune
from tensorboard.plugins.hparams import summary_v2 as hp

from raygan import hyperparameters, search
from raygan.config import ExperimentConfig, SearchConfig, TrainConfig, to_dict
from raygan.hyperparameters import CHOICE, LINEAGE, Hyperparameter
from raygan.monitor import search_domains
from raygan.report import Report, TrialRow, format_leaderboard


@dataclass(frozen=True)
class SearchWithBatch(SearchConfig):
    batch_size: tuple[int, ...] = (32, 64, 128)


@pytest.fixture
def with_batch_size(monkeypatch):
    row = Hyperparameter("batch_size", CHOICE, "train")
    monkeypatch.setattr(hyperparameters, "TABLE", (*hyperparameters.TABLE, row))
    return ExperimentConfig(train=TrainConfig(batch_size=64), search=SearchWithBatch())


def test_a_new_row_reaches_the_search_space_and_the_first_trial(with_batch_size):
    space = search.param_space(with_batch_size)
    assert isinstance(space["batch_size"], ray_tune.search.sample.Categorical)
    assert space["batch_size"].categories == [32, 64, 128]
    assert search._base_point(with_batch_size)[0]["batch_size"] == 64  # the experiment's own value


def test_a_new_row_reaches_pbts_mutations_as_a_list(with_batch_size):
    mutations = search._mutations(with_batch_size.search)
    assert mutations["batch_size"] == [32, 64, 128]


def test_a_new_row_sets_its_field_in_the_trials_experiment(with_batch_size):
    trial = {"experiment": to_dict(with_batch_size), "batch_size": 128, "lr_d": 0.05}
    experiment = hyperparameters.apply(with_batch_size, trial)  # what experiment_from_trial_config applies
    assert experiment.train.batch_size == 128 and experiment.train.lr_d == 0.05
    assert hyperparameters.trial_hyperparameters(trial) == {"lr_d": 0.05, "batch_size": 128}


def test_a_new_row_reaches_tensorboard_and_the_leaderboard(with_batch_size):
    domains = search_domains(with_batch_size.search)
    assert isinstance(domains["batch_size"], hp.Discrete) and list(domains["batch_size"].values) == [32, 64, 128]
    row = TrialRow("t_1", -12.5, {"batch_size": 128, "k": 2}, 8, "OK", rank_score=-12.5)
    report = Report([row], {"ranking_samples": 2000}, "/x", "/x/best")
    header, first = format_leaderboard(report)[1:3]
    assert header.split()[-1] == "batch_size" and first.split()[-1] == "128"


def test_lineage_rows_are_never_mutated_and_continuous_rows_are_clipped():
    config = ExperimentConfig(search=SearchConfig(arch=("mlp", "conv"), optimizer=("adam", "sgd"), prior=("uniform", "gaussian")))
    lineage = {h.name for h in hyperparameters.table() if h.kind == LINEAGE}
    assert lineage == {"arch", "optimizer", "prior"}
    assert not lineage & set(search._mutations(config.search))
    clipped = search._clip_to_search({"momentum": 0.9 * 1.2, "lr_d": 1e-9, "k": 3}, config.search)
    assert clipped == {"momentum": config.search.momentum[1], "lr_d": config.search.lr_d[0], "k": 3}


def test_a_pinned_row_is_a_constant_and_stays_out_of_the_mutations():
    config = ExperimentConfig(search=SearchConfig(lr_d=(0.05, 0.05), k=(2,)))
    space = search.param_space(config)
    assert space["lr_d"] == 0.05 and space["k"] == 2
    assert {"lr_d", "k"}.isdisjoint(search._mutations(config.search))


def test_an_empty_list_leaves_a_row_at_the_experiments_own_setting():
    config = ExperimentConfig(search=SearchConfig(arch=(), optimizer=()))
    space = search.param_space(config)
    assert "arch" not in space and "optimizer" not in space  # every trial runs model.arch, train.optimizer
    assert "arch" not in search._base_point(config)[0] and "arch" not in search_domains(config.search)
    own = ExperimentConfig().train.momentum
    pinned_to_own = search.param_space(ExperimentConfig(search=SearchConfig(momentum=(own, own))))
    assert "momentum" not in pinned_to_own  # the experiment's own value: its momentum ramp stays


def test_a_trials_momentum_is_the_momentum_in_force():
    """A PBT-mutated momentum must not fade back to final_momentum through the paper's ramp."""
    experiment = hyperparameters.apply(ExperimentConfig(), {"momentum": 0.85})
    assert experiment.train.momentum == experiment.train.final_momentum == 0.85
