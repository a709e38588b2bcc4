"""A user's model, ``model.arch: "package.module:factory"`` (tests/plugin_gan.py): wrapped in the
built-in interfaces, trained and resumed exactly, saved as state dicts and rebuilt from the
factory's name, mixed, searched, and refused in one sentence where the factory is wrong."""

from __future__ import annotations

import io
import math

import pytest
import torch

from raygan import hyperparameters
from raygan.algorithm import GANTrainer
from raygan.config import ConfigError, ExperimentConfig, ModelConfig, SearchConfig, TrainConfig, build
from raygan.errors import CheckpointError
from raygan.mixture import GeneratorMixture, load_samplable
from raygan.models import (
    Discriminator,
    Generator,
    build_pair,
    generate,
    generator_state,
    load_generator,
    save_generator,
)
from tests import plugin_gan

FACTORY = "tests.plugin_gan:pair"
SHAPE = (3, 8, 8)
MODEL = ModelConfig(arch=FACTORY, noise_dim=6)


def _data(n: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


def test_the_factorys_nets_are_wrapped_in_the_built_in_interfaces():
    torch.manual_seed(0)
    g, d = build_pair(MODEL, SHAPE)
    assert isinstance(g, Generator) and isinstance(d, Discriminator)
    assert isinstance(g.net, plugin_gan.Generator) and g.plugin and d.net[1].in_features == math.prod(SHAPE)
    assert g.config == MODEL and g.data_shape == SHAPE and g.num_classes is None and d.num_classes is None
    z = torch.rand(5, 6) * 2 - 1
    x = g(z)
    torch.testing.assert_close(x, g.net(z))  # no sigmoid added: the user's G makes its own range
    logits = d(x)
    assert logits.shape == (5,)
    torch.testing.assert_close(logits, d.net(x).view(-1))  # (N, 1) -> (N,)
    # set_output_bias reaches the user's own method: G starts at the data's mean image.
    mean = _data().mean(dim=0)
    g.set_output_bias(mean)
    torch.testing.assert_close(g.net.body[-1].bias, torch.logit(mean.reshape(-1).clamp(1e-3, 1 - 1e-3)))
    # A net without set_output_bias is left as the factory made it.
    plain = Generator(MODEL, SHAPE, net=torch.nn.Sequential(torch.nn.Linear(6, 192), torch.nn.Sigmoid()))
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    plain.set_output_bias(mean)
    assert all(torch.equal(before[k], v) for k, v in plain.state_dict().items())


def test_max_norm_applies_to_the_users_linear_layers():
    torch.manual_seed(0)
    _, d = build_pair(ModelConfig(arch=FACTORY, noise_dim=6, d_max_norm=0.1), SHAPE)
    norms = [m.weight.detach().norm(dim=1) for m in d.modules() if isinstance(m, torch.nn.Linear)]
    assert max(float(n.max()) for n in norms) > 0.1
    d.apply_max_norm()
    for m, before in zip([m for m in d.modules() if isinstance(m, torch.nn.Linear)], norms):
        after = m.weight.detach().norm(dim=1)
        torch.testing.assert_close(after, before.clamp(max=0.1))  # long rows cut to 0.1, short rows kept


def test_a_plugin_pair_trains_deterministically_and_resumes_exactly():
    train = TrainConfig(batch_size=16, lr_d=1e-3, lr_g=1e-3, seed=3)
    a, b = GANTrainer(MODEL, train, _data()), GANTrainer(MODEL, train, _data())
    first = a.run(10)
    assert first.finite and first == b.run(10)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)  # as a checkpoint holds it
    state = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    assert all(k.startswith("net.") for k in state["generator"])  # state dicts, not pickled modules
    resumed = GANTrainer(MODEL, TrainConfig(batch_size=16, lr_d=1e-3, lr_g=1e-3, seed=99), _data())
    resumed.load_state_dict(state)
    assert a.run(5) == resumed.run(5)
    for net in ("generator", "discriminator"):
        x, y = getattr(a, net).state_dict(), getattr(resumed, net).state_dict()
        assert all(torch.equal(x[k], y[k]) for k in x)
    # Training moved G: after 15 Adam steps its samples differ from a fresh G's.
    fresh = GANTrainer(MODEL, train, _data()).generator
    assert not torch.allclose(generate(a.generator, 8), generate(fresh, 8))


def test_a_d_the_r1_penalty_cannot_differentiate_is_refused_in_one_sentence():
    model = ModelConfig(arch="tests.plugin_gan:once_differentiable_d", noise_dim=6)
    with pytest.raises(ConfigError, match=r"^train.r1 needs D's input gradient to be differentiable in D's weights, and this D's is not \(.+\); set train.r1: 0$"):
        GANTrainer(model, TrainConfig(batch_size=16, r1=4.0), _data())
    assert GANTrainer(model, TrainConfig(batch_size=16, r1=0.0), _data()).run(3).finite  # without R1 it trains


