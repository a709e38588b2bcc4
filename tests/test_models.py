"""The paper's networks (Section 5), the DCGAN-style conv pair, and the generator file."""

from __future__ import annotations

import math
import os

import pytest
import torch
from torch import nn

from raygan.config import ConfigError, ModelConfig
from raygan.errors import CheckpointError
from raygan.models import (
    Discriminator,
    Generator,
    Maxout,
    discriminator_from_state,
    discriminator_state,
    generate,
    generator_state,
    load_generator,
    save_generator,
)

MNIST = (1, 28, 28)
CIFAR = (3, 32, 32)
PAPER = ModelConfig(
    arch="mlp", noise_dim=100, prior="uniform", g_hidden=(1200, 1200), d_hidden=(240, 240), d_pieces=5,
    d_input_dropout=0.2, d_hidden_dropout=0.5,
)


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def test_paper_generator_sizes_and_output():
    """G: 100 -> 1200 -> 1200 -> 784, ReLU hidden units, sigmoid output in [0, 1], noise into the bottom layer only."""
    torch.manual_seed(0)
    g = Generator(PAPER, MNIST)
    assert [(l.in_features, l.out_features) for l in _linears(g)] == [(100, 1200), (1200, 1200), (1200, 784)]
    assert [type(m) for m in g.net] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert sum(p.numel() for p in g.parameters()) == 100 * 1200 + 1200 + 1200 * 1200 + 1200 + 1200 * 784 + 784
    z = torch.rand(50, 100) * 2 - 1
    x = g(z)
    assert x.shape == (50, *MNIST) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1
    torch.testing.assert_close(x, torch.sigmoid(g.net(z)).view(50, *MNIST))  # sigmoid of the last layer
    # pylearn2's init: weights uniform in [-0.05, 0.05], zero biases
    for l in _linears(g):
        assert l.weight.abs().max() <= 0.05 and torch.all(l.bias == 0)


def test_paper_discriminator_sizes_dropout_and_logit():
    """D: maxout 240 units x 5 pieces, twice; dropout 0.2 on the input and 0.5 on hidden layers; one logit."""
    torch.manual_seed(0)
    d = Discriminator(PAPER, MNIST)
    maxouts = [m for m in d.modules() if isinstance(m, Maxout)]
    assert [(m.linear.in_features, m.out_features, m.pieces) for m in maxouts] == [(784, 240, 5), (240, 240, 5)]
    assert [(m.in_features, m.out_features) for m in _linears(d)] == [(784, 1200), (240, 1200), (240, 1)]
    assert [m.p for m in d.modules() if isinstance(m, nn.Dropout)] == [0.2, 0.5, 0.5]
    # order: dropout on the input, then each maxout layer followed by its dropout, then the logit
    kinds = [type(m).__name__ for m in d.net]
    assert kinds == ["Flatten", "Dropout", "Maxout", "Dropout", "Maxout", "Dropout", "Linear"]
    x = torch.rand(20, *MNIST)
    d.eval()
    logits = d(x)
    assert logits.shape == (20,)
    assert torch.equal(d(x), logits)  # eval: dropout off, deterministic
    d.train()
    assert not torch.equal(d(x), d(x))  # train: dropout on
    # D starts near 1/2 everywhere (weights within +-0.005)
    d.eval()
    assert torch.sigmoid(logits).sub(0.5).abs().max() < 0.01


def test_maxout_is_the_max_over_pieces():
    torch.manual_seed(0)
    layer = Maxout(6, 4, 3)
    x = torch.randn(10, 6)
    pieces = layer.linear(x).view(10, 4, 3)
    expected = torch.stack([pieces[:, u, :].max(dim=1).values for u in range(4)], dim=1)
    torch.testing.assert_close(layer(x), expected)


