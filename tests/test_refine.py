"""raygan.refine: sampling corrected by the discriminator (Proposition 1).

With the exact D* of known densities, rejection sampling and independent Metropolis-Hastings
must turn a biased G's samples into p_data's; Platt's fit must recover a known logit scale; the
samplers must be reproducible; files without a discriminator must be refused in one sentence.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import stats

from raygan import refine
from raygan.config import ModelConfig, RefineConfig
from raygan.data import TOY_1D_MEAN, TOY_1D_STD, load_dataset
from raygan.models import Discriminator, Generator, save_generator

G_MEAN, G_STD = 4.4, 0.8  # the biased G: shifted and wider than p_data = N(4, 0.5^2), so p_data/p_g is bounded


def _log_normal(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    return -0.5 * ((x - mean) / std) ** 2 - math.log(std * math.sqrt(2 * math.pi))


def biased_propose(labels, count: int, gen: torch.Generator) -> torch.Tensor:
    return (G_MEAN + G_STD * torch.randn(count, generator=gen, dtype=torch.float64)).view(count, 1, 1, 1)


def exact_log_ratio(x: torch.Tensor, labels=None) -> torch.Tensor:
    """log D*/(1 - D*) = log p_data(x) - log p_g(x), from the known densities (Proposition 1)."""
    x = x.view(-1)
    return _log_normal(x, TOY_1D_MEAN, TOY_1D_STD) - _log_normal(x, G_MEAN, G_STD)


def _matches_p_data(samples: torch.Tensor) -> float:
    return stats.kstest(samples.view(-1).numpy(), "norm", args=(TOY_1D_MEAN, TOY_1D_STD)).pvalue


N = 5000


def test_the_biased_generator_fails_the_two_sample_test_that_refinement_passes():
    raw = biased_propose(None, N, torch.Generator().manual_seed(0))
    assert _matches_p_data(raw) < 1e-6


def test_exact_rejection_sampling_with_the_optimal_discriminator_draws_p_data():
    gen = torch.Generator().manual_seed(1)
    samples, drawn, accepted, burn = refine.rejection_sample(biased_propose, exact_log_ratio, None, N, gen,
                                                             gamma_quantile=None, burn_in=20_000, max_proposals=100)
    assert samples.shape == (N, 1, 1, 1) and burn == 20_000 and accepted >= N
    assert _matches_p_data(samples) > 0.01
    # Rejection with envelope e^M p_g accepts 1/e^M of the proposals: M = max log ratio.
    x = torch.linspace(0, 8, 100_001, dtype=torch.float64)
    expected = math.exp(-float(exact_log_ratio(x).max()))
    assert accepted / drawn == pytest.approx(expected, rel=0.05)


def test_independent_metropolis_hastings_with_the_optimal_discriminator_draws_p_data():
    gen = torch.Generator().manual_seed(2)
    samples, drawn, moves = refine.mh_sample(biased_propose, exact_log_ratio, None, N, gen, steps=40)
    assert samples.shape == (N, 1, 1, 1) and drawn == N * 41
    assert _matches_p_data(samples) > 0.01
    assert 0.2 < moves / (N * 40) < 0.95


# Class by class: the classes are x > 4 and x <= 4, an exact classifier of a labelling that p_data
# splits 50/50 and the biased G 31/69.
HALVES = refine.ClassShares(lambda x: (x.view(-1) > TOY_1D_MEAN).long(), np.array([0.5, 0.5]))


def _toy_pair_refine(method: str, log_ratio, classes, seed: int = 3, n: int = N) -> refine.Refined:
    """refine.refine of a stand-in member that draws biased_propose's N(4.4, 0.8^2), read by ``log_ratio``."""
    ratio = SimpleNamespace(log_ratio=log_ratio)  # what refine reads of a Calibrated
    return refine.refine([_ToyMember()], [ratio], [1.0], n, method, RefineConfig(gamma_quantile=None, burn_in=20_000, max_proposals=100,
                                                                         mh_steps=30), seed=seed, classes=classes)


class _ToyMember(torch.nn.Module):
    """A 'generator' of biased_propose's N(4.4, 0.8^2): what refine needs of a member."""

    num_classes = None
    data_shape = (1, 1, 1)

    class config:  # noqa: N801 - the attributes refine reads of a ModelConfig
        prior = "gaussian"
        noise_dim = 1

    def forward(self, z, labels=None):
        return (G_MEAN + G_STD * z[:, :1]).view(-1, 1, 1, 1)


