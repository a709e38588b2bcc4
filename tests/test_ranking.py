"""The ranking rule: a trial that covers too few classes ranks below every trial that covers enough."""

from __future__ import annotations

import math

import numpy as np
import pytest

from raygan import parzen, ranking


@pytest.mark.parametrize("rank_by", ["parzen", "fd"])
def test_a_collapsed_trial_ranks_below_every_covering_one_whatever_its_score(rank_by):
    collapsed = ranking.rank_score(parzen_valid_ll=250.0, fd=1.0, classes_covered=3, rank_by=rank_by, min_classes=9)
    covering = ranking.rank_score(parzen_valid_ll=-900.0, fd=5000.0, classes_covered=10, rank_by=rank_by, min_classes=9)
    assert collapsed < covering
    assert ranking.collapsed(collapsed) and not ranking.collapsed(covering)


def test_within_a_group_the_chosen_score_orders_trials():
    by_parzen = [ranking.rank_score(ll, fd, 10, "parzen", 9) for ll, fd in ((10.0, 50.0), (20.0, 80.0))]
    by_fd = [ranking.rank_score(ll, fd, 10, "fd", 9) for ll, fd in ((10.0, 50.0), (20.0, 80.0))]
    assert by_parzen == [10.0, 20.0] and by_fd == [-50.0, -80.0]  # higher is better: FD enters negated
    low = [ranking.rank_score(ll, 1.0, 2, "parzen", 9) for ll in (10.0, 20.0)]
    assert low[0] < low[1]  # the lower group keeps its order too


def test_no_classifier_no_group_rule_and_a_diverged_trial_ranks_last():
    assert ranking.rank_score(-12.5, None, None, "parzen", 9) == -12.5
    assert ranking.rank_score(-math.inf, None, None) == -math.inf
    assert ranking.rank_score(math.nan, 3.0, 10, "parzen", 9) == -math.inf
    with pytest.raises(ValueError):
        ranking.rank_score(1.0, None, None, "fd", 9)


def _manifold(rng: np.random.Generator, n: int) -> np.ndarray:
    """Points on a curved 3-d manifold in 16 dimensions, with a little noise: a continuous 'data set'."""
    t = rng.random((n, 3))
    x = np.concatenate([np.sin(3 * t), np.cos(3 * t), t, t**2, np.sin(5 * t)[:, :2], np.full((n, 2), 0.5)], 1)
    return (x + 0.03 * rng.standard_normal((n, 16))).astype(np.float32)


def test_ranking_at_the_final_sample_count_is_fair_to_a_diverse_generator():
    """A generator that repeats a few images has a Parzen LL that hardly depends on the number of
    centres; a diverse (if blurrier) one's rises with it. Ranked on 200 centres the repeating one
    wins; on 4,000 the diverse one does: why eval.ranking_samples defaults to eval.num_samples."""
    rng = np.random.default_rng(1)
    valid = _manifold(np.random.default_rng(0), 300)
    diverse = _manifold(rng, 4000) + 0.15 * rng.standard_normal((4000, 16)).astype(np.float32)
    repeating = _manifold(rng, 50)[rng.integers(50, size=4000)] + 0.01 * rng.standard_normal((4000, 16)).astype(np.float32)
    sigmas = tuple(np.logspace(-2, 0, 12))

    def ll(samples, n):
        return parzen.validation_score(samples[:n], valid, sigmas)[1]

    assert abs(ll(repeating, 4000) - ll(repeating, 200)) < 0.5  # flat in the sample count
    assert ll(diverse, 4000) - ll(diverse, 200) > 2.0  # rises with it
    assert ll(repeating, 200) > ll(diverse, 200)  # a subset favours the repeating generator ...
    assert ll(diverse, 4000) > ll(repeating, 4000)  # ... the full count does not

    from raygan.config import EvalConfig

    assert EvalConfig().ranking_samples == EvalConfig().num_samples


def test_a_collapsed_trial_with_the_higher_parzen_score_ranks_below_a_diverse_one(mnist5k_labelled, mnist5k_quality):
    """The population's evaluator on real mnist5k: 2,000 copies of real 1s and 7s (collapsed onto
    two classes) beat noisy but varied real digits on Parzen, and still rank below them."""
    from raygan import keys
    from raygan.config import EvalConfig
    from raygan.evaluator import ParzenEvaluator
    from raygan.report import TrialRow, sort_leaderboard

    data = mnist5k_labelled
    rng = np.random.default_rng(0)
    ones_and_sevens = data.train[np.isin(data.train_labels, [1, 7])]
    collapsed = ones_and_sevens[rng.integers(len(ones_and_sevens), size=2000)]
    noise = 0.35 * rng.standard_normal((2000, 1, 28, 28)).astype(np.float32)
    diverse = np.clip(data.train[rng.integers(len(data.train), size=2000)] + noise, 0, 1)

    evaluator = ParzenEvaluator(data.valid, data.test, None, EvalConfig(num_samples=2000), quality=mnist5k_quality)
    scores = {name: evaluator.score_valid(s) for name, s in (("collapsed", collapsed), ("diverse", diverse))}
    assert scores["collapsed"][keys.PARZEN_VALID_LL] > scores["diverse"][keys.PARZEN_VALID_LL] + 50
    assert scores["collapsed"][keys.CLASSES_COVERED] == 2 and scores["diverse"][keys.CLASSES_COVERED] == 10
    rows = [TrialRow(name, s[keys.PARZEN_VALID_LL], {}, 8, "OK", rank_score=s[keys.RANK_SCORE]) for name, s in scores.items()]
    assert [row.trial_id for row in sort_leaderboard(rows)] == ["diverse", "collapsed"]
