"""The running average of G's weights (raygan.averaging) against its closed form, and in the trainer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from raygan.algorithm import GANTrainer
from raygan.averaging import WeightAverage, average_decay
from raygan.config import ModelConfig, TrainConfig, replace
from raygan.models import generate


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def _closed_form(iterates: list[torch.Tensor], beta: float) -> torch.Tensor:
    """sum_s (1 - beta) beta^(t-s) theta_s / (1 - beta^t): the bias-corrected average after t updates."""
    t = len(iterates)
    total = sum((1 - beta) * beta ** (t - s) * theta for s, theta in enumerate(iterates, start=1))
    return total / (1 - beta**t)


@pytest.mark.parametrize("beta", [0.5, 0.9, 0.999])
def test_the_average_is_the_bias_corrected_exponential_average_of_the_iterates(beta):
    torch.manual_seed(0)
    net = _net().double()
    average = WeightAverage(net, beta)
    weights, running_means = [], []
    for _ in range(12):
        with torch.no_grad():
            for p in net.parameters():
                p.normal_()
            net[1].running_mean.normal_()
            net[1].num_batches_tracked += 3
        average.update(net)
        weights.append(net[0].weight.detach().clone())
        running_means.append(net[1].running_mean.clone())
        torch.testing.assert_close(average.module[0].weight, _closed_form(weights, beta))
        torch.testing.assert_close(average.module[1].running_mean, _closed_form(running_means, beta))
        assert torch.equal(average.module[1].num_batches_tracked, net[1].num_batches_tracked)  # counters are copied


def test_the_first_update_takes_the_iterate_itself_and_the_decay_rises_to_beta():
    net = _net()
    average = WeightAverage(net, 0.999)
    with torch.no_grad():
        net[0].weight.add_(1.0)  # trained away from the initial weights the copy was made of
    average.update(net)
    assert torch.equal(average.module[0].weight, net[0].weight)  # no share of the initial weights
    assert average_decay(0.999, 1) == 0.0
    decays = [average_decay(0.999, t) for t in (2, 10, 1_000, 100_000)]
    assert decays == sorted(decays) and decays[0] == pytest.approx(0.999 / 1.999) and decays[-1] == pytest.approx(0.999)


def test_the_average_is_never_trained():
    average = WeightAverage(_net(), 0.9)
    assert not any(p.requires_grad for p in average.module.parameters())
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(_net(), 1.0)


MODEL = ModelConfig(arch="conv", noise_dim=8, conv_width=4)
TRAIN = TrainConfig(batch_size=8, seed=3)


def _trainer(**changes) -> GANTrainer:
    data = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    return GANTrainer(MODEL, replace(TRAIN, **changes), data)


def test_the_trainer_samples_from_the_average_and_trains_the_raw_generator():
    averaged, raw = _trainer(g_average=0.9), _trainer(g_average=0.0)
    assert raw.average is None and raw.sample_generator is raw.generator
    averaged.run(5)
    raw.run(5)
    # the average never feeds back into training: both runs train the same G and D
    for a, b in zip(averaged.generator.state_dict().values(), raw.generator.state_dict().values()):
        assert torch.equal(a, b)
    assert averaged.sample_generator is averaged.average.module and averaged.average.updates == 5
    assert not torch.equal(generate(averaged.sample_generator, 16, seed=0), generate(averaged.generator, 16, seed=0))


def test_a_state_without_an_average_restarts_it_from_the_loaded_generator():
    old = _trainer(g_average=0.0)
    old.run(3)
    new = _trainer(g_average=0.9, seed=11)
    new.load_state_dict(old.state_dict())
    assert new.average.updates == 0
    new.run(1)  # the first update takes the trained G itself
    for a, b in zip(new.average.module.state_dict().values(), new.generator.state_dict().values()):
        assert torch.equal(a, b)


def test_a_prior_change_reaches_the_average_too():
    trainer = _trainer(g_average=0.9)
    trainer.set_hyperparameters(trainer.train, prior="gaussian")
    assert trainer.sample_generator.config.prior == "gaussian"
    trainer.set_hyperparameters(replace(trainer.train, g_average=0.0))
    assert trainer.average is None and trainer.sample_generator is trainer.generator