@pytest.mark.parametrize("method", ["drs", "mh"])
def test_class_by_class_refinement_with_the_optimal_discriminator_still_draws_p_data(method):
    out = _toy_pair_refine(method, exact_log_ratio, HALVES)
    assert out.by_class and out.classes_left_out == []
    assert _matches_p_data(out.samples) > 0.01


def test_class_by_class_refinement_gives_the_data_class_shares_where_d_sees_no_class():
    # A D that reads nothing (log ratio 0 everywhere): DRS alone keeps G's 31/69 split; by class, the
    # data's 50/50, each class still drawn from G.
    blind = lambda x, labels=None: torch.zeros(len(x), dtype=torch.float64)  # noqa: E731
    alone = _toy_pair_refine("drs", blind, None)
    by_class = _toy_pair_refine("drs", blind, HALVES)
    upper = lambda s: float((s.view(-1) > TOY_1D_MEAN).double().mean())  # noqa: E731
    assert upper(alone.samples) == pytest.approx(stats.norm.sf(TOY_1D_MEAN, G_MEAN, G_STD), abs=0.02)
    assert upper(by_class.samples) == pytest.approx(0.5, abs=0.02)
    # Within a class, the samples are G's: the upper half's are N(4.4, 0.8^2) conditioned on x > 4.
    top = by_class.samples.view(-1)[by_class.samples.view(-1) > TOY_1D_MEAN].numpy()
    truncated = stats.truncnorm((TOY_1D_MEAN - G_MEAN) / G_STD, np.inf, loc=G_MEAN, scale=G_STD)
    assert stats.kstest(top, truncated.cdf).pvalue > 0.01
    assert by_class.proposals > len(by_class.samples)  # every draw is counted, those of the fuller class too


def test_a_class_the_generator_never_draws_is_left_out_and_named():
    blind = lambda x, labels=None: torch.zeros(len(x), dtype=torch.float64)  # noqa: E731
    thirds = refine.ClassShares(lambda x: (x.view(-1) > TOY_1D_MEAN).long(), np.array([0.4, 0.4, 0.2]))  # class 2: never
    out = _toy_pair_refine("drs", blind, thirds, n=2000)
    assert out.classes_left_out == [2] and out.as_dict()["classes_left_out"] == [2]
    assert float((out.samples.view(-1) > TOY_1D_MEAN).double().mean()) == pytest.approx(0.5, abs=0.04)


def test_rejection_sampling_reads_the_envelope_class_by_class():
    # Within a class the target is p_data(x | y), so D's log ratio may be off by a constant per class
    # (here +8 nats on the upper half, which holds exactly half of p_data's and of the slots' mass).
    # One M for both classes would accept the lower half's proposals at e^-8 and give up; one M per
    # class draws p_data at the same acceptance as the exact ratio.
    shifted = lambda x, labels=None: exact_log_ratio(x) + 8.0 * (x.view(-1) > TOY_1D_MEAN)  # noqa: E731
    out, exact = _toy_pair_refine("drs", shifted, HALVES), _toy_pair_refine("drs", exact_log_ratio, HALVES)
    assert _matches_p_data(out.samples) > 0.01
    assert out.acceptance == pytest.approx(exact.acceptance, abs=0.03)


def test_class_by_class_proposals_keep_the_draws_no_slot_wanted_for_later_calls():
    # G draws uniform x, the cells are its halves. 1,000 slots of cell 0 take ~2,000 draws, half of
    # them cell 1's: those then fill most of 1,000 slots of cell 1, so the two calls take ~2,000
    # draws in all, not ~4,000, and no draw fills two slots.
    uniform = lambda labels, count, gen: torch.rand(count, 1, 1, 1, generator=gen, dtype=torch.float64)  # noqa: E731
    halves = lambda x: (x.view(-1) > 0.5).long()  # noqa: E731
    gen = torch.Generator().manual_seed(0)
    in_class = refine._ProposeInClass(uniform, halves, max_draws=10, num_classes=2)
    low = in_class(torch.zeros(1000, dtype=torch.int64), 1000, gen).view(-1)
    high = in_class(torch.ones(1000, dtype=torch.int64), 1000, gen).view(-1)
    assert bool((low <= 0.5).all()) and bool((high > 0.5).all())
    assert len(torch.cat([low, high]).unique()) == 2000
    assert in_class.spent < 2600
    # The kept draws are G's, unselected: cell 1's samples are uniform on (0.5, 1].
    assert stats.kstest(high.numpy(), "uniform", args=(0.5, 0.5)).pvalue > 0.01


