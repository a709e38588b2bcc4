"""The population as a mixture: EM weights against a closed form, the FD/TVD search, sampling by weight,
the file round trip and its refusals, a run directory made into a mixture (no Ray)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml

from raygan import mixture as mx
from raygan import parzen
from raygan.config import EvalConfig, ExperimentConfig, ModelConfig, to_dict
from raygan.errors import CheckpointError
from raygan.evaluate import evaluate_samples
from raygan.models import (
    GENERATOR_FORMAT,
    Generator,
    generate,
    generator_state,
    save_generator,
)


def constant_generator(image: np.ndarray, bounded: bool = True) -> Generator:
    """A generator whose every sample is ``image`` (C, H, W): last layer's weights zeroed, its bias set."""
    torch.manual_seed(0)
    g = Generator(ModelConfig(arch="mlp", noise_dim=2, g_hidden=(4,)), image.shape, bounded=bounded)
    target = torch.as_tensor(image, dtype=torch.float32).reshape(-1)
    with torch.no_grad():
        g.net[-1].weight.zero_()
        g.net[-1].bias.copy_(torch.logit(target.clamp(1e-6, 1 - 1e-6)) if bounded else target)
    return g.eval()


def points_mixture(values=(0.1, 0.5, 0.9), weights=(0.2, 0.5, 0.3)) -> mx.GeneratorMixture:
    """Members that each draw one constant 1x1x1 point, so a sample tells its component."""
    members = [constant_generator(np.full((1, 1, 1), v, np.float32)) for v in values]
    return mx.GeneratorMixture(members, weights, names=[f"t{i}" for i in range(len(values))], fit={"fit_to": "hand"})


# ---- EM on the Parzen validation log-likelihood -------------------------------------------------


def _two_component_optimum(a: np.ndarray, b: np.ndarray) -> float:
    """The w maximising sum_i log(w a_i + (1-w) b_i): the root of its derivative
    sum_i (a_i - b_i) / (w a_i + (1-w) b_i), which decreases in w, by bisection in float64."""
    grad = lambda w: np.sum((a - b) / (w * a + (1 - w) * b))
    assert grad(0.0) > 0 > grad(1.0)  # the optimum is interior
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if grad(mid) > 0 else (lo, mid)
    return 0.5 * (lo + hi)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_em_weights_equal_the_two_component_optimum(seed):
    rng = np.random.default_rng(seed)
    a, b = np.exp(rng.normal(0, 1, 300)), np.exp(rng.normal(0.3, 1.5, 300))
    w_star = _two_component_optimum(a, b)
    # Parzen log-densities of digits are around -1000 nats: the fit must work in log space.
    L = np.stack([np.log(a), np.log(b)]) - 1000.0
    weights, updates = mx.fit_parzen_weights(L)
    torch.testing.assert_close(weights, np.array([w_star, 1 - w_star]), atol=1e-6, rtol=0)
    assert 0 < updates < mx.EM_ITERATIONS


def _random_log_densities(rng: np.random.Generator, members: int, points: int) -> np.ndarray:
    scale = rng.choice([1.0, 30.0, 300.0])
    return rng.normal(-800, scale, (members, points))


@pytest.mark.parametrize("seed", range(6))
def test_em_weights_stay_on_the_simplex_are_optimal_and_reproducible(seed):
    rng = np.random.default_rng(seed)
    L = _random_log_densities(rng, members=int(rng.integers(1, 6)), points=int(rng.integers(5, 200)))
    w, _ = mx.fit_parzen_weights(L)
    assert (w >= 0).all() and w.shape == (len(L),)
    torch.testing.assert_close(w.sum(), 1.0, atol=1e-12, rtol=0)
    np.testing.assert_array_equal(w, mx.fit_parzen_weights(L.copy())[0])  # bit for bit
    # Optimality (KKT on the simplex): d/dw_j of the mean LL is mean_i p_j(x_i) / p_w(x_i), equal to
    # 1 where w_j > 0 and at most 1 where w_j = 0.
    log_mix = mx._logsumexp(np.log(np.maximum(w, 1e-300))[:, None] + L)
    grad = np.exp(L - log_mix).mean(axis=1)
    used = w > 1e-4
    torch.testing.assert_close(grad[used], np.ones(used.sum()), atol=1e-5, rtol=0)
    assert (grad[~used] <= 1 + 1e-5).all()
    best = mx.mixture_log_likelihood(L, w)
    assert all(best >= mx.mixture_log_likelihood(L, e) - 1e-9 for e in np.eye(len(L)))