def test_the_generator_file_names_its_factory_and_rebuilds_from_it(tmp_path):
    torch.manual_seed(0)
    g, _ = build_pair(MODEL, SHAPE)
    path = tmp_path / "generator.pt"
    save_generator(path, g)
    state = torch.load(path, weights_only=True)
    assert state["model"]["arch"] == FACTORY and list(state["data_shape"]) == list(SHAPE)
    assert all(isinstance(v, torch.Tensor) for v in state["state_dict"].values())
    again = load_generator(path)
    assert again.plugin and isinstance(again.net, plugin_gan.Generator)
    torch.testing.assert_close(generate(again, 20, seed=4), generate(g, 20, seed=4), rtol=0, atol=0)
    assert not again.training
    # Where the factory cannot be imported, the file cannot be rebuilt: one sentence that says why.
    state["model"]["arch"] = "gone_module:pair"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        load_generator(path)
    message = str(err.value)
    assert "\n" not in message and "cannot rebuild the generator" in message and "gone_module" in message


def test_plugin_generators_mix_and_save(tmp_path):
    torch.manual_seed(0)
    members = [build_pair(MODEL, SHAPE)[0], build_pair(MODEL, SHAPE)[0]]
    mixture = GeneratorMixture(members, [0.25, 0.75])
    mixture.save(tmp_path / "mixture.pt")
    loaded = load_samplable(tmp_path / "mixture.pt")
    torch.testing.assert_close(loaded.sample(30, seed=1), mixture.sample(30, seed=1), rtol=0, atol=0)
    comps = mixture.components(30, seed=1)
    samples = mixture.sample(30, seed=1)
    for j in (0, 1):  # each sample is its own member's G(z)
        assert bool(((samples[comps == j] >= 0) & (samples[comps == j] <= 1)).all())


def test_a_factory_survives_being_a_searched_choice():
    config = build(ExperimentConfig, {"search": {"arch": ["conv", FACTORY]}, "model": {"noise_dim": 6}})
    assert config.search.arch == ("conv", FACTORY)
    trial = hyperparameters.apply(config, {"arch": FACTORY})
    assert trial.model.arch == FACTORY and trial.model.noise_dim == 6
    g, d = build_pair(trial.model, SHAPE)
    assert g.plugin


BAD_FACTORIES = {
    "no such module": ("no_such_module_xyz:pair", "cannot import 'no_such_module_xyz'"),
    "no such factory": ("tests.plugin_gan:nope", "has no 'nope'"),
    "not callable": ("tests.plugin_gan:NOT_CALLABLE", "not a callable"),
    "one net": ("tests.plugin_gan:one_net", "must return a pair (G, D)"),
    "tanh output": ("tests.plugin_gan:tanh_generator", "lie in [0, 1]"),
    "wrong image size": ("tests.plugin_gan:wrong_size", "but the data need"),
    "several logits": ("tests.plugin_gan:many_logits", "one logit per image"),
    "raises": ("tests.plugin_gan:raises", "ValueError: no architecture for (3, 8, 8)"),
}


@pytest.mark.parametrize("arch, fragment", BAD_FACTORIES.values(), ids=BAD_FACTORIES.keys())
def test_a_wrong_factory_is_one_sentence(arch, fragment):
    with pytest.raises(ConfigError) as err:
        build_pair(ModelConfig(arch=arch, noise_dim=6), SHAPE)
    message = str(err.value)
    assert "\n" not in message and ". " not in message and fragment in message and arch in message


def test_building_a_pair_draws_only_what_the_factory_draws():
    """The probe that checks a factory's pair runs on its own noise: a seed gives the same nets
    as calling the factory directly."""
    torch.manual_seed(5)
    g, d = build_pair(MODEL, SHAPE)
    after = torch.rand(1)
    torch.manual_seed(5)
    g0, d0 = plugin_gan.pair(SHAPE, 6)
    assert torch.equal(after, torch.rand(1))
    assert all(torch.equal(a, b) for a, b in zip(g.net.state_dict().values(), g0.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip(d.net.state_dict().values(), d0.state_dict().values()))


@pytest.mark.parametrize("values, fragment", [
    ({"arch": "my model"}, "unknown architecture 'my model'; choose one of: mlp, conv, or a factory"),
    ({"arch": "pkg.mod:"}, "unknown architecture"),
    ({"arch": FACTORY, "conditional": True}, "model.conditional needs a built-in architecture"),
])
def test_model_arch_must_be_built_in_or_a_factory(values, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        build(ModelConfig, values, "model")
    assert SearchConfig(arch=(FACTORY,)).arch == (FACTORY,)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 64, 64)])
def test_the_example_in_experiments_trains_and_round_trips(tmp_path, shape):
    """experiments/plugin_dcgan.py, the README's example: sized from the data, starts at the data's
    mean image, trains, and its generator file rebuilds it."""
    model = ModelConfig(arch="experiments.plugin_dcgan:pair", noise_dim=16)
    data = torch.rand(32, *shape, generator=torch.Generator().manual_seed(1)) * 0.5  # mean 0.25
    trainer = GANTrainer(model, TrainConfig(batch_size=8, seed=0), data)
    start = generate(trainer.generator, 64)
    assert start.shape == (64, *shape)
    assert abs(float(start.mean()) - 0.25) < 0.1  # the output bias at the logit of the mean pixel
    assert trainer.run(3).finite
    save_generator(tmp_path / "g.pt", trainer.generator)
    torch.testing.assert_close(generate(load_generator(tmp_path / "g.pt"), 4, seed=2), generate(trainer.generator, 4, seed=2))