# A finer labelling than the classes (refine.confident): each half split into "sure" (more than
# 0.25 from the boundary x = 4) and "unsure" cells, cell c of class c % 2, at p_data's shares.
def _cell(x: torch.Tensor) -> torch.Tensor:
    x = x.view(-1)
    return (x > TOY_1D_MEAN).long() + 2 * ((x - TOY_1D_MEAN).abs() < 0.25).long()


_UNSURE = float(stats.norm.cdf(0.25 / TOY_1D_STD) - 0.5)  # p_data's mass within 0.25 of the mean, per side
CELLS = refine.ClassShares(_cell, np.array([0.5 - _UNSURE, 0.5 - _UNSURE, _UNSURE, _UNSURE]), num_classes=2)


@pytest.mark.parametrize("method", ["drs", "mh"])
def test_refinement_by_finer_cells_with_the_optimal_discriminator_still_draws_p_data(method):
    out = _toy_pair_refine(method, exact_log_ratio, CELLS)
    assert out.classes_left_out == []
    assert _matches_p_data(out.samples) > 0.01


def test_refinement_by_cells_gives_the_data_cell_shares_where_d_sees_nothing():
    blind = lambda x, labels=None: torch.zeros(len(x), dtype=torch.float64)  # noqa: E731
    by_class, by_cell = _toy_pair_refine("drs", blind, HALVES), _toy_pair_refine("drs", blind, CELLS)
    near = lambda s: float(((s.view(-1) - TOY_1D_MEAN).abs() < 0.25).double().mean())  # noqa: E731
    # By class alone, each half is G's own: 25 % of the samples within 0.25 of 4; p_data has 38 % there.
    assert near(by_cell.samples) == pytest.approx(2 * _UNSURE, abs=0.02)
    assert abs(near(by_class.samples) - 2 * _UNSURE) > 0.08
    np.testing.assert_allclose(np.bincount(_cell(by_cell.samples).numpy(), minlength=4) / N, CELLS.shares, atol=0.02)


def test_a_class_is_left_out_only_when_every_one_of_its_cells_is():
    blind = lambda x, labels=None: torch.zeros(len(x), dtype=torch.float64)  # noqa: E731
    # cells 0, 1: the halves; cell 2: class 0's, never drawn (|x| > 100): class 0 is refined whole
    # (its cells merged, at their summed share 0.6), not left out
    far = lambda x: _cell(x) % 2 + 2 * (x.view(-1).abs() > 100).long()  # noqa: E731
    one_cell_gone = refine.ClassShares(far, np.array([0.4, 0.4, 0.2, 0.0]), num_classes=2)
    out = _toy_pair_refine("drs", blind, one_cell_gone, n=2000)
    assert out.classes_left_out == [] and out.classes_unsplit == [0]
    assert float((out.samples.view(-1) > TOY_1D_MEAN).double().mean()) == pytest.approx(0.4, abs=0.04)
    # class 0's two cells never drawn (every x is read as class 1, its cells split at 4.5): left out
    only_one = lambda x: 1 + 2 * (x.view(-1) > 4.5).long()  # noqa: E731
    class_gone = refine.ClassShares(only_one, np.array([0.3, 0.3, 0.2, 0.2]), num_classes=2)
    gone = _toy_pair_refine("drs", blind, class_gone, n=2000)
    assert gone.classes_left_out == [0] and gone.classes_unsplit == []
    assert CELLS.class_of([2, 3]) == [] and CELLS.class_of([0, 2]) == [0]