def test_member_log_densities_are_parzens_at_each_members_sigma():
    rng = np.random.default_rng(0)
    valid = rng.uniform(0, 1, (40, 1, 2, 2)).astype(np.float32)
    samples = [rng.uniform(0, 1, (60, 1, 2, 2)).astype(np.float32), rng.uniform(0.4, 0.6, (50, 1, 2, 2)).astype(np.float32)]
    sigmas = (0.05, 0.1, 0.2, 0.5)
    L, chosen = mx.member_log_densities(samples, valid, sigmas)
    assert L.shape == (2, 40)
    for j, s in enumerate(samples):
        sigma, valid_ll = parzen.validation_score(s, valid, sigmas)
        assert chosen[j] == sigma
        torch.testing.assert_close(L[j].mean(), valid_ll, atol=1e-9, rtol=0)
        torch.testing.assert_close(torch.from_numpy(L[j]), parzen.log_likelihood(s, valid, sigma), atol=1e-9, rtol=0)


def test_bad_log_densities_are_refused():
    for bad in (np.zeros((0, 3)), np.zeros(4), np.array([[0.0, -np.inf]]), np.array([[np.nan, 0.0]])):
        with pytest.raises(ValueError):
            mx.fit_parzen_weights(bad)


# ---- FD and TVD of the mixture from its members' statistics ----------------------------------


def test_mixture_moments_equal_the_pooled_samples_moments():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, (30, 4)), rng.normal(2, 0.5, (70, 4)) @ rng.normal(0, 1, (4, 4))
    stats = [mx.MemberStatistics(f.mean(0), np.cov(f, rowvar=False, bias=True), np.ones(2) / 2) for f in (a, b)]
    mu, cov = mx.mixture_moments(stats, [0.3, 0.7])
    pooled = np.concatenate([a, b])
    torch.testing.assert_close(mu, pooled.mean(0), atol=1e-12, rtol=0)
    torch.testing.assert_close(cov, np.cov(pooled, rowvar=False, bias=True), atol=1e-12, rtol=0)


class _Reference:
    def __init__(self, mean, cov, histogram):
        self.feature_mean, self.feature_cov, self.label_histogram = mean, cov, histogram


def _gaussian_members(rng, m: int, dim: int = 5) -> list[mx.MemberStatistics]:
    out = []
    for j in range(m):
        root = rng.normal(0, 1, (dim, dim))
        out.append(mx.MemberStatistics(rng.normal(2 * j, 1, dim), root @ root.T / dim, np.eye(m)[j]))
    return out


def test_fd_search_finds_the_weights_of_a_mixture_reference():
    rng = np.random.default_rng(0)
    stats = _gaussian_members(rng, 3)
    w_star = np.array([0.23, 0.41, 0.36])  # off the first grid
    reference = _Reference(*mx.mixture_moments(stats, w_star), w_star)
    w, fd = mx.fit_quality_weights(stats, reference, "fd")
    torch.testing.assert_close(w, w_star, atol=2e-3, rtol=0)
    assert 0 <= fd < 1e-4 and (w >= 0).all()
    torch.testing.assert_close(w.sum(), 1.0, atol=1e-12, rtol=0)
    np.testing.assert_array_equal(w, mx.fit_quality_weights(stats, reference, "fd")[0])