def test_sizes_are_configurable():
    c = ModelConfig(arch="mlp", noise_dim=7, g_hidden=(5, 6, 9), d_hidden=(4,), d_pieces=2)
    g, d = Generator(c, (2, 3, 3)), Discriminator(c, (2, 3, 3))
    assert [(l.in_features, l.out_features) for l in _linears(g)] == [(7, 5), (5, 6), (6, 9), (9, 18)]
    assert [(l.in_features, l.out_features) for l in _linears(d)] == [(18, 8), (4, 1)]
    assert g(torch.zeros(3, 7)).shape == (3, 2, 3, 3)
    assert d(torch.zeros(3, 2, 3, 3)).shape == (3,)


def test_unbounded_generator_has_a_linear_output():
    torch.manual_seed(0)
    c = ModelConfig(arch="mlp", noise_dim=2, g_hidden=(8,))
    g = Generator(c, (1, 1, 1), bounded=False)
    with torch.no_grad():
        _linears(g)[-1].bias.fill_(5.0)
    z = torch.rand(10, 2)
    torch.testing.assert_close(g(z), g.net(z).view(10, 1, 1, 1))
    assert g(z).min() > 1  # not squashed into [0, 1]


@pytest.mark.parametrize(
    "shape, g_channels, d_channels",
    [
        # 28x28: base side 7, two stride-2 layers; D 32 -> 64 channels, G 64 -> 32 -> 1
        (MNIST, [(64, 7), (32, 14), (1, 28)], [(32, 14), (64, 7)]),
        # 32x32: base side 4, three stride-2 layers; D 32 -> 64 -> 128, G 128 -> 64 -> 32 -> 3
        (CIFAR, [(128, 4), (64, 8), (32, 16), (3, 32)], [(32, 16), (64, 8), (128, 4)]),
        # Sized from a user's data: 28, 32 and 64 pixels, 1 or 3 channels
        ((3, 28, 28), [(64, 7), (32, 14), (3, 28)], [(32, 14), (64, 7)]),
        ((1, 32, 32), [(128, 4), (64, 8), (32, 16), (1, 32)], [(32, 16), (64, 8), (128, 4)]),
        # 64x64: base side 4, four stride-2 layers; D 32 -> 64 -> 128 -> 256
        ((3, 64, 64), [(256, 4), (128, 8), (64, 16), (32, 32), (3, 64)], [(32, 32), (64, 16), (128, 8), (256, 4)]),
        ((1, 64, 64), [(256, 4), (128, 8), (64, 16), (32, 32), (1, 64)], [(32, 32), (64, 16), (128, 8), (256, 4)]),
    ],
)
def test_conv_pair_layer_shapes(shape, g_channels, d_channels):
    """The DCGAN-style pair with conv_width 32: one stride-2 layer per halving of the side down
    to 4-7 pixels, channels doubled per layer inwards; batch norm in G (not after its output
    layer), LeakyReLU(0.2) in D, no batch norm in D (the plain DCGAN D: no extra convolutions)."""
    torch.manual_seed(0)
    c = ModelConfig(arch="conv", noise_dim=100, conv_width=32, d_extra_convs=0)
    g, d = Generator(c, shape), Discriminator(c, shape)
    g_shapes: list[tuple[int, int]] = []
    d_shapes: list[tuple[int, int]] = []
    hooks = [m.register_forward_hook(lambda mod, i, out: g_shapes.append((out.shape[1], out.shape[2])))
             for m in g.modules() if isinstance(m, (nn.Unflatten, nn.ConvTranspose2d))]
    hooks += [m.register_forward_hook(lambda mod, i, out: d_shapes.append((out.shape[1], out.shape[2])))
              for m in d.modules() if isinstance(m, nn.Conv2d)]
    x = g(torch.randn(3, 100))
    assert x.shape == (3, *shape) and d(x).shape == (3,)
    assert g_shapes == g_channels and d_shapes == d_channels
    assert [m.num_features for m in g.modules() if isinstance(m, nn.BatchNorm2d)] == [ch for ch, _ in g_channels[:-1]]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in d.modules())
    assert [m.negative_slope for m in d.modules() if isinstance(m, nn.LeakyReLU)] == [0.2] * len(d_channels)
    for h in hooks:
        h.remove()


