"""Noise priors p_z: support, moments, whole-distribution fit, and seeded reproducibility."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from raygan.config import PRIORS, ConfigError
from raygan.priors import sample_noise

N, DIM = 20_000, 10  # 200k coordinates: the standard error of a variance is ~0.3 % of it


def _draw(prior: str, n: int = N, dim: int = DIM, seed: int = 0) -> torch.Tensor:
    return sample_noise(prior, n, dim, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("prior", PRIORS)
def test_shape_dtype_and_finiteness(prior):
    z = _draw(prior, 7, 3)
    assert z.shape == (7, 3) and z.dtype == torch.float32 and z.device.type == "cpu"
    assert torch.isfinite(z).all()
    assert _draw(prior, 0, 3).shape == (0, 3)


@pytest.mark.parametrize("prior", PRIORS)
def test_seeded_reproducibility(prior):
    assert torch.equal(_draw(prior, seed=1), _draw(prior, seed=1))
    assert not torch.equal(_draw(prior, seed=1), _draw(prior, seed=2))
    # draws continue the stream: two halves from one generator differ from each other
    gen = torch.Generator().manual_seed(3)
    a, b = sample_noise(prior, 50, 4, gen), sample_noise(prior, 50, 4, gen)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("prior", PRIORS)
def test_sampling_uses_only_the_given_generator(prior):
    before = torch.get_rng_state()
    _draw(prior, 100, 5)
    assert torch.equal(torch.get_rng_state(), before)


def _ks_pvalue(z: torch.Tensor, dist) -> float:
    return stats.kstest(z.flatten().double().numpy()[:50_000], dist.cdf).pvalue


def test_uniform_is_the_released_codes_prior_on_minus_sqrt3_sqrt3():
    """Uniform on [-sqrt 3, sqrt 3] per coordinate (the released code's p_z): mean 0, variance 1
    (to 2 %), KS fit, coordinates uncorrelated."""
    root3 = math.sqrt(3)
    z = _draw("uniform")
    assert z.min() >= -root3 and z.max() <= root3
    assert z.min() < -0.999 * root3 and z.max() > 0.999 * root3  # fills the interval
    assert z.mean().item() == pytest.approx(0.0, abs=0.01)
    assert z.var().item() == pytest.approx(1.0, rel=0.02)
    assert _ks_pvalue(z, stats.uniform(-root3, 2 * root3)) > 1e-3
    corr = np.corrcoef(z.numpy().T)
    assert np.abs(corr - np.eye(DIM)).max() < 0.05


def test_gaussian_is_standard_normal():
    z = _draw("gaussian")
    assert z.mean().item() == pytest.approx(0.0, abs=0.01)
    assert z.var().item() == pytest.approx(1.0, rel=0.02)
    assert _ks_pvalue(z, stats.norm()) > 1e-3
    assert z.abs().max() > 3  # unbounded tails show up in 200k draws


def test_truncated_normal_lives_on_minus_two_two():
    """Standard normal truncated to [-2, 2]: support, variance 1 - 4 phi(2) / (2 Phi(2) - 1) ~ 0.774, KS fit."""
    z = _draw("truncated-normal")
    assert z.min() >= -2 and z.max() <= 2
    assert z.min() < -1.99 and z.max() > 1.99
    truncated = stats.truncnorm(-2, 2)
    assert z.mean().item() == pytest.approx(0.0, abs=0.01)
    assert z.var().item() == pytest.approx(truncated.var(), rel=0.02)
    assert truncated.var() == pytest.approx(1 - 4 * stats.norm.pdf(2) / (2 * stats.norm.cdf(2) - 1))
    assert _ks_pvalue(z, truncated) > 1e-3


@pytest.mark.parametrize("dim", [1, 2, 10, 100])
def test_hypersphere_norms_are_sqrt_dim_and_directions_uniform(dim):
    """Uniform on the sphere of radius sqrt(dim): every norm is sqrt(dim); coordinates have mean 0 and
    variance 1 (E|z|^2 = dim, shared equally); in 2-D the angle is uniform on (-pi, pi]."""
    z = _draw("hypersphere", 20_000, dim)
    torch.testing.assert_close(z.norm(dim=1), torch.full((20_000,), math.sqrt(dim)), rtol=1e-5, atol=1e-5)
    assert z.mean().item() == pytest.approx(0.0, abs=0.02)
    assert z.var().item() == pytest.approx(1.0, rel=0.03)
    if dim == 1:
        assert (z > 0).double().mean().item() == pytest.approx(0.5, abs=0.02)  # +-1 with equal odds
    if dim == 2:
        angles = torch.atan2(z[:, 1], z[:, 0]).double().numpy()
        assert stats.kstest(angles, stats.uniform(-math.pi, 2 * math.pi).cdf).pvalue > 1e-3


def test_unknown_prior_is_a_config_error_naming_the_choices():
    with pytest.raises(ConfigError) as info:
        _draw("laplace", 3, 2)
    message = str(info.value)
    assert "laplace" in message and all(p in message for p in PRIORS)