def test_tvd_search_finds_the_histogram_mixing_weights():
    a, b = np.array([0.5, 0.5, 0.0]), np.array([0.0, 0.5, 0.5])
    stats = [mx.MemberStatistics(np.zeros(1), np.eye(1), h) for h in (a, b)]
    # TVD(w) = |0.5 w - 0.15|: zero at w = 0.3 only.
    w, tvd = mx.fit_quality_weights(stats, _Reference(None, None, 0.3 * a + 0.7 * b), "tvd")
    torch.testing.assert_close(w, np.array([0.3, 0.7]), atol=1e-9, rtol=0)
    torch.testing.assert_close(tvd, 0.0, atol=1e-9, rtol=0)


def test_tvd_weights_are_the_exact_minimum_over_the_simplex():
    # 8 members over 10 classes, all biased the same way on class 9 (as a PBT population's are):
    # the linear program's value is no worse than any of 20,000 random points or any vertex.
    rng = np.random.default_rng(3)
    hists = rng.dirichlet(np.ones(10), size=8) * 0.6 + 0.4 * np.eye(10)[9]
    target = np.full(10, 0.1)
    w, tvd = mx.fit_tvd_weights(hists, target)
    assert (w >= 0).all() and abs(w.sum() - 1) < 1e-12
    torch.testing.assert_close(tvd, 0.5 * np.abs(w @ hists - target).sum(), atol=1e-12, rtol=0)
    trials = np.vstack([np.eye(8), rng.dirichlet(np.ones(8), size=20_000)])
    assert tvd <= (0.5 * np.abs(trials @ hists - target).sum(axis=1)).min() + 1e-12
    assert tvd >= 0.3 - 1e-9  # no weights undo a bias every member shares: class 9 gets >= 0.4 of 0.1
    np.testing.assert_array_equal(w, mx.fit_tvd_weights(hists, target)[0])


def test_quality_search_with_many_members_stays_on_the_simplex():
    rng = np.random.default_rng(1)
    stats = _gaussian_members(rng, 6, dim=3)
    reference = _Reference(*mx.mixture_moments(stats, np.full(6, 1 / 6)), np.full(6, 1 / 6))
    for objective in ("fd", "tvd"):
        w, value = mx.fit_quality_weights(stats, reference, objective)
        assert (w >= 0).all() and value >= 0
        torch.testing.assert_close(w.sum(), 1.0, atol=1e-12, rtol=0)
    torch.testing.assert_close(w, np.full(6, 1 / 6), atol=1e-9, rtol=0)  # tvd: the uniform start is exact


# ---- sampling --------------------------------------------------------------------------------


def test_components_are_drawn_in_proportion_to_the_weights():
    m = points_mixture(weights=(0.2, 0.5, 0.3))
    n = 40_000
    counts = torch.bincount(m.components(n, seed=7), minlength=3).double() / n
    # Each share is binomial: standard error sqrt(w (1 - w) / n) <= 0.0025; allow 4 of them.
    torch.testing.assert_close(counts, torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64), atol=0.01, rtol=0)


def test_each_sample_comes_from_its_drawn_component_in_order():
    m = points_mixture()
    samples = m.sample(500, seed=3)
    comps = m.components(500, seed=3)
    assert samples.shape == (500, 1, 1, 1)
    torch.testing.assert_close(samples.view(-1), torch.tensor([0.1, 0.5, 0.9])[comps], atol=1e-5, rtol=0)
    assert torch.equal(samples, m.sample(500, seed=3))
    assert not torch.equal(comps, m.components(500, seed=4))


def test_a_zero_weight_member_is_never_drawn():
    m = points_mixture(weights=(0.0, 1.0, 0.0))
    assert torch.equal(m.components(1000, seed=0), torch.ones(1000, dtype=torch.int64))