def test_a_class_whose_cell_g_hardly_draws_is_refined_whole_and_named():
    # Class 0 (x <= 4) split at x < 2.5: the data puts 0.2 of its mass there, G (N(4.4, 0.8^2)) 0.9 %,
    # under UNSPLIT_BELOW times 0.2, so class 0 is drawn whole (as G draws it within the class) at
    # the class's share 0.5; class 1 keeps its split (sure x > 4.25 and unsure 4 < x <= 4.25).
    blind = lambda x, labels=None: torch.zeros(len(x), dtype=torch.float64)  # noqa: E731

    def cell(x):
        x = x.view(-1)
        upper = (x > TOY_1D_MEAN).long()
        return upper + 2 * torch.where(upper.bool(), x <= TOY_1D_MEAN + 0.25, x >= 2.5).long()

    split = refine.ClassShares(cell, np.array([0.2, 0.3, 0.3, 0.2]), num_classes=2)
    out = _toy_pair_refine("drs", blind, split, n=4000)
    x = out.samples.view(-1)
    assert out.classes_unsplit == [0] and out.classes_left_out == []
    assert out.as_dict()["classes_unsplit"] == [0]
    assert float((x <= TOY_1D_MEAN).double().mean()) == pytest.approx(0.5, abs=0.03)
    low = x[x <= TOY_1D_MEAN]
    g_share = stats.norm.cdf(2.5, G_MEAN, G_STD) / stats.norm.cdf(TOY_1D_MEAN, G_MEAN, G_STD)  # G's, within class 0
    assert float((low < 2.5).double().mean()) == pytest.approx(g_share, abs=0.02)
    high = x[x > TOY_1D_MEAN]
    assert float((high <= TOY_1D_MEAN + 0.25).double().mean()) == pytest.approx(0.4, abs=0.03)  # the data's 0.2 / 0.5


def test_the_proposal_cap_counts_over_every_call_so_a_small_call_of_a_rare_class_can_finish():
    # G draws uniform x; cell 1 is x < 0.02 (2 % of draws). 5 slots of it need ~250 draws, more than
    # 10 per slot, but the first call's 1,000 easy slots left most of their budget unspent.
    uniform = lambda labels, count, gen: torch.rand(count, 1, 1, 1, generator=gen)  # noqa: E731
    rare = lambda x: (x.view(-1) < 0.02).long()  # noqa: E731
    gen = torch.Generator().manual_seed(0)
    in_class = refine._ProposeInClass(uniform, rare, max_draws=10, num_classes=2)
    in_class(torch.zeros(1000, dtype=torch.int64), 1000, gen)
    out = in_class(torch.ones(5, dtype=torch.int64), 5, gen)
    assert bool((out.view(-1) < 0.02).all()) and in_class.spent <= 10 * in_class.asked
    never = refine._ProposeInClass(uniform, lambda x: 2 + (x.view(-1) < 0).long(), max_draws=10, num_classes=2)
    with pytest.raises(refine.RefineError, match=r"^class 1 \(its samples the classifier is unsure of\) came up too rarely"):
        never(torch.full((5,), 3, dtype=torch.int64), 5, gen)


def test_class_shares_split_each_class_by_the_classifiers_confidence_on_held_out_images(mnist5k_quality):
    from raygan import quality

    data = load_dataset("mnist5k")
    plain = refine.class_shares(mnist5k_quality)
    np.testing.assert_allclose(plain.shares, mnist5k_quality.label_histogram)
    cells = refine.class_shares(mnist5k_quality, data.valid, 0.9)
    assert cells.num_classes == 10 and cells.shares.shape == (20,)
    np.testing.assert_allclose(cells.shares[:10] + cells.shares[10:], mnist5k_quality.label_histogram)
    p = quality.read(mnist5k_quality.classifier, data.valid)[1]
    y, unsure = p.argmax(1).numpy(), (p.max(1).values < 0.9).numpy()
    for c in range(10):  # the unsure share within each class, as read on the validation split
        assert cells.shares[10 + c] / mnist5k_quality.label_histogram[c] == pytest.approx(unsure[y == c].mean())
    assert 0 < cells.shares[10:].sum() < 0.2  # the classifier is sure of most held-out digits
    x = torch.from_numpy(data.valid[:50])
    np.testing.assert_array_equal(cells.classify(x).numpy(), y[:50] + 10 * unsure[:50])
    assert refine.class_shares(mnist5k_quality, data.valid, 0.0).shares.shape == (10,)


def test_the_gamma_quantile_sets_the_share_of_proposals_accepted():
    def acceptance(q):
        _, drawn, accepted, _ = refine.rejection_sample(biased_propose, exact_log_ratio, None, 2000, torch.Generator().manual_seed(3),
                                                        gamma_quantile=q, burn_in=5000, max_proposals=100)
        return accepted / drawn

    # gamma = the q-quantile of F = logit of each proposal's exact acceptance: F - gamma > 0 for a
    # share 1 - q of the proposals, so about 1 - q are accepted; exact rejection (gamma 0) here ~0.5.
    loose, exact, strict = acceptance(0.2), acceptance(None), acceptance(0.8)
    assert loose == pytest.approx(0.8, abs=0.08) and strict == pytest.approx(0.2, abs=0.08)
    assert loose > exact > strict


