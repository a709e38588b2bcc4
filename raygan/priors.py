"""Noise priors p_z, by name (paper Section 3: "a prior on input noise variables p_z(z)").

Every prior has zero mean and unit variance per coordinate (the truncated normal: 0.77), so a
change of prior hardly rescales G's input. Every prior draws through an explicit
``torch.Generator`` so that a run, and a run resumed from a checkpoint, sees the same noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from raygan.config import PRIORS, ConfigError


def _uniform(n: int, dim: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    # The released code's p_z: uniform on [-sqrt 3, sqrt 3] in every coordinate (unit variance,
    # like the other priors).
    return torch.rand(n, dim, generator=gen, device=device).mul_(2).sub_(1).mul_(math.sqrt(3))


def _gaussian(n: int, dim: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randn(n, dim, generator=gen, device=device)


def _truncated_normal(n: int, dim: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    # Standard normal truncated to [-2, 2] by inverse-CDF sampling: bounded like the uniform
    # prior, but with most mass near the centre.
    lo = 0.5 * (1 + math.erf(-2 / math.sqrt(2)))
    u = torch.rand(n, dim, generator=gen, device=device).mul_(1 - 2 * lo).add_(lo)
    return torch.special.ndtri(u)


def _hypersphere(n: int, dim: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    # Uniform on the sphere of radius sqrt(dim): a normalised Gaussian, with the same expected
    # squared norm as a standard normal but no mass near the origin.
    z = torch.randn(n, dim, generator=gen, device=device)
    return z.mul_(math.sqrt(dim) / z.norm(dim=1, keepdim=True).clamp_min(1e-12))


_SAMPLERS: dict[str, Callable[[int, int, torch.Generator, torch.device], torch.Tensor]] = {
    "uniform": _uniform,
    "gaussian": _gaussian,
    "truncated-normal": _truncated_normal,
    "hypersphere": _hypersphere,
}
assert tuple(_SAMPLERS) == PRIORS


def sample_noise(prior: str, n: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    """Draw ``n`` noise vectors z ~ p_z of dimension ``dim`` on ``gen``'s device.

    Args:
        prior: one of :data:`raygan.config.PRIORS`.
        n: number of vectors.
        dim: noise dimension.
        gen: the random stream to draw from; its device is the output's device.

    Returns:
        A float32 tensor of shape (n, dim).
    """
    try:
        sampler = _SAMPLERS[prior]
    except KeyError:
        raise ConfigError(f"unknown noise prior {prior!r}; choose one of: {', '.join(PRIORS)}") from None
    return sampler(n, dim, gen, gen.device)