def test_a_member_draws_from_its_own_prior():
    torch.manual_seed(0)
    gs = [Generator(ModelConfig(arch="mlp", noise_dim=3, g_hidden=(8,), prior=p), (1, 2, 2)) for p in ("uniform", "gaussian")]
    m = mx.GeneratorMixture(gs, [0.0, 1.0])
    _, seeds = m._draw(20, seed=5)
    torch.testing.assert_close(m.sample(20, seed=5), generate(gs[1], 20, seed=seeds[1]), atol=0, rtol=0)


@pytest.mark.parametrize("weights", [(0.5, 0.6), (-0.1, 1.1), (1.0,), (math.nan, 1.0)])
def test_weights_off_the_simplex_are_refused(weights):
    gs = [constant_generator(np.zeros((1, 1, 1), np.float32)) for _ in range(2)]
    with pytest.raises(ValueError):
        mx.GeneratorMixture(gs, weights)


def test_members_of_different_shapes_are_refused():
    with pytest.raises(ValueError):
        mx.GeneratorMixture([constant_generator(np.zeros((1, 1, 1))), constant_generator(np.zeros((1, 2, 2)))], [0.5, 0.5])


# ---- the file ----------------------------------------------------------------------------------


def test_save_load_sample_give_identical_samples(tmp_path):
    torch.manual_seed(0)
    gs = [Generator(ModelConfig(arch="mlp", noise_dim=4, g_hidden=(16,), prior=p), (1, 3, 3)) for p in ("uniform", "hypersphere")]
    m = mx.GeneratorMixture(gs, [0.35, 0.65], names=["a", "b"], fit={"fit_to": "parzen", "sigmas": [0.1, 0.2]})
    path = tmp_path / "best" / "mixture.pt"
    m.save(path)
    loaded = mx.GeneratorMixture.load(path)
    assert torch.equal(loaded.sample(300, seed=11), m.sample(300, seed=11))
    np.testing.assert_array_equal(loaded.weights, m.weights)
    assert loaded.names == ["a", "b"] and loaded.fit == {"fit_to": "parzen", "sigmas": [0.1, 0.2]}
    assert [g.config.prior for g in loaded.members] == ["uniform", "hypersphere"]
    assert isinstance(mx.load_samplable(path), mx.GeneratorMixture)
    assert torch.equal(mx.draw(mx.load_samplable(path), 50, seed=2), m.sample(50, seed=2))


def test_a_generator_file_still_loads_as_a_generator(tmp_path):
    g = constant_generator(np.full((1, 2, 2), 0.25, np.float32))
    save_generator(tmp_path / "generator.pt", g)
    loaded = mx.load_samplable(tmp_path / "generator.pt")
    assert isinstance(loaded, Generator)
    torch.testing.assert_close(mx.draw(loaded, 3), torch.full((3, 1, 2, 2), 0.25), atol=1e-5, rtol=0)


def _tampered(tmp_path, name, **changes):
    state = points_mixture().state()
    state.update(changes)
    path = tmp_path / name
    torch.save(state, path)
    return path


def test_a_tampered_or_foreign_mixture_file_is_refused_with_one_sentence(tmp_path):
    good = points_mixture().state()
    member = dict(good["members"][0])
    bad = [
        _tampered(tmp_path, "format.pt", format="raygan-mixture/999"),
        _tampered(tmp_path, "sum.pt", weights=torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64)),
        _tampered(tmp_path, "negative.pt", weights=torch.tensor([-0.5, 1.0, 0.5], dtype=torch.float64)),
        _tampered(tmp_path, "count.pt", weights=torch.tensor([0.5, 0.5], dtype=torch.float64)),
        _tampered(tmp_path, "weights_list.pt", weights=[0.2, 0.5, 0.3]),
        _tampered(tmp_path, "names.pt", names=None),
        _tampered(tmp_path, "no_members.pt", members=[], weights=torch.zeros(0, dtype=torch.float64)),
        _tampered(tmp_path, "member.pt", members=[{**member, "state_dict": {}}, *good["members"][1:]]),
        _tampered(tmp_path, "member_format.pt", members=[{**member, "format": "x"}, *good["members"][1:]]),
        _tampered(tmp_path, "shape.pt", members=[{**member, "data_shape": [1, 2, 2]}, *good["members"][1:]]),
    ]
    whole = tmp_path / "whole.pt"
    points_mixture().save(whole)
    (tmp_path / "truncated.pt").write_bytes(whole.read_bytes()[:500])
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(2000))
    bad += [tmp_path / "truncated.pt", tmp_path / "random.pt", tmp_path / "missing.pt", tmp_path]
    for path in bad:
        for load in (mx.GeneratorMixture.load, mx.load_samplable):
            with pytest.raises(CheckpointError) as e:
                load(path)
            assert "\n" not in str(e.value) and str(e.value), path


