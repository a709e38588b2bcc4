"""A user's model for the tests: ``model.arch: "tests.plugin_gan:pair"`` (and factories that are wrong on purpose).

A factory takes the data's shape (C, H, W) and the noise dimension and returns (G, D): G maps
(N, noise_dim) noise to (N, C, H, W) images in [0, 1], D maps images to (N,) logits.
"""

from __future__ import annotations

import math

import torch
from torch import nn

HIDDEN = 32


class Generator(nn.Module):
    """A two-layer MLP ending in a sigmoid; ``set_output_bias`` starts it at the data's mean image."""

    def __init__(self, shape: tuple[int, int, int], noise_dim: int) -> None:
        super().__init__()
        self.shape = shape
        self.body = nn.Sequential(nn.Linear(noise_dim, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, math.prod(shape)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.body(z)).view(-1, *self.shape)

    @torch.no_grad()
    def set_output_bias(self, marginals: torch.Tensor) -> None:
        self.body[-1].bias.copy_(torch.logit(marginals.reshape(-1).clamp(1e-3, 1 - 1e-3)))


def pair(data_shape: tuple[int, int, int], noise_dim: int) -> tuple[nn.Module, nn.Module]:
    """The plug-in pair: an MLP G and an MLP D with one logit (N, 1)."""
    d = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(data_shape), HIDDEN), nn.LeakyReLU(0.2), nn.Linear(HIDDEN, 1))
    return Generator(data_shape, noise_dim), d


# ---- factories that return the wrong thing -------------------------------------------------------

NOT_CALLABLE = 3


def one_net(data_shape, noise_dim):
    return pair(data_shape, noise_dim)[0]


def tanh_generator(data_shape, noise_dim):
    g, d = pair(data_shape, noise_dim)
    return nn.Sequential(nn.Linear(noise_dim, math.prod(data_shape)), nn.Tanh(), nn.Unflatten(1, data_shape)), d


def wrong_size(data_shape, noise_dim):
    c, h, w = data_shape
    return pair((c, 2 * h, 2 * w), noise_dim)[0], pair(data_shape, noise_dim)[1]


def many_logits(data_shape, noise_dim):
    g, _ = pair(data_shape, noise_dim)
    return g, nn.Sequential(nn.Flatten(), nn.Linear(math.prod(data_shape), 5))


class _OnceDifferentiableSquare(torch.autograd.Function):
    """x -> x^2 with a backward that cannot itself be differentiated (as some custom kernels)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


class _OnceDifferentiableD(nn.Module):
    def __init__(self, data_shape) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(data_shape), 1))

    def forward(self, x):
        return self.body(_OnceDifferentiableSquare.apply(x))


def once_differentiable_d(data_shape, noise_dim):
    """A D whose input gradient has no gradient of its own: the R1 penalty cannot train it."""
    return pair(data_shape, noise_dim)[0], _OnceDifferentiableD(data_shape)


def raises(data_shape, noise_dim):
    raise ValueError(f"no architecture for {data_shape}")
