"""A plug-in model for raygan: a DCGAN pair whose discriminator is spectrally normalised.

    model:
      arch: experiments.plugin_dcgan:pair          # run from the repository root (or put this file on PYTHONPATH)

raygan calls ``pair(data_shape, noise_dim)`` with the data's (C, H, W) and model.noise_dim, and
expects (G, D): G maps (N, noise_dim) noise to (N, C, H, W) images in [0, 1] (here: a sigmoid at
the end), D maps images to one logit each, (N,) or (N, 1). raygan trains, checkpoints (as state
dicts), searches, mixes and samples the pair like its own; the generator file names this
factory, so ``python -m raygan.sample`` needs this module importable too.

What it adds to raygan's built-in conv pair: spectral normalisation of every layer of D
(Miyato et al., 2018), which bounds D's Lipschitz constant instead of relying on the learning
rates to keep D from overpowering G. Sized from the data as the built-in pair is: one stride-2
layer per halving of the side down to 4-7 pixels (28 -> 7, 32 -> 4, 64 -> 4), WIDTH channels in
D's first layer, doubled per layer inwards. An optional ``set_output_bias(marginals)`` on G is
called by raygan with the mean training image (model.g_marginal_bias), so G starts at the
data's mean, as raygan's own G does.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

WIDTH = 32


def _halvings(side: int) -> tuple[int, int]:
    """(stride-2 layers, base side): halve while the side stays even and the half is >= 4."""
    layers = 0
    while side % 2 == 0 and side // 2 >= 4:
        side, layers = side // 2, layers + 1
    if layers == 0:
        raise ValueError(f"needs a square side that halves at least once to >= 4 pixels, got {side}")
    return layers, side


class Generator(nn.Module):
    """z -> linear -> (top, base, base) -> [ConvTranspose 4x4/2, BN, ReLU] x (layers - 1) -> ConvTranspose -> sigmoid."""

    def __init__(self, shape: tuple[int, int, int], noise_dim: int) -> None:
        super().__init__()
        channels, height, width = shape
        if height != width:
            raise ValueError(f"needs square images, got {height}x{width}")
        layers, base = _halvings(height)
        top = WIDTH * 2 ** (layers - 1)
        blocks: list[nn.Module] = [nn.Linear(noise_dim, top * base * base, bias=False), nn.Unflatten(1, (top, base, base)),
                                   nn.BatchNorm2d(top), nn.ReLU()]
        for i in range(layers - 1):
            blocks += [nn.ConvTranspose2d(top >> i, top >> (i + 1), 4, 2, 1, bias=False), nn.BatchNorm2d(top >> (i + 1)), nn.ReLU()]
        self.body = nn.Sequential(*blocks)
        self.out = nn.ConvTranspose2d(WIDTH, channels, 4, 2, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.out(self.body(z)))  # (N, noise_dim) -> (N, C, H, W) in [0, 1]

    @torch.no_grad()
    def set_output_bias(self, marginals: torch.Tensor) -> None:
        """Start at the data's mean: the output bias per channel at the logit of its mean pixel."""
        mean = marginals.reshape(self.out.out_channels, -1).mean(dim=1)
        self.out.bias.copy_(torch.logit(mean.clamp(1e-4, 1 - 1e-4)))


def discriminator(shape: tuple[int, int, int]) -> nn.Module:
    """[spectral-norm Conv 4x4/2, LeakyReLU 0.2] x layers -> flatten -> spectral-norm linear -> (N, 1) logits."""
    channels, height, _ = shape
    layers, base = _halvings(height)
    blocks: list[nn.Module] = []
    for i in range(layers):
        blocks += [spectral_norm(nn.Conv2d(channels, WIDTH << i, 4, 2, 1)), nn.LeakyReLU(0.2)]
        channels = WIDTH << i
    return nn.Sequential(*blocks, nn.Flatten(), spectral_norm(nn.Linear(channels * base * base, 1)))


def pair(data_shape: tuple[int, int, int], noise_dim: int) -> tuple[nn.Module, nn.Module]:
    """The factory raygan calls: (G, D) for images of ``data_shape`` and noise of ``noise_dim``."""
    return Generator(tuple(data_shape), noise_dim), discriminator(tuple(data_shape))