def test_a_file_of_another_kind_is_named_in_the_refusal(tmp_path):
    torch.save({"format": GENERATOR_FORMAT, **generator_state(constant_generator(np.zeros((1, 1, 1))))}, tmp_path / "g.pt")
    with pytest.raises(CheckpointError, match="not a raygan mixture"):
        mx.GeneratorMixture.load(tmp_path / "g.pt")
    torch.save({"format": "raygan-trainer/1"}, tmp_path / "t.pt")
    with pytest.raises(CheckpointError, match="neither a raygan generator nor a mixture"):
        mx.load_samplable(tmp_path / "t.pt")


def test_evaluate_scores_a_mixture_file_like_its_samples(tmp_path):
    m = mx.GeneratorMixture(
        [constant_generator(np.full((1, 1, 1), v, np.float32), bounded=False) for v in (3.5, 4.5)], [0.4, 0.6]
    )
    m.save(tmp_path / "mixture.pt")
    report = evaluate_samples("toy-1d", checkpoint=tmp_path / "mixture.pt", num_samples=300, with_quality=False)
    from raygan.data import load_dataset

    data = load_dataset("toy-1d")
    expected = parzen.evaluate(m.sample(300, seed=0), data.valid, data.test)
    assert report.num_samples == 300
    torch.testing.assert_close(
        (report.model.sigma, report.model.test_ll, report.model.test_se),
        (expected.sigma, expected.test_ll, expected.test_se), atol=1e-9, rtol=0,
    )


# ---- two collapsed generators, read by the mnist5k classifier -----------------------------------


@pytest.fixture(scope="module")
def collapsed_pair(mnist5k_labelled, mnist5k_quality):
    """Two generators each drawing one real training digit, of class 0 and of class 1, that the classifier reads right."""
    from raygan import quality

    data = mnist5k_labelled
    _, probs = quality.read(mnist5k_quality.classifier, data.train)
    predicted = probs.argmax(1).numpy()
    pick = [int(np.flatnonzero((data.train_labels == c) & (predicted == c))[0]) for c in (0, 1)]
    return [constant_generator(data.train[i]) for i in pick]


def test_a_mixture_of_two_collapsed_generators_covers_both_classes(collapsed_pair, mnist5k_quality):
    alone = [mnist5k_quality.score(mx.draw(g, 400)) for g in collapsed_pair]
    assert [s.classes_covered for s in alone] == [1, 1]
    assert [int(np.argmax(s.histogram)) for s in alone] == [0, 1]
    m = mx.GeneratorMixture(collapsed_pair, [0.5, 0.5])
    both = mnist5k_quality.score(m.sample(2000, seed=0))
    assert both.classes_covered == 2
    # Each class's share is binomial(2000, 0.5): standard error 0.011.
    torch.testing.assert_close(np.array(both.histogram[:2]), np.array([0.5, 0.5]), atol=0.04, rtol=0)
    # Against the uniform training labels: one class alone is 0.9 away, two halves 0.8.
    torch.testing.assert_close([s.tvd for s in alone], [0.9, 0.9], atol=1e-9, rtol=0)
    torch.testing.assert_close(both.tvd, 0.8, atol=1e-9, rtol=0)


