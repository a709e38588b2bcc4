"""The paper's theory, checked numerically against raygan's own losses and networks.

Proposition 1: for G fixed, the optimal discriminator is D*(x) = p_data(x) / (p_data(x) + p_g(x)).
Theorem 1: C(G) = max_D V(G, D) = -log 4 + 2 JSD(p_data || p_g), whose minimum -log 4 is reached
only at p_g = p_data.

Two settings: a discrete support, where D is a table of logits and every expectation is an exact
finite sum (tight tolerances), and two known 1-D Gaussians, where D is raygan's maxout
discriminator trained on samples (a tolerance set by what a small net and SGD reach).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from scipy.spatial.distance import jensenshannon

from raygan.algorithm import discriminator_loss
from raygan.config import ModelConfig
from raygan.models import Discriminator, Generator
from raygan.priors import sample_noise

LOG4 = math.log(4.0)


# Two distributions on six points, in multiples of 1/20 so that a list of 20 support indices
# holds each one exactly: a mean over that list *is* the expectation.
P_DATA = np.array([2, 4, 6, 5, 2, 1]) / 20
P_G = np.array([6, 1, 2, 3, 4, 4]) / 20


def _exact_indices(p: np.ndarray, total: int = 20) -> torch.Tensor:
    """Support indices repeated in proportion to ``p``: the mean over them is E_p exactly."""
    counts = np.rint(p * total).astype(int)
    assert counts.sum() == total and np.allclose(counts / total, p)
    return torch.repeat_interleave(torch.arange(len(p)), torch.from_numpy(counts))


def _value(p_data: np.ndarray, p_g: np.ndarray, d: np.ndarray) -> float:
    """V(G, D) = E_pdata log D(x) + E_pg log(1 - D(x)) on a discrete support (Eq. 1)."""
    return float(np.sum(p_data * np.log(d)) + np.sum(p_g * np.log1p(-d)))


def _jsd(p: np.ndarray, q: np.ndarray) -> float:
    """JSD in nats, computed by scipy independently of raygan (scipy returns its square root)."""
    return float(jensenshannon(p, q, base=math.e) ** 2)


# ---- Proposition 1 ------------------------------------------------------------------------


def test_prop1_tabular_discriminator_converges_to_optimum():
    """D = one logit per support point, trained on raygan's D loss with exact expectations.

    The loss is strictly convex in the logits, so full-batch L-BFGS (float64) reaches the
    optimum: tolerance 1e-6 on D(x) (it gets to ~2e-9 in a dozen evaluations).
    """
    real, fake = _exact_indices(P_DATA), _exact_indices(P_G)
    logits = torch.zeros(len(P_DATA), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([logits], max_iter=100, tolerance_grad=1e-12, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = discriminator_loss(logits[real], logits[fake])
        loss.backward()
        return loss

    opt.step(closure)
    d = torch.sigmoid(logits).detach().numpy()
    d_star = P_DATA / (P_DATA + P_G)
    np.testing.assert_allclose(d, d_star, atol=1e-6)
    # and the value it reaches is Theorem 1's C(G) (the loss is -V / 2, the released code's halving)
    v = -2 * discriminator_loss(logits[real], logits[fake]).item()
    assert v == pytest.approx(-LOG4 + 2 * _jsd(P_DATA, P_G), abs=1e-8)


def test_prop1_tabular_discriminator_from_minibatches():
    """The same table trained as Algorithm 1 trains D: SGD with momentum on sampled minibatches.

    With G fixed, the minibatch D-steps are stochastic gradient ascent on V, so D still ends at
    D* up to the sampling noise of the last steps: tolerance 0.02 on D(x), with minibatches of
    2000 and a learning rate decayed to 1/100 of its start.
    """
    gen = torch.Generator().manual_seed(0)
    p_data, p_g = torch.from_numpy(P_DATA), torch.from_numpy(P_G)
    logits = torch.zeros(len(P_DATA), requires_grad=True)
    opt = torch.optim.SGD([logits], lr=10.0, momentum=0.5)  # steps of lr 5 on -V: the loss is -V / 2
    steps = 600
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.01 ** (t / steps))
    for _ in range(steps):
        real = torch.multinomial(p_data, 2000, replacement=True, generator=gen)
        fake = torch.multinomial(p_g, 2000, replacement=True, generator=gen)
        loss = discriminator_loss(logits[real], logits[fake])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    d = torch.sigmoid(logits).detach().numpy()
    np.testing.assert_allclose(d, P_DATA / (P_DATA + P_G), atol=0.02)


def _affine_gaussian_generator(mean: float, std: float) -> Generator:
    """raygan's MLP generator with hand-set weights so that G(z) = mean + std * z.

    With a Gaussian prior z ~ N(0, 1), p_g is exactly N(mean, std^2): G is fixed on a known
    distribution. ReLU(z) - ReLU(-z) = z carries z through the two hidden layers.
    """
    config = ModelConfig(arch="mlp", noise_dim=1, prior="gaussian", g_hidden=(2, 2))
    g = Generator(config, (1, 1, 1), bounded=False)
    first, second, out = [m for m in g.net if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        first.bias.zero_()
        second.weight.copy_(torch.eye(2))
        second.bias.zero_()
        out.weight.copy_(torch.tensor([[std, -std]]))
        out.bias.fill_(mean)
    g.requires_grad_(False)
    return g


DATA_MEAN, DATA_STD = 0.0, 1.0
G_MEAN, G_STD = 1.0, 1.5


def test_fixed_generator_is_the_known_gaussian():
    g = _affine_gaussian_generator(G_MEAN, G_STD)
    z = sample_noise("gaussian", 20_000, 1, torch.Generator().manual_seed(1))
    x = g(z).view(-1).numpy()
    assert stats.kstest(x, stats.norm(G_MEAN, G_STD).cdf).pvalue > 1e-3


def test_prop1_maxout_discriminator_matches_optimum_on_gaussians():
    """raygan's maxout D, trained on D's loss against a fixed G, approximates D* on a grid.

    p_data = N(0, 1), p_g = N(1, 1.5^2) (G above): the log-odds are quadratic, so the
    piecewise-linear maxout net must bend. Checked on x in [-2, 2.5], where both densities
    exceed 0.017 and D* runs from 0.10 to 0.69: |D(x) - D*(x)| <= 0.03 (seeds 0-4 reached
    0.008-0.012). Also the value V(G, D) of the trained D (by quadrature) is within 0.002 nats
    of C(G) (seeds 0-4: 1e-4 to 2.5e-4), and not above it.
    """
    torch.manual_seed(0)
    config = ModelConfig(arch="mlp", d_hidden=(32, 32), d_pieces=3, d_input_dropout=0.0, d_hidden_dropout=0.0)
    disc = Discriminator(config, (1, 1, 1))
    for m in disc.modules():
        if isinstance(m, torch.nn.Linear):
            m.reset_parameters()  # PyTorch's fan-in init; the paper's +-0.005 is for 784 inputs
    g = _affine_gaussian_generator(G_MEAN, G_STD)
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(disc.parameters(), lr=3e-3)
    steps = 1500
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.05 ** (t / steps))
    m = 1024
    for _ in range(steps):
        x = (DATA_MEAN + DATA_STD * torch.randn(m, generator=gen)).view(m, 1, 1, 1)
        fake = g(sample_noise("gaussian", m, 1, gen))
        loss = discriminator_loss(disc(x), disc(fake))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()

    p_data, p_g = stats.norm(DATA_MEAN, DATA_STD).pdf, stats.norm(G_MEAN, G_STD).pdf
    grid = np.linspace(-2.0, 2.5, 91)
    with torch.no_grad():
        d = torch.sigmoid(disc(torch.from_numpy(grid).float().view(-1, 1, 1, 1))).numpy()
    d_star = p_data(grid) / (p_data(grid) + p_g(grid))
    assert np.max(np.abs(d - d_star)) <= 0.03, np.max(np.abs(d - d_star))

    # V(G, D) of the trained net, by quadrature on a fine grid covering both densities
    xs = np.linspace(-12.0, 14.0, 200_001)
    with torch.no_grad():
        logit = disc(torch.from_numpy(xs).float().view(-1, 1, 1, 1)).double().numpy()
    log_d, log_1md = -np.logaddexp(0, -logit), -np.logaddexp(0, logit)
    v = integrate.trapezoid(p_data(xs) * log_d + p_g(xs) * log_1md, xs)
    c = _gaussian_c(DATA_MEAN, DATA_STD, G_MEAN, G_STD)
    assert c - 0.002 <= v <= c + 1e-6


# ---- Theorem 1 ----------------------------------------------------------------------------


def test_theorem1_discrete_c_of_g_is_jsd():
    """C(G) = V(G, D*) equals -log 4 + 2 JSD exactly (1e-12) for the pair above and 20 random pairs."""
    rng = np.random.default_rng(0)
    pairs = [(P_DATA, P_G)] + [tuple(rng.dirichlet(np.ones(8), size=2)) for _ in range(20)]
    for p_data, p_g in pairs:
        d_star = p_data / (p_data + p_g)
        c = _value(p_data, p_g, d_star)
        assert c == pytest.approx(-LOG4 + 2 * _jsd(p_data, p_g), abs=1e-12)
        assert c > -LOG4 + 1e-6  # the minimum is reached only at p_g = p_data


def test_theorem1_d_star_is_the_maximiser():
    """V(G, D) <= V(G, D*) for every perturbed D: C(G) is the max over D, not just a stationary value."""
    rng = np.random.default_rng(1)
    d_star = P_DATA / (P_DATA + P_G)
    c = _value(P_DATA, P_G, d_star)
    logit_star = np.log(d_star / (1 - d_star))
    for scale in (1e-3, 1e-1, 1.0, 5.0):
        for _ in range(50):
            d = 1 / (1 + np.exp(-(logit_star + scale * rng.standard_normal(len(d_star)))))
            assert _value(P_DATA, P_G, d) <= c + 1e-15


def test_theorem1_equal_distributions_give_minus_log4():
    p = P_DATA
    d_star = p / (p + p)
    np.testing.assert_allclose(d_star, 0.5)
    assert _value(p, p, d_star) == pytest.approx(-LOG4, abs=1e-15)
    assert _jsd(p, p) == pytest.approx(0.0, abs=1e-15)
    # through raygan's loss (-V / 2): D(x) = 1/2 everywhere (logit 0) gives V = -log 4
    idx = _exact_indices(p)
    logits = torch.zeros(len(p), dtype=torch.float64)
    assert -2 * discriminator_loss(logits[idx], logits[idx]).item() == pytest.approx(-LOG4, abs=1e-15)


def test_theorem1_discrete_through_raygan_loss():
    """-2 discriminator_loss at D* (logits log p_data/p_g) is C(G) = -log 4 + 2 JSD, to 1e-12
    (raygan's D loss is the released code's -V / 2)."""
    real, fake = _exact_indices(P_DATA), _exact_indices(P_G)
    logits = torch.from_numpy(np.log(P_DATA / P_G))
    v = -2 * discriminator_loss(logits[real], logits[fake]).item()
    assert v == pytest.approx(-LOG4 + 2 * _jsd(P_DATA, P_G), abs=1e-12)


def _gaussian_c(m1: float, s1: float, m2: float, s2: float) -> float:
    """C(G) for p_data = N(m1, s1^2), p_g = N(m2, s2^2) by adaptive quadrature of V(G, D*)."""
    p, q = stats.norm(m1, s1), stats.norm(m2, s2)

    def integrand(x: float) -> float:
        lp, lq = p.logpdf(x), q.logpdf(x)
        lm = np.logaddexp(lp, lq)  # log(p + q)
        return math.exp(lp) * (lp - lm) + math.exp(lq) * (lq - lm)  # p log D* + q log(1 - D*)

    lo, hi = min(m1 - 12 * s1, m2 - 12 * s2), max(m1 + 12 * s1, m2 + 12 * s2)
    value, err = integrate.quad(integrand, lo, hi, points=[m1, m2], limit=200, epsabs=1e-12)
    assert err < 1e-9
    return value


@pytest.mark.parametrize(
    "m1, s1, m2, s2",
    [(0.0, 1.0, 1.0, 1.5), (4.0, 0.5, 0.0, 1.0), (0.0, 1.0, 0.0, 3.0), (0.0, 1.0, 0.1, 1.0)],
)
def test_theorem1_gaussians_c_of_g_is_jsd(m1, s1, m2, s2):
    """Continuous case: C(G) by quadrature vs 2 JSD from scipy on densities binned finely (1e-5 nats)."""
    c = _gaussian_c(m1, s1, m2, s2)
    lo, hi = min(m1 - 12 * s1, m2 - 12 * s2), max(m1 + 12 * s1, m2 + 12 * s2)
    xs = np.linspace(lo, hi, 400_001)
    jsd = _jsd(stats.norm(m1, s1).pdf(xs), stats.norm(m2, s2).pdf(xs))  # scipy normalises the bins
    assert c == pytest.approx(-LOG4 + 2 * jsd, abs=1e-5)
    assert c > -LOG4


def test_theorem1_equal_gaussians_give_minus_log4():
    assert _gaussian_c(4.0, 0.5, 4.0, 0.5) == pytest.approx(-LOG4, abs=1e-9)
