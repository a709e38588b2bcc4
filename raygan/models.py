"""The paper's generator and discriminator (Goodfellow et al., 2014, Section 5).

MNIST pair ("mlp"): G is an MLP with ReLU hidden units and a sigmoid output, the noise fed
into the bottom layer only; D is a maxout MLP with dropout and one output logit (D(x) is the
sigmoid of that logit; the losses in :mod:`raygan.algorithm` work on logits for stability).
Conv pair ("conv", the idea of Figure 2d's "deconvolutional" G, in the DCGAN form of Radford
et al., 2016): a transposed-convolution G with batch norm and a LeakyReLU convolutional D, one
stride-2 layer per halving of the image side (28x28: 7 -> 14 -> 28; 32x32: 4 -> 8 -> 16 -> 32).
Sizes come from :class:`raygan.config.ModelConfig`.

Conditional pairs (``model.conditional``; the paper's Section 7: "adding c as input to both G
and D"): the class c enters as a one-hot vector, concatenated to z in G (both archs), and to
x in D, to the flat input for the maxout D and as K constant extra input channels for the conv
D. The class count K belongs to the data and travels with the generator file.

A user's pair (``model.arch: "package.module:factory"``): ``factory(data_shape, noise_dim)``
returns (G, D) as torch modules; :class:`Generator` and :class:`Discriminator` wrap them as
their ``net``, so the trainer, the checkpoints, the mixture and ``raygan.sample`` see the same
interface as for the built-in pairs. The user's G ends in its own output activation (images in
[0, 1]: no sigmoid is added); D returns logits. Their weights are saved as state dicts, and a
generator file names its factory in its config, so it is rebuilt by calling the factory again.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from raygan.config import ConfigError, ModelConfig, build, is_factory, saved_section, to_dict
from raygan.errors import CheckpointError, UserError
from raygan.files import atomic_torch_save
from raygan.priors import sample_noise

Shape = tuple[int, int, int]  # (C, H, W) of one data point


class LabelError(UserError):
    """Labels asked of a generator that cannot take them (unconditional, or a class it does not have)."""


def _classes(config: ModelConfig, num_classes: int | None) -> int:
    """K for a conditional pair (at least 2), 0 for an unconditional one."""
    if not config.conditional:
        return 0
    if num_classes is None or num_classes < 2:
        raise ConfigError(f"model.conditional needs a labelled data set with at least 2 classes, got {num_classes}")
    return int(num_classes)


def one_hot(labels: torch.Tensor, num_classes: int, like: torch.Tensor) -> torch.Tensor:
    """(N,) class indices -> (N, K) one-hot rows in ``like``'s dtype and device."""
    return F.one_hot(labels.to(like.device, torch.int64), num_classes).to(like.dtype)


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
        num_classes: K, for ``config.conditional`` (ignored otherwise).
        net: a user factory's G (``config.arch`` names the factory), already built; None: build it.

    Attributes:
        num_classes: K for a conditional G, None for an unconditional one.
        plugin: whether ``net`` is a user factory's G (it makes its own output range).
    """

    def __init__(self, config: ModelConfig, data_shape: Shape, bounded: bool = True, num_classes: int | None = None,
                 net: nn.Module | None = None) -> None:
        super().__init__()
        self.config, self.data_shape, self.bounded = config, tuple(data_shape), bounded
        k = _classes(config, num_classes)
        self.num_classes = k or None
        self.plugin = is_factory(config.arch)
        if self.plugin:
            self.net = net if net is not None else plugin_pair(config, data_shape, bounded)[0]
        else:
            build_net = _mlp_generator if config.arch == "mlp" else _conv_generator
            self.net = build_net(config, data_shape, k)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """(N, noise_dim) noise, and (N,) class indices for a conditional G -> (N, C, H, W)."""
        if self.num_classes:
            z = torch.cat([z, one_hot(labels, self.num_classes, z)], dim=1)  # (N, noise_dim + K)
        x = self.net(z)
        x = torch.sigmoid(x) if self.bounded and not self.plugin else x
        return x.reshape(-1, *self.data_shape)  # (N, noise_dim) -> (N, C, H, W)

    @torch.no_grad()
    def set_output_bias(self, marginals: torch.Tensor) -> None:
        """Set the output layer's bias to logit(marginals): G(z) starts near the data's mean image.

        pylearn2's init_bias_target_marginals, which the released MNIST config used, with its
        clamp to [1e-7, 1 - 1e-7] (border pixels that are never on would give -inf).

        Args:
            marginals: the mean training point, (C, H, W), values in [0, 1]. The MLP takes it
                per pixel; the conv G's last layer has one bias per channel and takes the
                channel's mean; a user's G takes it through its own ``set_output_bias`` where
                it has one, and is left as its factory made it where it has not.
        """
        if self.plugin:
            if callable(getattr(self.net, "set_output_bias", None)):
                self.net.set_output_bias(marginals)
            return
        if not self.bounded:
            raise ValueError("an output bias from pixel marginals needs bounded data (a sigmoid output)")
        out = self.net[-2] if self.config.arch == "conv" else self.net[-1]  # conv: before Flatten
        mean = marginals.reshape(self.data_shape)
        mean = mean.mean(dim=(1, 2)) if self.config.arch == "conv" else mean.reshape(-1)
        out.bias.copy_(torch.logit(mean.clamp(1e-7, 1 - 1e-7)).to(out.bias))


class Discriminator(nn.Module):
    """D(x; theta_d): one logit per data point; D(x) = sigmoid(logit) is the probability x is real.

    A conditional D (``config.conditional``, with ``num_classes``) reads D(x | c): the one-hot
    class joins the input just before the first layer with weights (after input dropout, which
    is for the pixels, not the label).

    Args:
        config: model sizes and architecture.
        data_shape: (C, H, W) of a data point.
        num_classes: K, for ``config.conditional`` (ignored otherwise).
        net: a user factory's D (``config.arch`` names the factory), already built; None: build it.
        bounded: whether the data lie in [0, 1], for the check of a factory's pair built here.
    """

    def __init__(self, config: ModelConfig, data_shape: Shape, num_classes: int | None = None,
                 net: nn.Module | None = None, bounded: bool = True) -> None:
        super().__init__()
        self.config, self.data_shape = config, tuple(data_shape)
        k = _classes(config, num_classes)
        self.num_classes = k or None
        if is_factory(config.arch):  # never conditional (ModelConfig refuses it)
            self.net = net if net is not None else plugin_pair(config, data_shape, bounded)[1]
            return
        build_net = _maxout_discriminator if config.arch == "mlp" else _conv_discriminator
        self.net = build_net(config, data_shape, k)
        self._label_at = next(i for i, m in enumerate(self.net) if any(True for _ in m.parameters()))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """(N, C, H, W) data, and (N,) class indices for a conditional D -> (N,) logits."""
        if not self.num_classes:
            return self.net(x).reshape(-1)
        h = x
        for i, layer in enumerate(self.net):
            if i == self._label_at:
                c = one_hot(labels, self.num_classes, h)  # (N, K)
                if h.ndim == 4:  # conv: K constant channels, (N, C + K, H, W)
                    c = c[:, :, None, None].expand(-1, -1, *h.shape[2:])
                h = torch.cat([h, c], dim=1)  # mlp: (N, C*H*W + K)
            h = layer(h)
        return h.view(-1)

    @torch.no_grad()
    def apply_max_norm(self) -> None:
        """Clip each unit's incoming weight vector to L2 norm ``d_max_norm`` (pylearn2's max_col_norm)."""
        limit = self.config.d_max_norm
        if limit is None:
            return
        for module in self.modules():
            if isinstance(module, nn.Linear):
                module.weight.renorm_(2, 0, limit)  # rows of (out, in) are the units' weight vectors


def _mlp_generator(c: ModelConfig, shape: Shape, classes: int = 0) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = c.noise_dim + classes  # noise (and the one-hot class) enter the bottom layer only
    for hidden in c.g_hidden:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers += [nn.Linear(width, math.prod(shape))]
    net = nn.Sequential(*layers)
    if c.init == "paper":
        _uniform_init(net, 0.05)  # pylearn2 config: irange 0.05, zero biases
    return net


def _maxout_discriminator(c: ModelConfig, shape: Shape, classes: int = 0) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten(), nn.Dropout(c.d_input_dropout)]
    width = math.prod(shape) + classes  # the flat image and the one-hot class
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
            f"{height}x{width}; set data.resize (e.g. 32), or use model.arch: mlp for other shapes and for point sets"
        )
    return layers, side


def _conv_generator(c: ModelConfig, shape: Shape, classes: int = 0) -> nn.Sequential:
    layers, base = _conv_layers(shape)
    top = c.conv_width * 2 ** (layers - 1)  # channels at the base side, halved per up layer

    def up(cin: int, cout: int) -> list[nn.Module]:  # doubles height and width
        return [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    hidden: list[nn.Module] = []
    for i in range(layers - 1):
        hidden += up(top >> i, top >> (i + 1))  # -> (N, top / 2^(i+1), 2^(i+1) base, ...)
    return nn.Sequential(
        nn.Linear(c.noise_dim + classes, top * base * base, bias=False),
        nn.Unflatten(1, (top, base, base)),  # (N, noise + K) -> (N, top, base, base)
        nn.BatchNorm2d(top),
        nn.ReLU(),
        *hidden,  # -> (N, conv_width, H/2, W/2)
        nn.ConvTranspose2d(c.conv_width, shape[0], 4, 2, 1),  # -> (N, C, H, W)
        nn.Flatten(),
    )


def _conv_discriminator(c: ModelConfig, shape: Shape, classes: int = 0) -> nn.Sequential:
    layers, base = _conv_layers(shape)
    convs: list[nn.Module] = []
    channels = shape[0] + classes  # the image's channels and K one-hot class planes
    for i in range(layers):
        convs += [nn.Conv2d(channels, c.conv_width << i, 4, 2, 1), nn.LeakyReLU(0.2)]  # halves H and W
        channels = c.conv_width << i
    for _ in range(c.d_extra_convs):  # keeps the side: more of D's depth where a digit's strokes meet
        convs += [nn.Conv2d(channels, channels, 3, 1, 1), nn.LeakyReLU(0.2)]
    return nn.Sequential(
        nn.Dropout(c.d_input_dropout),
        *convs,  # -> (N, conv_width * 2^(layers-1), base, base)
        nn.Flatten(),
        nn.Dropout(c.d_hidden_dropout),
        nn.Linear(channels * base * base, 1),
    )


# --------------------------------------------------------------------------------------------
# A user's pair: model.arch "package.module:factory".

PROBE_BATCH = 2  # noise vectors a factory's pair is checked on


def _said(e: BaseException) -> str:
    """An exception as a short clause for a one-sentence message."""
    text = str(e).strip().splitlines()
    return f"{e.__class__.__name__}: {text[0]}" if text else e.__class__.__name__


def resolve_factory(arch: str) -> Callable[..., Any]:
    """The callable ``"package.module:factory"`` names (the part after ':' may be dotted: ``Class.method``).

    Raises:
        ConfigError: the module cannot be imported, has no such attribute, or it is not callable.
    """
    module_name, _, attribute = arch.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ConfigError(
            f"model.arch {arch!r}: cannot import {module_name!r} ({_said(e)}); run from the directory that holds it "
            "or add that directory to PYTHONPATH"
        ) from None
    except Exception as e:  # noqa: BLE001 - the user's module raised while importing: still their input
        raise ConfigError(f"model.arch {arch!r}: importing {module_name!r} failed ({_said(e)})") from None
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"model.arch {arch!r}: {module_name!r} has no {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"model.arch {arch!r} names an object of type {type(target).__name__}, not a callable that returns (G, D)")
    return target


def plugin_pair(config: ModelConfig, data_shape: Shape, bounded: bool = True) -> tuple[nn.Module, nn.Module]:
    """Call the factory ``config.arch`` names for (G, D), and check them on a probe batch.

    The probe runs in eval mode, without gradients, on noise from its own generator, inside a fork
    of torch's random state: building the pair draws exactly what the factory draws.

    Raises:
        ConfigError: the factory cannot be found, fails, or returns something other than two
            modules where G maps (N, noise_dim) noise to N data points of ``data_shape`` (values in
            [0, 1] for images) and D maps those to N finite logits.
    """
    arch, shape, noise_dim = config.arch, tuple(data_shape), config.noise_dim
    factory = resolve_factory(arch)
    try:
        made = factory(shape, noise_dim)
    except Exception as e:  # noqa: BLE001 - the user's code: one sentence that names what it raised
        raise ConfigError(f"model.arch {arch!r} failed for data of shape {shape} and noise_dim {noise_dim} ({_said(e)})") from None
    if not (isinstance(made, (tuple, list)) and len(made) == 2 and all(isinstance(m, nn.Module) for m in made)):
        got = type(made).__name__ if not isinstance(made, (tuple, list)) else f"a {len(made)}-item {type(made).__name__} of " + ", ".join(type(m).__name__ for m in made)
        raise ConfigError(f"model.arch {arch!r} must return a pair (G, D) of torch.nn.Module, got {got}")
    g, d = made
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        _probe(arch, g, d, shape, noise_dim, bounded)
    return g, d


def _probe(arch: str, g: nn.Module, d: nn.Module, shape: Shape, noise_dim: int, bounded: bool) -> None:
    modes = g.training, d.training
    g.eval(), d.eval()
    try:
        z = torch.rand(PROBE_BATCH, noise_dim, generator=torch.Generator().manual_seed(0)) * 2 - 1
        try:
            x = g(z)
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"model.arch {arch!r}: its G fails on noise of shape {tuple(z.shape)} ({_said(e)})") from None
        if not isinstance(x, torch.Tensor) or tuple(x.shape) not in ((PROBE_BATCH, *shape), (PROBE_BATCH, math.prod(shape))):
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ConfigError(f"model.arch {arch!r}: its G maps noise {tuple(z.shape)} to {got}, but the data need {(PROBE_BATCH, *shape)}")
        if not x.dtype.is_floating_point or not bool(torch.isfinite(x).all()):
            raise ConfigError(f"model.arch {arch!r}: its G returns {x.dtype} values that are not all finite numbers")
        if bounded and (float(x.min()) < 0 or float(x.max()) > 1):
            raise ConfigError(
                f"model.arch {arch!r}: its G returns values in [{float(x.min()):.3g}, {float(x.max()):.3g}], but the images "
                "lie in [0, 1]; end G in a sigmoid (not tanh)"
            )
        try:
            logits = d(x.reshape(PROBE_BATCH, *shape))
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"model.arch {arch!r}: its D fails on images of shape {(PROBE_BATCH, *shape)} ({_said(e)})") from None
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) not in ((PROBE_BATCH,), (PROBE_BATCH, 1)):
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ConfigError(f"model.arch {arch!r}: its D maps {(PROBE_BATCH, *shape)} images to {got}; it must give one logit per image")
        if not logits.dtype.is_floating_point or not bool(torch.isfinite(logits).all()):
            raise ConfigError(f"model.arch {arch!r}: its D returns logits that are not all finite numbers")
    finally:
        g.train(modes[0])
        d.train(modes[1])


def build_pair(config: ModelConfig, data_shape: Shape, bounded: bool = True,
               num_classes: int | None = None) -> tuple[Generator, Discriminator]:
    """G and D for ``config``: the built-in pair of ``config.arch``, or the pair its factory makes.

    Built in this order (G, then D), so a seed gives the same networks whichever builds them.

    Raises:
        ConfigError: the architecture does not fit the data (a conv pair on a shape it cannot
            halve), or a factory that cannot be used (see :func:`plugin_pair`).
    """
    if is_factory(config.arch):
        g, d = plugin_pair(config, data_shape, bounded)
        return Generator(config, data_shape, bounded, num_classes, net=g), Discriminator(config, data_shape, num_classes, net=d)
    return Generator(config, data_shape, bounded, num_classes), Discriminator(config, data_shape, num_classes)


# --------------------------------------------------------------------------------------------
# Sampling and the generator file (what `raygan.sample` and `raygan.evaluate` read).

GENERATOR_FORMAT = "raygan-generator/1"
DISCRIMINATOR_FORMAT = "raygan-discriminator/1"


def class_grid_labels(n: int, num_classes: int) -> torch.Tensor:
    """Labels for ``n`` conditional samples spread evenly over the classes, in grid order.

    Sample j asks for class (j // K) mod K: runs of K samples per class, cycling, so each class
    gets n / K samples (within one) and the first K * K samples, shown K per row, make a grid
    with one row per class (best/samples.png's first 100 on a 10-class set).

    Returns:
        (n,) int64 class indices.
    """
    return (torch.arange(n) // num_classes) % num_classes


def check_labels(generator: Generator, labels: Any, n: int) -> torch.Tensor | None:
    """The labels to condition ``n`` samples on, checked against the generator: a (n,) int64 tensor, or None.

    Args:
        generator: the network (its ``num_classes`` is None when it is unconditional).
        labels: class indices (a sequence, array or tensor of n integers), or None: for a
            conditional G, :func:`class_grid_labels` (every class equally often), for an
            unconditional one, none.
        n: number of samples.

    Raises:
        LabelError: labels for an unconditional generator, a class outside 0..K-1, or not n of them.
    """
    k = generator.num_classes
    if labels is None:
        return None if k is None else class_grid_labels(n, k)
    if k is None:
        raise LabelError("this generator is unconditional (trained without model.conditional), so it takes no class labels")
    y = torch.as_tensor(labels)
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.ndim != 1 or len(y) != n:
        raise LabelError(f"labels must be {n} integer class indices, got a {y.dtype} tensor of shape {tuple(y.shape)}")
    bad = y[(y < 0) | (y >= k)]
    if len(bad):
        raise LabelError(f"class {int(bad[0])} is not one of this generator's {k} classes (0 to {k - 1})")
    return y.to(torch.int64)


# The default conv G's 10,000 samples on a CPU: 0.84 s at 250 a pass against 1.21 s at 1,000 on one
# thread, 0.44 against 0.62 s on two (experiments/benchmarks/bench_generate.py).
CPU_FORWARD_BATCH = 250


@torch.no_grad()
def generate(
    generator: Generator, n: int, seed: int = 0, batch_size: int = 1000, labels: Any = None
) -> torch.Tensor:
    """Draw ``n`` samples G(z) (or G(z | c)), z ~ p_z, on the generator's device, in eval mode.

    Args:
        generator: the network; its config names the prior.
        n: number of samples.
        seed: seeds the noise, so the same seed gives the same samples.
        batch_size: samples per forward pass (bounds memory).
        labels: for a conditional G, the class of each sample ((n,) integers); None: every class
            equally often, in :func:`class_grid_labels`' order (one row per class in a K-wide grid).
            Must be None for an unconditional G.

    Returns:
        A float32 tensor (n, C, H, W).

    Raises:
        LabelError: labels an unconditional G cannot take, or classes the G does not have.
    """
    y = check_labels(generator, labels, n)
    device = next(generator.parameters()).device
    y = None if y is None else y.to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    # The noise is drawn batch_size at a time (the draws fix the samples); on a CPU the forward
    # passes take CPU_FORWARD_BATCH of them at a time, whose activations stay in cache.
    step = min(batch_size, CPU_FORWARD_BATCH) if device.type == "cpu" else batch_size
    was_training = generator.training
    generator.eval()
    try:
        out = []
        for i in range(0, n, batch_size):
            z = sample_noise(generator.config.prior, min(batch_size, n - i), generator.config.noise_dim, gen)
            c = None if y is None else y[i : i + batch_size]
            out += [generator(z[j : j + step], None if c is None else c[j : j + step]) for j in range(0, len(z), step)]
    finally:
        generator.train(was_training)
    return torch.cat(out) if out else torch.empty(0, *generator.data_shape, device=device)


def generator_state(generator: Generator, discriminator: Discriminator | None = None) -> dict[str, Any]:
    """Everything needed to rebuild ``generator`` elsewhere: weights, sizes, data shape, output kind, class count;
    and, where given, the discriminator trained beside it (what :mod:`raygan.refine` corrects samples with)."""
    state = {
        "format": GENERATOR_FORMAT,
        "model": to_dict(generator.config),
        "data_shape": list(generator.data_shape),
        "bounded": generator.bounded,
        "state_dict": {k: v.detach().cpu() for k, v in generator.state_dict().items()},
    }
    if generator.num_classes is not None:  # unconditional files stay exactly as they were
        state["num_classes"] = generator.num_classes
    if discriminator is not None:
        state["discriminator"] = discriminator_state(discriminator)
    return state


def discriminator_state(discriminator: Discriminator) -> dict[str, Any]:
    """A discriminator's weights, sizes, data shape and class count, as tensors and plain values."""
    state = {
        "format": DISCRIMINATOR_FORMAT,
        "model": to_dict(discriminator.config),
        "data_shape": list(discriminator.data_shape),
        "state_dict": {k: v.detach().cpu() for k, v in discriminator.state_dict().items()},
    }
    if discriminator.num_classes is not None:
        state["num_classes"] = discriminator.num_classes
    return state


def discriminator_from_state(state: Any, source: str, bounded: bool = True) -> Discriminator:
    """Rebuild a discriminator, on the CPU and in eval mode, from a :func:`discriminator_state` dict
    (``bounded``: its generator's, which a user factory's pair is checked against).

    Raises:
        CheckpointError: ``state`` is not a raygan discriminator's, or is damaged.
    """
    if not isinstance(state, dict) or state.get("format") != DISCRIMINATOR_FORMAT:
        raise CheckpointError(f"{source} is not a raygan discriminator (expected format {DISCRIMINATOR_FORMAT})")
    try:
        model = build(ModelConfig, saved_section("model", state["model"]), "model")
        discriminator = Discriminator(model, tuple(state["data_shape"]), state.get("num_classes"), bounded=bounded)
        discriminator.load_state_dict(state["state_dict"])
    except (KeyError, TypeError, RuntimeError, ConfigError) as e:
        raise CheckpointError(f"{source} is damaged ({e.__class__.__name__})") from None
    return discriminator.eval()


def save_generator(path: str | Path, generator: Generator, discriminator: Discriminator | None = None) -> None:
    """Write ``generator`` (and the discriminator trained beside it) to ``path`` atomically, as tensors and plain values only."""
    atomic_torch_save(generator_state(generator, discriminator), path)


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
        model = build(ModelConfig, state["model"], "model")
    except (KeyError, TypeError, ConfigError) as e:
        raise CheckpointError(f"{source} holds a damaged generator ({e.__class__.__name__})") from None
    try:
        generator = Generator(model, tuple(state["data_shape"]), state["bounded"], state.get("num_classes"))
    except ConfigError as e:
        if is_factory(model.arch):  # the user's factory is not importable here, or no longer fits
            raise CheckpointError(f"cannot rebuild the generator in {source}: {e}") from None
        raise CheckpointError(f"{source} holds a damaged generator ({e.__class__.__name__})") from None
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{source} holds a damaged generator ({e.__class__.__name__})") from None
    try:
        generator.load_state_dict(state["state_dict"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{source} holds a damaged generator ({e.__class__.__name__})") from None
    return generator.eval()