def test_fitting_to_fd_mixes_the_collapsed_generators(collapsed_pair, mnist5k_quality, mnist5k_labelled):
    samples = [mx.draw(g, 200) for g in collapsed_pair]
    m = mx.fit(collapsed_pair, samples, mnist5k_labelled.valid, "fd", mnist5k_quality, names=["zero", "one"])
    assert m.fit["fit_to"] == "fd" and m.names == ["zero", "one"]
    assert m.fit["fd"] < min(m.fit["member_fd"])  # a mix of the two digits is nearer the data than either
    assert (m.weights > 0.05).all()
    again = mx.fit(collapsed_pair, samples, mnist5k_labelled.valid, "fd", mnist5k_quality)
    np.testing.assert_array_equal(m.weights, again.weights)


# ---- a finished run's directory -------------------------------------------------------------------


def _run_dir(tmp_path, trials):
    """A run as raygan.tune leaves it: experiment.yaml and <trial>/checkpoint_<n>/{generator.pt,scores.json}.

    ``trials``: (name, value drawn, {checkpoint index: scores}) per trial; every checkpoint's
    generator draws ``value`` plus the checkpoint's index / 1000, so the test sees which one was used.
    """
    run = tmp_path / "run"
    config = ExperimentConfig(eval=EvalConfig(num_samples=200, sigmas=(0.05, 0.1, 0.2)))
    run.mkdir(parents=True)
    values = to_dict(config)
    values["data"]["name"] = "toy-1d"
    (run / "experiment.yaml").write_text(yaml.safe_dump(values))
    for name, value, checkpoints in trials:
        for index, scores in checkpoints.items():
            d = run / name / f"checkpoint_{index:06d}"
            d.mkdir(parents=True)
            save_generator(d / "generator.pt", constant_generator(np.full((1, 1, 1), value + index / 1000, np.float32), False))
            (d / "scores.json").write_text(json.dumps(scores))
    return run


def _scores(rank, diverged=False):
    return {"eval/rank_score": rank, "eval/parzen_valid_ll": rank, "diverged": diverged, "training_iteration": 4}


@pytest.fixture
def run_dir(tmp_path):
    return _run_dir(tmp_path, [
        ("GANTrainable_a731e_00000_0_seed=1", 4.0, {1: _scores(-9.0), 10: _scores(-1.0)}),  # latest is 10
        ("GANTrainable_a731e_00001_1_k=2", 3.0, {2: _scores(-2.0)}),
        ("GANTrainable_a731e_00002_2_k=3", 5.0, {3: _scores("-inf", True)}),
        ("GANTrainable_a731e_00003_3_k=5", 2.0, {4: _scores("nan")}),
        ("GANTrainable_a731e_00004_4_k=1", 6.0, {5: _scores(-3.0)}),
    ])


def test_members_are_the_top_trials_at_their_latest_checkpoint_not_diverged(run_dir):
    found = mx.trial_checkpoints(run_dir)
    assert len(found) == 5
    chosen = mx.select_members(found, members=4)
    assert [c.trial_id for c in chosen] == ["a731e_00000", "a731e_00001", "a731e_00004"]
    assert chosen[0].path.name == "checkpoint_000010"
    assert [c.trial_id for c in mx.select_members(found, members=2)] == ["a731e_00000", "a731e_00001"]


