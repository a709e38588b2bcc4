"""Algorithm 1 of Goodfellow et al. (2014): minibatch stochastic gradient training of a GAN.

    for number of training iterations:
        for k steps:
            sample m noise samples z ~ p_z and m examples x ~ p_data
            update D by ascending  1/m sum [log D(x) + log(1 - D(G(z)))]
        sample m noise samples z ~ p_z
        update G by descending 1/m sum log(1 - D(G(z)))        (minimax, Eq. 1)
                 or ascending  1/m sum log D(G(z))              (non-saturating, Section 3)

The paper's updates are SGD with momentum; Algorithm 1 allows any gradient-based rule, and
``train.optimizer`` picks momentum SGD or Adam (whose beta1 is the momentum). Both follow the
schedules of the paper's released configs: the momentum ramped linearly over epochs, the
learning rates decayed exponentially per iteration. The losses are computed on D's logits,
using log sigmoid(l) = -softplus(-l) and log(1 - sigmoid(l)) = -softplus(l), so they stay
finite when D saturates.

A conditional pair (``model.conditional``, the paper's Section 7) plays the same game on
D(x | c) and G(z | c): a real minibatch keeps each image's own label, and the labels of a fake
minibatch are drawn from the training labels (by index, so they follow the training split's
class shares).

All randomness (minibatch indices, noise, fake labels, dropout masks) comes from one random stream owned by
the :class:`GANTrainer`, saved in its state dict, so a resumed run continues identically.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from raygan.averaging import WeightAverage
from raygan.config import ConfigError, ModelConfig, TrainConfig
from raygan.models import build_pair
from raygan.priors import sample_noise


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """-(mean log D(x) + mean log(1 - D(G(z)))) / 2: D descends this, i.e. ascends Eq. 1's value.

    The factor 1/2 is the released code's: its D cost is the mean of the cost on the real and
    on the generated half of the batch, so a learning rate moves D half as far as on the sum.
    log 2 at the fixed point D = 1/2.
    """
    return 0.5 * (F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean())


def r1_penalty(real_logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al., 2018, Eq. 9 without gamma/2): mean over the minibatch of |grad_x logit D(x)|^2 at real x.

    ``real`` must require grad and ``real_logits`` be computed from it; the graph is kept so that
    the penalty's own gradient reaches D's weights.
    """
    (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


def check_r1(discriminator: torch.nn.Module, real: torch.Tensor, labels: torch.Tensor | None = None) -> None:
    """Differentiate the R1 penalty of a few real points once, so a D it cannot go through (a
    user's, say) is refused in one sentence rather than failing mid-run or, worse, training
    without it. Eval mode, no random number drawn, no weight or gradient touched.

    Raises:
        ConfigError: the penalty's gradient fails, or reaches none of D's weights (a backward that
            detaches, as once-differentiable kernels do, makes R1 a silent no-op).
    """
    was_training, said = discriminator.training, "no weight of D reaches it"
    x = real.detach().clone().requires_grad_(True)
    discriminator.eval()
    try:
        penalty = r1_penalty(discriminator(x, labels), x)
        weights = [p for p in discriminator.parameters() if p.requires_grad]
        reaches = any(g is not None for g in torch.autograd.grad(penalty, weights, allow_unused=True))
    except RuntimeError as e:
        reaches, said = False, (str(e).strip().splitlines() or [type(e).__name__])[0]
    finally:
        discriminator.train(was_training)
    if not reaches:
        raise ConfigError(f"train.r1 needs D's input gradient to be differentiable in D's weights, and this D's is not "
                          f"({said}); set train.r1: 0")


def generator_loss(fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    """The quantity G descends.

    Args:
        fake_logits: D's logits on G(z).
        kind: "minimax" descends mean log(1 - D(G(z))) (Eq. 1); "non-saturating" descends
            -mean log D(G(z)) (Section 3: the same fixed point, strong gradients early on).
    """
    if kind == "minimax":
        return -F.softplus(fake_logits).mean()  # log(1 - D) = -softplus(l)
    if kind == "non-saturating":
        return F.softplus(-fake_logits).mean()  # -log D = softplus(-l)
    raise ValueError(f"unknown generator loss {kind!r}")


def _optimizer(net: torch.nn.Module, train: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """The learning rule of ``train.optimizer`` for ``net``; the schedule sets lr and momentum every iteration."""
    if train.optimizer == "adam":
        return torch.optim.Adam(net.parameters(), lr=lr, betas=(train.momentum, train.beta2))
    return torch.optim.SGD(net.parameters(), lr=lr, momentum=train.momentum)


@dataclass(frozen=True)
class IterationMetrics:
    """Means over the iterations of one :meth:`GANTrainer.run` call.

    d_loss: -(log D(x) + log(1 - D(G(z)))) / 2, averaged over the k D-steps (log 2 at the fixed point).
    g_loss: the generator loss of the G-step.
    d_real: mean D(x); d_fake: mean D(G(z)) (both 1/2 at the fixed point, Proposition 1 with p_g = p_data).
    """

    d_loss: float
    g_loss: float
    d_real: float
    d_fake: float
    iterations: int

    @property
    def finite(self) -> bool:
        """False when training diverged (a NaN or infinite loss)."""
        return all(math.isfinite(v) for v in (self.d_loss, self.g_loss, self.d_real, self.d_fake))


class GANTrainer:
    """One G/D pair trained by Algorithm 1 on a data tensor that already lives on the device.

    Args:
        model: sizes, architecture and the noise prior.
        train: k, minibatch size, learning rule, learning rates, momentum and schedules, G loss, seed.
        data: the training set, float32 (N, C, H, W), on the device to train on.
        bounded: whether data points lie in [0, 1] (sigmoid output for G; with
            ``model.g_marginal_bias`` G's output bias starts at logit(mean training pixel)).
        labels: for ``model.conditional``: the training labels, int64 (N,), aligned with
            ``data``, on its device; ignored by an unconditional pair.
        num_classes: K for a conditional pair (default: the largest training label + 1).

    Raises:
        ConfigError: a conditional model without labels.
    """

    def __init__(
        self,
        model: ModelConfig,
        train: TrainConfig,
        data: torch.Tensor,
        bounded: bool = True,
        labels: torch.Tensor | None = None,
        num_classes: int | None = None,
    ) -> None:
        self.data = data
        self.device = data.device
        self.labels = labels.to(self.device, torch.int64) if model.conditional and labels is not None else None
        if model.conditional and (self.labels is None or self.labels.shape != data.shape[:1]):
            raise ConfigError("model.conditional needs the training labels, one per training point (a labelled data set)")
        if self.labels is not None and num_classes is None:
            num_classes = int(self.labels.max()) + 1
        self.train = train
        shape = tuple(data.shape[1:])
        with self._forked_rng():
            # The same seed gives the same networks and stream. Seed only the generators forked
            # here: torch.manual_seed would also reseed every CUDA device's global generator
            # (lazily when CUDA is not initialised yet), which the fork cannot undo.
            torch.default_generator.manual_seed(train.seed)
            if self.device.type == "cuda":
                self._stream().manual_seed(train.seed)
            generator, discriminator = build_pair(model, shape, bounded, num_classes)  # built-in or the user's factory
            self.generator, self.discriminator = generator.to(self.device), discriminator.to(self.device)
            if bounded and model.g_marginal_bias:
                self.generator.set_output_bias(data.mean(dim=0))  # the released code's init_bias_target_marginals
            self.discriminator.apply_max_norm()
            self._rng_state = self._capture_rng()
        if train.r1 > 0:
            check_r1(self.discriminator, data[:2], None if self.labels is None else self.labels[:2])
        self.opt_d = _optimizer(self.discriminator, train, train.lr_d)
        self.opt_g = _optimizer(self.generator, train, train.lr_g)
        self.average = WeightAverage(self.generator, train.g_average) if train.g_average else None
        self.iteration = 0

    # ---- hyperparameters -----------------------------------------------------------------

    @property
    def model(self) -> ModelConfig:
        return self.generator.config

    @property
    def sample_generator(self) -> torch.nn.Module:
        """The G whose samples are this pair's answer: the running average of G's weights
        (``train.g_average``), or G itself where there is none. Never trained directly."""
        return self.generator if self.average is None else self.average.module

    def set_hyperparameters(self, train: TrainConfig, prior: str | None = None) -> None:
        """Apply new settings in place (a PBT mutation): networks and optimiser states are kept.

        Raises:
            ValueError: ``train.optimizer`` differs: the learning rule's state belongs to its weights.
        """
        if train.optimizer != self.train.optimizer:
            raise ValueError(f"the learning rule is fixed for a trainer ({self.train.optimizer}), got {train.optimizer}")
        if train.g_average != self.train.g_average:  # a new decay starts a new average
            self.average = WeightAverage(self.generator, train.g_average) if train.g_average else None
        self.train = train
        if prior is not None and prior != self.model.prior:
            from raygan.config import replace  # local: only a prior change needs it

            new_model = replace(self.model, prior=prior)
            self.generator.config = self.discriminator.config = new_model
            if self.average is not None:
                self.average.module.config = new_model

    @property
    def epoch(self) -> float:
        """Epochs done so far: iterations times minibatch size over the training set's size."""
        return self.iteration * self.train.batch_size / self.data.shape[0]

    def _schedule(self) -> tuple[float, float, float]:
        """(lr_d, lr_g, momentum) at the current iteration, per the paper's configs."""
        t, c = self.iteration, self.train
        decay = c.lr_decay ** (-t)  # pylearn2's ExponentialDecay, per minibatch
        # pylearn2's MomentumAdjustor steps once per epoch from epoch 1; this ramp moves every iteration from epoch 0.
        ramp = min(1.0, self.epoch / c.momentum_ramp_epochs) if c.momentum_ramp_epochs else 1.0
        momentum = c.momentum + ramp * (c.final_momentum - c.momentum)
        return max(c.lr_d * decay, c.min_lr), max(c.lr_g * decay, c.min_lr), momentum

    def _apply_schedule(self) -> None:
        lr_d, lr_g, momentum = self._schedule()
        for opt, lr in ((self.opt_d, lr_d), (self.opt_g, lr_g)):
            for group in opt.param_groups:
                group["lr"] = lr
                if self.train.optimizer == "adam":
                    group["betas"] = (momentum, self.train.beta2)  # beta1 is Adam's momentum
                else:
                    group["momentum"] = momentum

    def current_hyperparameters(self) -> dict[str, float]:
        """The values in force now (after schedules): for logging, so PBT's mutations show as steps."""
        lr_d, lr_g, momentum = self._schedule()
        return {"k": self.train.k, "lr_d": lr_d, "lr_g": lr_g, "momentum": momentum}

    # ---- the random stream ---------------------------------------------------------------

    def _capture_rng(self) -> dict[str, torch.Tensor]:
        state = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _forked_rng(self) -> contextlib.AbstractContextManager:
        # Dropout draws from torch's global generator; forking it keeps trainers (and whatever
        # else runs in the process) from disturbing each other's streams.
        devices = [self.device] if self.device.type == "cuda" else []
        return torch.random.fork_rng(devices=devices)

    @contextlib.contextmanager
    def _rng(self) -> Iterator[None]:
        """Run with this trainer's own random stream, leaving the process's global RNG untouched."""
        with self._forked_rng():
            torch.set_rng_state(self._rng_state["cpu"])
            if self.device.type == "cuda":
                torch.cuda.set_rng_state(self._rng_state["cuda"], self.device)
            yield

    def reseed(self, seed: int) -> None:
        """Give the trainer a fresh random stream (minibatches, noise, dropout masks) from ``seed``.

        For a copy of another trainer (PBT's exploit): drawing the donor's stream would make it
        no new sample. Weights, optimiser states and the iteration counter are kept.
        """
        with self._forked_rng():
            torch.default_generator.manual_seed(seed)
            if self.device.type == "cuda":
                self._stream().manual_seed(seed)
            self._rng_state = self._capture_rng()

    def _stream(self) -> torch.Generator:
        """The generator that noise and minibatch indices are drawn from (the device's default one)."""
        if self.device.type == "cuda":
            return torch.cuda.default_generators[self.device.index or 0]
        return torch.default_generator

    # ---- Algorithm 1 -----------------------------------------------------------------------

    def _index(self, gen: torch.Generator) -> torch.Tensor:
        return torch.randint(0, self.data.shape[0], (self.train.batch_size,), generator=gen, device=self.device)

    def _minibatch(self, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """m training points (m, C, H, W), drawn by index from the on-device tensor, with their own labels."""
        index = self._index(gen)
        return self.data[index], None if self.labels is None else self.labels[index]

    def _fake_labels(self, gen: torch.Generator) -> torch.Tensor | None:
        """Classes for a fake minibatch: the labels of m training points drawn at random (the training class shares)."""
        return None if self.labels is None else self.labels[self._index(gen)]

    def _noise(self, gen: torch.Generator) -> torch.Tensor:
        return sample_noise(self.model.prior, self.train.batch_size, self.model.noise_dim, gen)

    @staticmethod
    def _join(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
        return None if a is None else torch.cat([a, b])

    def _iteration(self, gen: torch.Generator, sums: torch.Tensor) -> None:
        """One iteration of Algorithm 1; adds (d_loss, g_loss, d_real, d_fake) to ``sums``."""
        G, D, m, k = self.generator, self.discriminator, self.train.batch_size, self.train.k
        self._apply_schedule()

        r1_now = self.train.r1 > 0 and self.iteration % self.train.r1_every == 0
        for step in range(k):  # k steps on D, each with a fresh data and a fresh noise minibatch
            x, c = self._minibatch(gen)
            c_fake = self._fake_labels(gen)
            with torch.no_grad():
                fake = G(self._noise(gen), c_fake)
            penalise = r1_now and step == 0
            if penalise:
                x.requires_grad_(True)  # a fresh gathered copy: its gradient is the R1 term's
            logits = D(torch.cat([x, fake]), self._join(c, c_fake))  # one pass over real and fake: (2m,)
            real_logits, fake_logits = logits[:m], logits[m:]
            d_loss = discriminator_loss(real_logits, fake_logits)
            d_objective = d_loss  # the logged loss stays the criterion; the penalty only shapes D's step
            if penalise:  # lazy R1: gamma/2 times the penalty, weighted by its interval
                d_objective = d_loss + self.train.r1 * self.train.r1_every / 2 * r1_penalty(real_logits, x)
            self.opt_d.zero_grad(set_to_none=True)
            d_objective.backward()
            self.opt_d.step()
            D.apply_max_norm()
            with torch.no_grad():
                sums[0] += d_loss.detach() / k
                sums[2] += torch.sigmoid(real_logits).mean() / k
                sums[3] += torch.sigmoid(fake_logits).mean() / k

        # one step on G, with a fresh noise minibatch (the released code steps D and G at once, on one draw)
        c_fake = self._fake_labels(gen)
        g_loss = generator_loss(D(G(self._noise(gen), c_fake), c_fake), self.train.g_loss)
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward(inputs=list(G.parameters()))  # D's gradients are not needed here
        self.opt_g.step()
        if self.average is not None:
            self.average.update(G)
        sums[1] += g_loss.detach()
        self.iteration += 1

    def run(self, iterations: int) -> IterationMetrics:
        """Run ``iterations`` iterations of Algorithm 1 and return their mean metrics.

        Metrics accumulate on the device and are read back once, so a GPU is not synchronised
        every iteration.
        """
        sums = torch.zeros(4, device=self.device)
        self.generator.train()
        self.discriminator.train()
        with self._rng():
            gen = self._stream()
            for _ in range(iterations):
                self._iteration(gen, sums)
            self._rng_state = self._capture_rng()
        d_loss, g_loss, d_real, d_fake = (sums / max(iterations, 1)).tolist()
        return IterationMetrics(d_loss, g_loss, d_real, d_fake, iterations)

    # ---- state -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Both nets, both optimisers, the iteration counter and the random stream.

        Holds tensors and plain values only, so it loads with ``torch.load(weights_only=True)``.
        The hyperparameters are not in it: they belong to the trial's config (PBT changes them).
        """
        return {
            "generator": self.generator.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "iteration": self.iteration,
            "rng": {k: v.clone() for k, v in self._rng_state.items()},
            "g_average": None if self.average is None else self.average.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (possibly another trial's: PBT's exploit)."""
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.iteration = int(state["iteration"])
        if self.average is not None:
            if state.get("g_average") is not None:
                self.average.load_state_dict(state["g_average"])
            else:  # a state saved without an average (train.g_average was 0, or an older checkpoint)
                self.average.restart_from(self.generator)
        rng = dict(state["rng"])
        if self.device.type == "cuda" and "cuda" not in rng:
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        self._rng_state = {k: v for k, v in rng.items() if k == "cpu" or self.device.type == "cuda"}