@pytest.mark.parametrize("extra", [0, 1, 2])
def test_conv_discriminator_extra_convolutions_keep_its_smallest_side(extra):
    """model.d_extra_convs adds 3x3 stride-1 convolutions (LeakyReLU 0.2) after the stride-2 ones,
    at D's smallest side and widest channel count; the logit layer's input size is unchanged."""
    torch.manual_seed(0)
    d = Discriminator(ModelConfig(arch="conv", conv_width=32, d_extra_convs=extra), MNIST)
    shapes: list[tuple[int, int, int]] = []
    for m in d.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(lambda mod, i, out: shapes.append((mod.kernel_size[0], out.shape[1], out.shape[2])))
    assert d(torch.rand(3, *MNIST)).shape == (3,)
    assert shapes == [(4, 32, 14), (4, 64, 7)] + [(3, 64, 7)] * extra
    assert [m.negative_slope for m in d.modules() if isinstance(m, nn.LeakyReLU)] == [0.2] * (2 + extra)
    assert _linears(d)[-1].in_features == 64 * 7 * 7


def test_a_discriminator_file_written_before_extra_convolutions_still_loads():
    """A D saved before model.d_extra_convs existed (its config has no such key) was the plain
    DCGAN D, and is rebuilt as one, not as today's default with an extra layer."""
    torch.manual_seed(0)
    d = Discriminator(ModelConfig(arch="conv", conv_width=8, d_extra_convs=0), MNIST).eval()
    state = discriminator_state(d)
    del state["model"]["d_extra_convs"]
    x = torch.rand(4, *MNIST)
    assert torch.equal(discriminator_from_state(state, "an old file")(x), d(x))
    assert ModelConfig().d_extra_convs == 1  # what a config that does not name it gets


def test_conv_pair_on_cifar_shapes():
    """The conv pair on (3, 32, 32): G maps noise to images in [0, 1], D gives one logit each."""
    torch.manual_seed(0)
    c = ModelConfig(arch="conv", noise_dim=16, conv_width=8)
    g, d = Generator(c, CIFAR), Discriminator(c, CIFAR)
    x = g(torch.rand(4, 16) * 2 - 1)
    assert x.shape == (4, *CIFAR)
    assert x.min() >= 0 and x.max() <= 1
    assert d(x).shape == (4,)
    assert any(isinstance(m, nn.ConvTranspose2d) for m in g.modules())
    assert any(isinstance(m, nn.Conv2d) for m in d.modules())
    # (x.sum()).backward() reaches every parameter of both nets
    (d(g(torch.rand(4, 16))).sum()).backward()
    for p in [*g.parameters(), *d.parameters()]:
        assert p.grad is not None


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 32, 24), (1, 6, 6), (1, 7, 7)])
def test_conv_arch_refuses_points_and_images_it_cannot_halve(shape):
    """Point sets (1x1), non-square images and sides without one halving down to >= 4 pixels get one sentence."""
    c = ModelConfig(arch="conv")
    message = r"^the conv architecture needs square images with an even side of at least 8 pixels, got \d+x\d+; set data.resize \(e.g. 32\), or use model.arch: mlp"
    with pytest.raises(ConfigError, match=message):
        Generator(c, shape)
    with pytest.raises(ConfigError, match=message):
        Discriminator(c, shape)


def test_max_norm_clips_rows_and_leaves_short_rows_alone():
    c = ModelConfig(arch="mlp", noise_dim=2, d_hidden=(3,), d_pieces=2, d_input_dropout=0.0, d_hidden_dropout=0.0, d_max_norm=1.0)
    d = Discriminator(c, (1, 2, 2))
    with torch.no_grad():
        for l in _linears(d):
            l.weight.normal_().mul_(3)
        l.weight[0, :] = 0.1  # a short row (the output layer's only row) stays as it is
        short = l.weight.clone()
    d.apply_max_norm()
    for l in _linears(d):
        assert torch.all(l.weight.norm(dim=1) <= 1.0 + 1e-6)
    torch.testing.assert_close(_linears(d)[-1].weight, short)
    # a clipped row keeps its direction
    row = _linears(d)[0].weight[0]
    assert row.norm().item() == pytest.approx(1.0, abs=1e-5)