def test_the_samplers_are_reproducible_for_a_seed_and_differ_across_seeds():
    def both(seed):
        drs = refine.rejection_sample(biased_propose, exact_log_ratio, None, 500, torch.Generator().manual_seed(seed),
                                      gamma_quantile=0.5, burn_in=1000, max_proposals=100)
        mh = refine.mh_sample(biased_propose, exact_log_ratio, None, 500, torch.Generator().manual_seed(seed), steps=5)
        return drs, mh

    (d1, m1), (d2, m2), (d3, _) = both(7), both(7), both(8)
    assert torch.equal(d1[0], d2[0]) and d1[1:] == d2[1:]
    assert torch.equal(m1[0], m2[0]) and m1[1:] == m2[1:]
    assert not torch.equal(d1[0], d3[0])


def test_rejection_sampling_gives_up_with_one_sentence_when_it_accepts_too_little():
    def one_outlier_per_batch(x, labels=None):  # M = 30 from the burn-in: every other proposal has e^-30
        return torch.cat([torch.tensor([30.0], dtype=torch.float64), torch.zeros(len(x) - 1, dtype=torch.float64)])

    with pytest.raises(refine.RefineError, match="max_proposals") as e:
        refine.rejection_sample(biased_propose, one_outlier_per_batch, None, 100, torch.Generator().manual_seed(0),
                                gamma_quantile=None, burn_in=1000, max_proposals=3)
    assert "\n" not in str(e.value)


def test_platt_recovers_the_log_ratio_scale_and_shift_of_a_miscalibrated_logit():
    # Real x ~ N(1, 1), fake x ~ N(-1, 1): log p_real/p_fake = 2x. D reports logit = (2x - 0.5) / 3.
    gen = torch.Generator().manual_seed(0)
    real = torch.randn(40_000, generator=gen, dtype=torch.float64) + 1
    fake = torch.randn(20_000, generator=gen, dtype=torch.float64) - 1
    a, b = refine.platt((2 * real - 0.5) / 3, (2 * fake - 0.5) / 3)
    assert a == pytest.approx(3.0, rel=0.03)
    assert b == pytest.approx(0.5, abs=0.05)  # classes weighted equally despite 2:1 counts


def test_platt_stays_finite_when_the_logit_separates_the_classes():
    a, b = refine.platt(torch.tensor([3.0, 4.0, 5.0]), torch.tensor([-3.0, -4.0, -5.0]))
    assert math.isfinite(a) and math.isfinite(b) and a > 0


# ---- generators, discriminators and their files -----------------------------------------------