def test_the_cli_builds_saves_and_scores_a_mixture_of_a_run(run_dir, capsys):
    assert mx.main(["--run", str(run_dir), "--members", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [m["trial_id"] for m in out["members"]] == ["a731e_00000", "a731e_00001", "a731e_00004"]
    weights = np.array([m["weight"] for m in out["members"]])
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(), 1.0, atol=1e-12, rtol=0)
    assert out["fit"]["fit_to"] == "parzen" and out["mixture"]["quality"] is None  # toy-1d has no labels
    # toy-1d is N(4, 0.5): the member drawing 4.01 explains most of it, the one at 3.002 some, 6.005 little.
    assert weights[0] > weights[1] > weights[2]
    saved = mx.GeneratorMixture.load(run_dir / "best" / "mixture.pt")
    np.testing.assert_array_equal(saved.weights, weights)
    from raygan.data import load_dataset

    data = load_dataset("toy-1d")
    expected = parzen.evaluate(saved.sample(200, seed=EvalConfig().seed), data.valid, data.test, (0.05, 0.1, 0.2))
    torch.testing.assert_close(out["mixture"]["parzen_test_ll"], expected.test_ll, atol=1e-9, rtol=0)
    best = parzen.evaluate(mx.draw(saved.members[0], 200, EvalConfig().seed), data.valid, data.test, (0.05, 0.1, 0.2))
    torch.testing.assert_close(out["best_single"]["parzen_test_ll"], best.test_ll, atol=1e-9, rtol=0)
    assert out["best_single"]["trial_id"] == "a731e_00000"
    assert mx.main(["--run", str(run_dir), "--members", "2", "--out", str(run_dir / "two.pt")]) == 0
    table = capsys.readouterr().out
    assert "mixture of 2" in table and "best single (a731e_00000)" in table
    assert len(mx.GeneratorMixture.load(run_dir / "two.pt").members) == 2


def test_the_cli_refuses_bad_input_with_one_sentence(run_dir, tmp_path, capsys):
    empty = _run_dir(tmp_path / "e", [("GANTrainable_b_00000_0", 1.0, {1: _scores("-inf", True)})])
    cases = [
        ["--run", str(tmp_path / "nowhere")],
        ["--run", str(run_dir), "--members", "0"],
        ["--run", str(run_dir), "--num-samples", "1"],
        ["--run", str(run_dir), "--fit-to", "fd"],  # toy-1d has no labels
        ["--run", str(empty)],
    ]
    for argv in cases:
        assert mx.main(argv) == 2, argv
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == len(cases) and all(e.startswith("error: ") for e in errors), errors


def test_as_a_user_runs_it_there_is_no_traceback(tmp_path):
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "raygan.mixture", "--run", str(tmp_path)],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 2
    assert run.stderr.startswith("error: ") and run.stderr.count("\n") == 1 and "Traceback" not in run.stderr


def test_the_scores_raygan_tune_already_wrote_are_reused_only_for_the_same_samples(run_dir):
    """best/summary.json holds the best trial's and the reference's scores on eval.seed's samples:
    the mixture's comparison takes them where the trial, its checkpoint and the sample count match."""
    fresh = mx.build_from_run(run_dir, members=2, log=lambda line: None)
    summary = {**fresh.best.as_json(), "trial_id": "a731e_00000", "training_iteration": 4, "parzen_test_ll": 123.0,
               "reference": {**fresh.reference.as_json(), "parzen_test_ll": 456.0}}
    (run_dir / "best" / "summary.json").write_text(json.dumps(summary))
    reused = mx.build_from_run(run_dir, members=2, log=lambda line: None)
    assert reused.best.parzen.test_ll == 123.0 and reused.reference.parzen.test_ll == 456.0
    assert reused.best.parzen.valid_ll == fresh.best.parzen.valid_ll
    # Another checkpoint of the trial, or another sample count: scored again.
    (run_dir / "best" / "summary.json").write_text(json.dumps({**summary, "training_iteration": 3}))
    again = mx.build_from_run(run_dir, members=2, log=lambda line: None)
    assert again.best.parzen.test_ll == fresh.best.parzen.test_ll and again.reference.parzen.test_ll == 456.0
    other_count = mx.build_from_run(run_dir, members=2, num_samples=150, log=lambda line: None)
    assert other_count.best.parzen.test_ll != 123.0 and other_count.reference.parzen.test_ll != 456.0