def test_max_norm_off_changes_nothing():
    d = Discriminator(ModelConfig(arch="mlp", d_max_norm=None, d_hidden=(4,)), (1, 2, 2))
    with torch.no_grad():
        for l in _linears(d):
            l.weight.fill_(10.0)
    before = {k: v.clone() for k, v in d.state_dict().items()}
    d.apply_max_norm()
    for k, v in d.state_dict().items():
        assert torch.equal(v, before[k])


# ---- generate() and the generator file ------------------------------------------------------


def _small_generator(seed: int = 0, **changes) -> Generator:
    torch.manual_seed(seed)
    return Generator(ModelConfig(arch="mlp", noise_dim=6, g_hidden=(12,), **changes), (1, 4, 4))


def test_generate_is_deterministic_for_a_seed_and_varies_across_seeds():
    g = _small_generator()
    a, b, c = generate(g, 25, seed=3, batch_size=7), generate(g, 25, seed=3, batch_size=7), generate(g, 25, seed=4)
    assert a.shape == (25, 1, 4, 4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert generate(g, 0).shape == (0, 1, 4, 4)


@pytest.mark.parametrize("prior", ["uniform", "gaussian"])
def test_generate_samples_do_not_depend_on_the_forward_pass_size(monkeypatch, prior):
    """The noise is drawn batch_size at a time and fixes the samples; the CPU's smaller forward
    passes (models.CPU_FORWARD_BATCH) change the arithmetic's blocking, not the samples."""
    import raygan.models

    torch.manual_seed(0)
    g = Generator(ModelConfig(arch="conv", noise_dim=4, conv_width=2, prior=prior, conditional=True), (1, 8, 8), num_classes=3)
    labels = torch.arange(23) % 3
    monkeypatch.setattr(raygan.models, "CPU_FORWARD_BATCH", 10**6)
    whole = generate(g, 23, seed=5, batch_size=10, labels=labels)
    monkeypatch.setattr(raygan.models, "CPU_FORWARD_BATCH", 3)
    pieces = generate(g, 23, seed=5, batch_size=10, labels=labels)
    assert torch.allclose(whole, pieces, atol=1e-6)
    assert not torch.equal(pieces[:10], pieces[10:20])


def test_generate_uses_eval_mode_and_restores_training_mode():
    torch.manual_seed(0)
    g = Generator(ModelConfig(arch="conv", noise_dim=4, conv_width=2), (1, 8, 8))  # BatchNorm: mode matters
    g.train()
    running = g.net[2].running_mean.clone()
    generate(g, 10, seed=0)
    assert g.training
    assert torch.equal(g.net[2].running_mean, running)  # eval mode: BatchNorm statistics untouched
    g.eval()
    generate(g, 10, seed=0)
    assert not g.training


def test_generate_leaves_the_global_rng_alone():
    g = _small_generator()
    before = torch.get_rng_state()
    generate(g, 10, seed=0)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("prior", ["uniform", "gaussian", "truncated-normal", "hypersphere"])
@pytest.mark.parametrize("bounded", [True, False])
def test_save_load_generator_round_trip(tmp_path, prior, bounded):
    torch.manual_seed(0)
    g = Generator(ModelConfig(arch="mlp", noise_dim=6, g_hidden=(12, 5), prior=prior), (2, 3, 3), bounded=bounded)
    path = tmp_path / "sub" / "generator.pt"
    save_generator(path, g)
    loaded = load_generator(path)
    assert loaded.config == g.config and loaded.data_shape == g.data_shape and loaded.bounded == bounded
    assert not loaded.training
    assert torch.equal(generate(loaded, 30, seed=5), generate(g, 30, seed=5))
    for (k, v), (k2, v2) in zip(g.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    # the file is plain tensors and values: weights_only loading needs nothing else
    state = torch.load(path, weights_only=True)
    assert state["format"] == "raygan-generator/1"


def test_load_generator_round_trip_conv(tmp_path):
    torch.manual_seed(0)
    g = Generator(ModelConfig(arch="conv", noise_dim=5, conv_width=3), CIFAR)
    g.eval()
    save_generator(tmp_path / "g.pt", g)
    assert torch.equal(generate(load_generator(tmp_path / "g.pt"), 6, seed=1), generate(g, 6, seed=1))


def _write(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _damaged(tmp_path, name: str, **changes) -> str:
    state = generator_state(_small_generator())
    state.update(changes)
    torch.save(state, tmp_path / name)
    return str(tmp_path / name)


def test_load_generator_rejects_what_is_not_a_generator(tmp_path):
    """Every bad file is one CheckpointError sentence, never a raw traceback from torch or pickle."""
    state = generator_state(_small_generator())
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other_dict.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    torch.save({**state, "format": "raygan-generator/0"}, tmp_path / "old_format.pt")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({**state, "extra": Evil()}, tmp_path / "code.pt")
    bad = [
        tmp_path / "missing.pt",
        tmp_path,  # a directory
        _write(tmp_path / "random.pt", os.urandom(4096)),
        _write(tmp_path / "text.pt", b"hello, this is not a checkpoint\n"),
        _write(tmp_path / "empty.pt", b""),
        _write(tmp_path / "e.pt", b"e"),
        _write(tmp_path / "j.pt", b"j"),
        tmp_path / "other_dict.pt",
        tmp_path / "list.pt",
        tmp_path / "old_format.pt",
        tmp_path / "code.pt",  # weights_only=True refuses to run code
        _damaged(tmp_path, "shapes.pt", state_dict={k: torch.zeros(1) for k in state["state_dict"]}),
        _damaged(tmp_path, "no_weights.pt", state_dict={}),
        _damaged(tmp_path, "bad_model.pt", model={"noise_dim": "six"}),
        _damaged(tmp_path, "unknown_setting.pt", model={"width": 3}),
        _damaged(tmp_path, "model_not_a_dict.pt", model=7),
        _damaged(tmp_path, "bad_shape.pt", data_shape=5),
        _damaged(tmp_path, "wrong_shape.pt", data_shape=[2, 4, 4]),
    ]
    state_no_bounded = dict(state)
    del state_no_bounded["bounded"]
    torch.save(state_no_bounded, tmp_path / "no_bounded.pt")
    bad.append(tmp_path / "no_bounded.pt")
    for path in bad:
        with pytest.raises(CheckpointError) as info:
            load_generator(path)
        message = str(info.value)
        assert "\n" not in message and os.path.basename(path) in message  # one sentence naming the file


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_load_generator_random_bytes_never_escape(tmp_path):
    """500 random byte strings and pickle-like texts: each is a CheckpointError."""
    import random

    rng = random.Random(0)
    alphabet = b"abcdefghijklmnopqrstuvwxyz .,\n()[]{}KNIPq0123456789\x80\x02"
    for i in range(500):
        n = rng.randint(1, 64)
        data = bytes(rng.randrange(256) for _ in range(n)) if i % 2 else bytes(rng.choice(alphabet) for _ in range(n))
        with pytest.raises(CheckpointError):
            load_generator(_write(tmp_path / "junk.pt", data))


def test_load_generator_to_device_and_mode(tmp_path):
    g = _small_generator()
    save_generator(tmp_path / "g.pt", g)
    loaded = load_generator(tmp_path / "g.pt", device="cpu")
    assert next(loaded.parameters()).device.type == "cpu" and not loaded.training
    with torch.no_grad():
        assert not math.isnan(float(loaded(torch.zeros(1, 6)).sum()))