def _pair(conditional: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    config = ModelConfig(arch="mlp", noise_dim=4, g_hidden=(16,), d_hidden=(8,), d_pieces=2, init="torch", conditional=conditional)
    k = 3 if conditional else None
    return Generator(config, (1, 4, 4), True, k).eval(), Discriminator(config, (1, 4, 4), k).eval()


def test_a_generator_file_keeps_its_discriminator_and_refines_from_it(tmp_path):
    g, d = _pair()
    save_generator(tmp_path / "g.pt", g, d)
    loaded = refine.load_refinable(tmp_path / "g.pt")
    x = torch.rand(5, 1, 4, 4)
    torch.testing.assert_close(loaded.discriminators[0](x), d(x))
    valid = np.random.default_rng(0).random((200, 1, 4, 4), dtype=np.float32)
    ratio = refine.calibrate(loaded.members[0], loaded.discriminators[0], valid, RefineConfig(calibration="platt"), seed=0)
    for method in ("drs", "mh"):
        out = refine.refine(loaded.members, [ratio], loaded.weights, 300, method, RefineConfig(burn_in=500, mh_steps=3), seed=5)
        again = refine.refine(loaded.members, [ratio], loaded.weights, 300, method, RefineConfig(burn_in=500, mh_steps=3), seed=5)
        assert out.samples.shape == (300, 1, 4, 4) and torch.equal(out.samples, again.samples)
        assert 0 < out.acceptance <= 1


def test_a_generator_file_without_a_discriminator_is_refused_in_one_sentence(tmp_path):
    g, _ = _pair()
    save_generator(tmp_path / "g.pt", g)
    with pytest.raises(refine.RefineError, match="no discriminator") as e:
        refine.load_refinable(tmp_path / "g.pt")
    assert "\n" not in str(e.value)


def test_a_conditional_pair_refines_each_slot_within_its_asked_class():
    g, d = _pair(conditional=True)
    rng = np.random.default_rng(1)
    valid, labels = rng.random((90, 1, 4, 4), dtype=np.float32), np.arange(90) % 3
    ratio = refine.calibrate(g, d, valid, RefineConfig(calibration="platt"), valid_labels=labels)
    asked = torch.tensor([2, 0, 1, 1] * 25)
    seen = []

    def spy(labels, count, gen):  # every proposal is drawn for the class of the slot it may fill
        seen.append(labels.clone())
        return refine._propose_from(g)(labels, count, gen)

    samples, _, _, _ = refine.rejection_sample(spy, ratio.log_ratio, asked, 100, torch.Generator().manual_seed(0),
                                            gamma_quantile=0.5, burn_in=60, max_proposals=50)
    assert samples.shape == (100, 1, 4, 4)
    assert sorted(set(torch.cat(seen).tolist())) == [0, 1, 2]
    # Each slot's sample is G(z | its class): D(x | c) on it is finite and the class shares match the asked ones.
    assert torch.bincount(asked).tolist() == [25, 50, 25]


def test_finetune_calibration_trains_a_copy_and_leaves_the_saved_discriminator_alone():
    data = load_dataset("toy-1d")
    config = ModelConfig(arch="mlp", noise_dim=2, g_hidden=(8,), d_hidden=(8,), d_pieces=2, init="torch")
    torch.manual_seed(0)
    g, d = Generator(config, (1, 1, 1), bounded=False).eval(), Discriminator(config, (1, 1, 1)).eval()
    before = {k: v.clone() for k, v in d.state_dict().items()}
    ratio = refine.calibrate(g, d, data.valid[:2000], RefineConfig(calibration="finetune", finetune_steps=200, finetune_lr=1e-2),
                             train=data.train, seed=0)
    for k, v in d.state_dict().items():
        torch.testing.assert_close(v, before[k])
    # G is far from N(4, 0.5^2) at initialisation: the fine-tuned D tells them apart, so real points
    # get a higher log ratio than G's own.
    real = torch.from_numpy(data.valid[2000:3000])
    fake = refine._propose_from(g)(None, 1000, torch.Generator().manual_seed(9))
    assert float(ratio.log_ratio(real).mean()) > float(ratio.log_ratio(fake).mean()) + 1.0


# ---- the command lines ---------------------------------------------------------------------------


@pytest.fixture
def mnist_pair_file(tmp_path):
    """An untrained 28x28 MLP pair saved as a best/generator.pt would be: G with its D."""
    torch.manual_seed(0)
    config = ModelConfig(arch="mlp", noise_dim=8, g_hidden=(16,), d_hidden=(8,), d_pieces=2)
    path = tmp_path / "generator.pt"
    save_generator(path, Generator(config, (1, 28, 28)), Discriminator(config, (1, 28, 28)))
    return path


def test_sample_refine_writes_the_refined_samples_of_the_seed(mnist_pair_file, tmp_path, mnist5k_quality, quality_cache_dir,
                                                             monkeypatch):
    from raygan.sample import main

    monkeypatch.setenv("RAYGAN_CACHE_DIR", str(quality_cache_dir))  # the session's classifier picks the classes
    out = tmp_path / "drs.npy"
    args = ["--checkpoint", str(mnist_pair_file), "--num", "50", "--out", str(out), "--seed", "2", "--refine", "drs",
            "--calibration", "platt"]
    assert main(args) == 0
    first = np.load(out)
    assert first.shape == (50, 1, 28, 28) and 0 <= first.min() and first.max() <= 1
    assert main(args) == 0
    np.testing.assert_array_equal(np.load(out), first)  # reproducible for a seed
    data = load_dataset("mnist5k")
    want, _ = refine.sample_file(mnist_pair_file, data, 50, "drs", RefineConfig(calibration="platt"), seed=2,
                                 classes=refine.class_shares(mnist5k_quality, data.valid, 0.9))  # the defaults:
    np.testing.assert_array_equal(first, want.samples.numpy())  # refine.by_class, refine.confident 0.9
    assert main([*args, "--confident", "0"]) == 0  # classes only
    classes_only, _ = refine.sample_file(mnist_pair_file, data, 50, "drs", RefineConfig(calibration="platt"), seed=2,
                                         classes=refine.class_shares(mnist5k_quality))
    np.testing.assert_array_equal(np.load(out), classes_only.samples.numpy())
    assert main([*args, "--no-by-class"]) == 0  # D alone
    alone, _ = refine.sample_file(mnist_pair_file, data, 50, "drs", RefineConfig(calibration="platt"), seed=2)
    np.testing.assert_array_equal(np.load(out), alone.samples.numpy())
    assert not np.array_equal(alone.samples.numpy(), first)


def test_refine_without_a_saved_discriminator_is_one_sentence_and_exit_2(tmp_path, capsys):
    from raygan.evaluate import main as evaluate_main
    from raygan.sample import main as sample_main

    path = tmp_path / "old.pt"
    save_generator(path, Generator(ModelConfig(arch="mlp", noise_dim=8, g_hidden=(16,)), (1, 28, 28)))
    out = tmp_path / "keep.npy"
    out.write_bytes(b"keep me")
    assert sample_main(["--checkpoint", str(path), "--out", str(out), "--refine", "mh"]) == 2
    assert evaluate_main(["--checkpoint", str(path), "--refine", "drs", "--no-quality", "--num-samples", "50"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(e.startswith("error: ") and "no discriminator" in e for e in errors)
    assert out.read_bytes() == b"keep me"
    assert sample_main(["--checkpoint", str(path), "--out", str(out), "--refine", "drs", "--confident", "1.5"]) == 2
    assert capsys.readouterr().err.strip() == "error: refine.confident must lie in [0, 1], got 1.5"


def test_evaluate_refine_scores_the_refined_samples(mnist_pair_file, capsys):
    from raygan import parzen
    from raygan.evaluate import evaluate_samples, main

    report = evaluate_samples("mnist5k", checkpoint=mnist_pair_file, num_samples=60, seed=3, with_quality=False,
                              refine_with="mh", refine_config=RefineConfig(calibration="platt", mh_steps=2))
    data = load_dataset("mnist5k")
    want, _ = refine.sample_file(mnist_pair_file, data, 60, "mh", RefineConfig(calibration="platt", mh_steps=2), seed=3)
    assert report.model == parzen.evaluate(want.samples.numpy(), data.valid, data.test)
    assert report.refined["method"] == "mh" and report.refined["proposals"] == 60 * 3
    assert main(["--checkpoint", str(mnist_pair_file), "--refine", "drs", "--calibration", "platt", "--no-quality",
                 "--num-samples", "40"]) == 0
    assert "corrected by the saved discriminator (drs" in capsys.readouterr().out
    assert main(["--samples", str(mnist_pair_file), "--refine", "drs"]) == 2


def test_a_mixture_keeps_each_members_discriminator_and_refines_each_member_with_its_own(tmp_path):
    from raygan.mixture import GeneratorMixture

    (g0, d0), (g1, d1) = _pair(seed=0), _pair(seed=1)
    GeneratorMixture([g0, g1], [0.25, 0.75], ["a", "b"], discriminators=[d0, d1]).save(tmp_path / "mixture.pt")
    loaded = refine.load_refinable(tmp_path / "mixture.pt")
    x = torch.rand(6, 1, 4, 4)
    torch.testing.assert_close(loaded.discriminators[1](x), d1(x))
    np.testing.assert_allclose(loaded.weights, [0.25, 0.75])

    calls = []
    ratios = []
    for g, d in zip(loaded.members, loaded.discriminators):
        r = refine.calibrate(g, d, np.random.default_rng(0).random((100, 1, 4, 4), dtype=np.float32), RefineConfig(calibration="platt"))

        def spy(x, labels=None, r=r, d=d):
            calls.append(d)
            return r.log_ratio(x, labels)

        ratios.append(type("Spy", (), {"log_ratio": staticmethod(spy)})())
    out = refine.refine(loaded.members, ratios, loaded.weights, 400, "mh", RefineConfig(mh_steps=2), seed=0)
    assert out.samples.shape == (400, 1, 4, 4)
    assert {id(d) for d in calls} == {id(d) for d in loaded.discriminators}  # each member scored by its own D

    GeneratorMixture([g0, g1], [0.5, 0.5]).save(tmp_path / "old_mixture.pt")
    with pytest.raises(refine.RefineError, match="no discriminators"):
        refine.load_refinable(tmp_path / "old_mixture.pt")
