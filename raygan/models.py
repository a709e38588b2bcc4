"""The paper's generator and discriminator (Goodfellow et al., 2014, Section 5).

MNIST pair ("mlp"): G is an MLP with ReLU hidden units and a sigmoid output, the noise fed
into the bottom layer only; D is a maxout MLP with dropout and one output logit (D(x) is the
sigmoid of that logit; the losses in :mod:`raygan.algorithm` work on logits for stability).
Conv pair ("conv", the idea of Figure 2d's "deconvolutional" G, in the DCGAN form of Radford
et al., 2016): a transposed-convolution G with batch norm and a LeakyReLU convolutional D, one
stride-2 layer per halving of the image side (28x28: 7 -> 14 -> 28; 32x32: 4 -> 8 -> 16 -> 32).
Sizes come from :class:`raygan.config.ModelConfig`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raygan.config import ConfigError, ModelConfig, build, to_dict
from raygan.errors import CheckpointError
from raygan.files import atomic_torch_save
from raygan.priors import sample_noise

Shape = tuple[int, int, int]  # (C, H, W) of one data point


class Maxout(nn.Module):
    """A maxout layer (Goodfellow et al., 2013): the max over ``pieces`` linear functions per unit."""

    def __init__(self, in_features: int, out_features: int, pieces: int) -> None:
        super().__init__()
        self.out_features, self.pieces = out_features, pieces
        self.linear = nn.Linear(in_features, out_features * pieces)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, out * pieces) -> (N, out, pieces) -> max over pieces -> (N, out)
        return self.linear(x).view(-1, self.out_features, self.pieces).amax(dim=2)


class Generator(nn.Module):
    """G(z; theta_g): maps noise z ~ p_z to a data point of shape ``data_shape``.

    Args:
        config: model sizes, architecture and the noise prior (kept with G so samples need nothing else).
        data_shape: (C, H, W) of a data point.
        bounded: True for images in [0, 1] (sigmoid output, as in the paper), False for unbounded
            point sets such as the 1-D Gaussian of Figure 1 (linear output).
    """

    def __init__(self, config: ModelConfig, data_shape: Shape, bounded: bool = True) -> None:
        super().__init__()
        self.config, self.data_shape, self.bounded = config, tuple(data_shape), bounded
        self.net = _mlp_generator(config, data_shape) if config.arch == "mlp" else _conv_generator(config, data_shape)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.net(z)
        x = torch.sigmoid(x) if self.bounded else x
        return x.view(-1, *self.data_shape)  # (N, noise_dim) -> (N, C, H, W)

    @torch.no_grad()
    def set_output_bias(self, marginals: torch.Tensor) -> None:
        """Set the output layer's bias to logit(marginals): G(z) starts near the data's mean image.

        pylearn2's init_bias_target_marginals, which the released MNIST config used, with its
        clamp to [1e-7, 1 - 1e-7] (border pixels that are never on would give -inf).

        Args:
            marginals: the mean training point, (C, H, W), values in [0, 1]. The MLP takes it
                per pixel; the conv G's last layer has one bias per channel and takes the
                channel's mean.
        """
        if not self.bounded:
            raise ValueError("an output bias from pixel marginals needs bounded data (a sigmoid output)")
        out = self.net[-2] if self.config.arch == "conv" else self.net[-1]  # conv: before Flatten
        mean = marginals.reshape(self.data_shape)
        mean = mean.mean(dim=(1, 2)) if self.config.arch == "conv" else mean.reshape(-1)
        out.bias.copy_(torch.logit(mean.clamp(1e-7, 1 - 1e-7)).to(out.bias))


class Discriminator(nn.Module):
    """D(x; theta_d): one logit per data point; D(x) = sigmoid(logit) is the probability x is real."""

    def __init__(self, config: ModelConfig, data_shape: Shape) -> None:
        super().__init__()
        self.config, self.data_shape = config, tuple(data_shape)
        self.net = _maxout_discriminator(config, data_shape) if config.arch == "mlp" else _conv_discriminator(config, data_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(-1)  # (N, C, H, W) -> (N,) logits

    @torch.no_grad()
    def apply_max_norm(self) -> None:
        """Clip each unit's incoming weight vector to L2 norm ``d_max_norm`` (pylearn2's max_col_norm)."""
        limit = self.config.d_max_norm
        if limit is None:
            return
        for module in self.modules():
            if isinstance(module, nn.Linear):
                module.weight.renorm_(2, 0, limit)  # rows of (out, in) are the units' weight vectors


def _mlp_generator(c: ModelConfig, shape: Shape) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = c.noise_dim  # noise enters the bottom layer only
    for hidden in c.g_hidden:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers += [nn.Linear(width, math.prod(shape))]
    net = nn.Sequential(*layers)
    if c.init == "paper":
        _uniform_init(net, 0.05)  # pylearn2 config: irange 0.05, zero biases
    return net


def _maxout_discriminator(c: ModelConfig, shape: Shape) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten(), nn.Dropout(c.d_input_dropout)]
    width = math.prod(shape)
    for hidden in c.d_hidden:
        layers += [Maxout(width, hidden, c.d_pieces), nn.Dropout(c.d_hidden_dropout)]
        width = hidden
    layers += [nn.Linear(width, 1)]
    net = nn.Sequential(*layers)
    if c.init == "paper":
        _uniform_init(net, 0.005)  # pylearn2 config: irange 0.005
    return net


def _uniform_init(net: nn.Module, bound: float) -> None:
    for m in net.modules():
        if isinstance(m, nn.Linear):
            nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)


def _conv_layers(shape: Shape) -> tuple[int, int]:
    """(number of stride-2 layers, base side): halve the side while it stays even and >= 4."""
    _, height, width = shape
    side, layers = height, 0
    while side % 2 == 0 and side // 2 >= 4:
        side, layers = side // 2, layers + 1
    if height != width or layers == 0:
        raise ConfigError(
            f"the conv architecture needs square images with an even side of at least 8 pixels, got "
            f"{height}x{width}; use model.arch: mlp for other shapes and for point sets"
        )
    return layers, side


def _conv_generator(c: ModelConfig, shape: Shape) -> nn.Sequential:
    layers, base = _conv_layers(shape)
    top = c.conv_width * 2 ** (layers - 1)  # channels at the base side, halved per up layer

    def up(cin: int, cout: int) -> list[nn.Module]:  # doubles height and width
        return [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    hidden: list[nn.Module] = []
    for i in range(layers - 1):
        hidden += up(top >> i, top >> (i + 1))  # -> (N, top / 2^(i+1), 2^(i+1) base, ...)
    return nn.Sequential(
        nn.Linear(c.noise_dim, top * base * base, bias=False),
        nn.Unflatten(1, (top, base, base)),  # (N, noise) -> (N, top, base, base)
        nn.BatchNorm2d(top),
        nn.ReLU(),
        *hidden,  # -> (N, conv_width, H/2, W/2)
        nn.ConvTranspose2d(c.conv_width, shape[0], 4, 2, 1),  # -> (N, C, H, W)
        nn.Flatten(),
    )


def _conv_discriminator(c: ModelConfig, shape: Shape) -> nn.Sequential:
    layers, base = _conv_layers(shape)
    convs: list[nn.Module] = []
    channels = shape[0]
    for i in range(layers):
        convs += [nn.Conv2d(channels, c.conv_width << i, 4, 2, 1), nn.LeakyReLU(0.2)]  # halves H and W
        channels = c.conv_width << i
    return nn.Sequential(
        nn.Dropout(c.d_input_dropout),
        *convs,  # -> (N, conv_width * 2^(layers-1), base, base)
        nn.Flatten(),
        nn.Dropout(c.d_hidden_dropout),
        nn.Linear(channels * base * base, 1),
    )


# --------------------------------------------------------------------------------------------
# Sampling and the generator file (what `raygan.sample` and `raygan.evaluate` read).

GENERATOR_FORMAT = "raygan-generator/1"


@torch.no_grad()
def generate(generator: Generator, n: int, seed: int = 0, batch_size: int = 1000) -> torch.Tensor:
    """Draw ``n`` samples G(z), z ~ p_z, on the generator's device, in eval mode.

    Args:
        generator: the network; its config names the prior.
        n: number of samples.
        seed: seeds the noise, so the same seed gives the same samples.
        batch_size: samples per forward pass (bounds memory).

    Returns:
        A float32 tensor (n, C, H, W).
    """
    device = next(generator.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    was_training = generator.training
    generator.eval()
    try:
        out = [
            generator(sample_noise(generator.config.prior, min(batch_size, n - i), generator.config.noise_dim, gen))
            for i in range(0, n, batch_size)
        ]
    finally:
        generator.train(was_training)
    return torch.cat(out) if out else torch.empty(0, *generator.data_shape, device=device)


def generator_state(generator: Generator) -> dict[str, Any]:
    """Everything needed to rebuild ``generator`` elsewhere: weights, sizes, data shape, output kind."""
    return {
        "format": GENERATOR_FORMAT,
        "model": to_dict(generator.config),
        "data_shape": list(generator.data_shape),
        "bounded": generator.bounded,
        "state_dict": {k: v.detach().cpu() for k, v in generator.state_dict().items()},
    }


def save_generator(path: str | Path, generator: Generator) -> None:
    """Write ``generator`` to ``path`` atomically, as tensors and plain values only."""
    atomic_torch_save(generator_state(generator), path)


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> Generator:
    """Rebuild a generator saved by :func:`save_generator`.

    The file is read with ``weights_only=True``: nothing in it can run code.

    Raises:
        CheckpointError: the file is missing, unreadable, or not a raygan generator.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # on arbitrary bytes the unpickler also raises KeyError, IndexError, struct.error...
        raise CheckpointError(f"{str(path)!r} is not a raygan generator checkpoint ({e.__class__.__name__})") from None
    return generator_from_state(state, repr(str(path))).to(device)


def generator_from_state(state: Any, source: str) -> Generator:
    """Rebuild a generator, on the CPU and in eval mode, from a :func:`generator_state` dict.

    Args:
        state: what :func:`generator_state` returned, as read back with ``weights_only=True``.
        source: where it came from, for messages (a quoted path).

    Raises:
        CheckpointError: ``state`` is not a raygan generator's, or is damaged.
    """
    if not isinstance(state, dict) or state.get("format") != GENERATOR_FORMAT:
        raise CheckpointError(f"{source} is not a raygan generator checkpoint (expected format {GENERATOR_FORMAT})")
    try:
        generator = Generator(build(ModelConfig, state["model"], "model"), tuple(state["data_shape"]), state["bounded"])
        generator.load_state_dict(state["state_dict"])
    except (KeyError, TypeError, RuntimeError, ConfigError) as e:
        raise CheckpointError(f"{source} holds a damaged generator ({e.__class__.__name__})") from None
    return generator.eval()
