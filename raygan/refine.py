"""Sampling corrected by the discriminator: the paper's Proposition 1 put to work.

For a fixed G the optimal discriminator is D*(x) = p_data(x) / (p_data(x) + p_g(x)) (Prop. 1), so

    p_data(x) / p_g(x) = D*(x) / (1 - D*(x)) = exp(logit D*(x)).

Every trial trains a D beside its G. Read as a density-ratio estimate, it can move G's samples
toward the data with no more training of G:

- **Discriminator rejection sampling** (DRS; Azadi et al., ICLR 2019): accept a proposal
  x ~ p_g with probability exp(l(x) - M), l the log ratio and M its maximum, which draws exactly
  from p_data where l is exact and bounded by M (rejection sampling with envelope e^M p_g). The
  paper's practical form, sigmoid(F(x) - gamma) with
  F(x) = l(x) - M - log(1 - exp(l(x) - M - eps)), equals exp(l - M) at gamma = 0 (up to eps);
  a gamma above 0 trades exactness for acceptance (gamma is a quantile of F over a burn-in).
- **Metropolis-Hastings GAN** (MH-GAN; Turner et al., ICML 2019): an independent MH chain with
  G as the proposal: from x, move to x' ~ p_g with probability min(1, r(x') / r(x)),
  r = p_data / p_g; its stationary distribution is p_data. Each chain starts at a proposal (not at
  a real image, so no held-out image can come out) and its state after ``steps`` moves is the sample.

A trained D is neither optimal nor calibrated, so its logit is calibrated first, on held-out real
images against fresh samples, never the test split: ``platt`` fits log ratio = a * logit + b by
logistic regression (Platt 1999; what MH-GAN found necessary), and ``finetune`` first trains a
copy of D for a few hundred steps against the frozen G on the training split (as DRS does), then
fits a and b the same way.

Samples are made slot by slot: each of the n requested samples has a slot, with its class (a
conditional G) and its component (a mixture, whose members each bring their own G and D: each
member's samples are corrected toward p_data by its own D, so the mixture of corrected members
is too).

**Class by class** (``refine.by_class``, an unconditional G of a labelled data set). For any
labelling y(x), p_data(x) / p_g(x) = [p_data(y) / p_g(y)] * [p_data(x | y) / p_g(x | y)]. The
first factor is a ratio of two class shares, which counting reads far better than D's logit does
(experiments/refine_classes.py: a trained D ranks images by how well they are drawn, hardly by
how often their class is drawn); within a class, D*'s ratio is the second factor up to a constant.
So each slot gets a class drawn from the training labels' shares, its proposals are G's samples
that the domain classifier puts in that class (rejection on the class: draws from p_g(x | y)),
and DRS or MH corrects them by D within the class. With an exact D* and classifier this still
targets p_data exactly; with a trained D, the class shares come out as the data's.

The labelling can be finer than the classes (``refine.confident``): a cell per class and
whether the classifier is sure of it (its top probability at least the threshold). On held-out
real digits it is unsure of ~5 %; of G's samples, of ~30 %: the 4 that could be a 9, the 7 that
could be a 1. The same factorisation with the cells' shares (the class's share in the training
labels times its unsure share on the validation split, never the classifier's own training
images, of which it is overconfident) puts as many of those in the samples as the data holds.

Everything draws from one seeded ``torch.Generator``: the same seed, the same samples. No Ray here.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raygan.algorithm import discriminator_loss
from raygan.config import CALIBRATIONS, REFINE_METHODS, RefineConfig
from raygan.errors import UserError
from raygan.models import Discriminator, Generator, check_labels
from raygan.priors import sample_noise

EPS = 1e-6  # DRS's epsilon: keeps log(1 - exp(l - M - eps)) finite at the maximum
PLATT_L2 = 1e-4  # a weak ridge on (a, b): finite when D separates the calibration set perfectly
NEWTON_STEPS = 50
BATCH = 1000  # proposals per forward pass
SPARE_BYTES = 256 * 2**20  # class by class: G's draws of cells no open slot wanted, kept for later calls
MIN_PILOT_HITS = 5  # class by class: a class (cell) G draws fewer times in the pilot is left out,
PILOT_MARGIN = 2.0  # as is one G draws at under this many times its share over refine.max_proposals
UNSPLIT_BELOW = 0.2  # by class and confidence: a class one of whose two cells G draws at under this
# times the cell's data share is refined whole (its cells merged): filling that cell would cost more
# than five draws of G per slot before DRS rejects any (Fashion-MNIST's sure shirts: 98 s, not 22 s)

# propose(labels or None, count, gen) -> (count, C, H, W);  log_ratio(x, labels or None) -> (count,)
Propose = Callable[[torch.Tensor | None, int, torch.Generator], torch.Tensor]
LogRatio = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


class RefineError(UserError):
    """A refinement that cannot be made: no discriminator saved, or acceptance too low to finish."""


# --------------------------------------------------------------------------------------------
# Calibration: D's logit as a log density ratio.


def platt(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> tuple[float, float]:
    """Fit (a, b) so that sigmoid(a * logit + b) is the probability that an image is real.

    Logistic regression of real (1) against fake (0) on one feature, by Newton's method (the
    log-loss is convex in (a, b)); the classes are weighted equally whatever their counts, so
    a * logit + b estimates log p_data(x) / p_g(x) (the log odds at equal priors).

    Args:
        real_logits: D's logits on held-out real images, (R,).
        fake_logits: D's logits on fresh generated samples, (F,).

    Returns:
        (a, b).
    """
    x = torch.cat([real_logits, fake_logits]).double().cpu()
    y = torch.cat([torch.ones(len(real_logits)), torch.zeros(len(fake_logits))]).double()
    w = torch.cat([torch.full((len(real_logits),), 0.5 / len(real_logits)),
                   torch.full((len(fake_logits),), 0.5 / len(fake_logits))]).double()
    X = torch.stack([x, torch.ones_like(x)], dim=1)  # (R + F, 2)
    theta = torch.tensor([1.0, 0.0], dtype=torch.float64)  # start at D's own reading
    for _ in range(NEWTON_STEPS):
        p = torch.sigmoid(X @ theta)
        grad = X.T @ (w * (p - y)) + PLATT_L2 * theta
        hess = (X.T * (w * p * (1 - p))) @ X + PLATT_L2 * torch.eye(2, dtype=torch.float64)
        step = torch.linalg.solve(hess, grad)
        theta = theta - step
        if float(step.abs().max()) < 1e-10:
            break
    return float(theta[0]), float(theta[1])


@dataclass
class Calibrated:
    """A discriminator read as a log density ratio: log p_data(x) / p_g(x) ~ scale * logit(x) + shift.

    Attributes:
        discriminator: D (or its fine-tuned copy), in eval mode.
        scale, shift: the Platt fit's a and b.
        method: the calibration that made it (platt or finetune).
    """

    discriminator: Discriminator
    scale: float
    shift: float
    method: str

    @torch.no_grad()
    def log_ratio(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """(N, C, H, W) points (and their classes, conditional D) -> (N,) estimated log p_data/p_g."""
        out = [self.discriminator(x[i : i + BATCH], None if labels is None else labels[i : i + BATCH])
               for i in range(0, len(x), BATCH)]
        return self.scale * torch.cat(out) + self.shift

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "scale": self.scale, "shift": self.shift}


@torch.no_grad()
def _logits(d: Discriminator, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    return torch.cat([d(x[i : i + BATCH], None if labels is None else labels[i : i + BATCH])
                      for i in range(0, len(x), BATCH)])


def _finetune(generator: Generator, discriminator: Discriminator, train: torch.Tensor,
              train_labels: torch.Tensor | None, steps: int, lr: float, batch_size: int,
              gen: torch.Generator) -> Discriminator:
    """A copy of D trained ``steps`` minibatch steps against the frozen G (in eval mode, the G that
    is sampled), on the training split: Algorithm 1's D step without the G step."""
    d = copy.deepcopy(discriminator).train()
    optimizer = torch.optim.Adam(d.parameters(), lr=lr, betas=(0.5, 0.999))
    with torch.random.fork_rng(devices=[]):  # dropout masks, if D has dropout, from this stream only
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
        for _ in range(steps):
            index = torch.randint(0, len(train), (batch_size,), generator=gen)
            real = train[index]
            c = None if train_labels is None else train_labels[index]
            with torch.no_grad():
                fake = generator(sample_noise(generator.config.prior, batch_size, generator.config.noise_dim, gen), c)
            logits = d(torch.cat([real, fake]), None if c is None else torch.cat([c, c]))
            loss = discriminator_loss(logits[:batch_size], logits[batch_size:])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            d.apply_max_norm()
    return d.eval()


def calibrate(
    generator: Generator,
    discriminator: Discriminator,
    valid: Any,
    config: RefineConfig,
    *,
    seed: int = 0,
    train: Any = None,
    valid_labels: Any = None,
    train_labels: Any = None,
    batch_size: int = 64,
) -> Calibrated:
    """Calibrate D's logit as the log ratio p_data / p_g of this G, on held-out real images.

    Args:
        generator: G (sampled in eval mode, as refinement samples it).
        discriminator: the D trained beside it.
        valid: held-out real images (N, C, H, W): the validation split, never the test split.
        config: ``calibration`` (platt, or finetune then platt), ``finetune_steps``, ``finetune_lr``.
        seed: seeds the fresh samples and the fine-tuning.
        train: the training split (finetune only).
        valid_labels, train_labels: their classes, for a conditional pair.
        batch_size: the fine-tuning minibatch.

    Returns:
        The :class:`Calibrated` ratio.

    Raises:
        RefineError: finetune without the training split, or a conditional pair without labels.
    """
    if config.calibration not in CALIBRATIONS:
        raise RefineError(f"unknown calibration {config.calibration!r}; choose one of: {', '.join(CALIBRATIONS)}")
    generator = generator.eval()
    gen = torch.Generator().manual_seed(seed)
    valid = torch.as_tensor(np.asarray(valid), dtype=torch.float32)
    conditional = generator.num_classes is not None
    v_labels = _labels(valid_labels, conditional, len(valid), "the validation split")
    d = discriminator.eval()
    if config.calibration == "finetune":
        if train is None:
            raise RefineError("calibration finetune trains D on the training split; it was not given")
        t = torch.as_tensor(np.asarray(train), dtype=torch.float32)
        t_labels = _labels(train_labels, conditional, len(t), "the training split")
        d = _finetune(generator, discriminator, t, t_labels, config.finetune_steps, config.finetune_lr, batch_size, gen)
    fake = _propose_from(generator)(v_labels, len(valid), gen)  # as many fakes as real images, same classes
    scale, shift = platt(_logits(d, valid, v_labels), _logits(d, fake, v_labels))
    return Calibrated(d, scale, shift, config.calibration)


def _labels(labels: Any, conditional: bool, n: int, what: str) -> torch.Tensor | None:
    if not conditional:
        return None
    if labels is None:
        raise RefineError(f"a conditional pair is calibrated on labelled images, and {what} has no labels")
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    if y.shape != (n,):
        raise RefineError(f"{what} has {n} images but {tuple(y.shape)} labels")
    return y


# --------------------------------------------------------------------------------------------
# The two samplers, on proposals and a log ratio (pure: the tests give them exact densities).


@dataclass(frozen=True)
class Refined:
    """Refined samples and what they cost.

    Attributes:
        samples: (n, C, H, W), slot i's sample at row i.
        proposals: G samples drawn, the burn-in included.
        accepted: DRS: samples accepted (n); MH: moves accepted over every chain.
        acceptance: DRS: n over the proposals after the burn-in; MH: the share of proposed moves accepted.
        seconds: wall time, calibration excluded.
        by_class: refined class by class (:class:`ClassShares`).
        classes_left_out: by class: the data's classes G drew too rarely to fill (under the data's share
            over ``refine.max_proposals`` in a burn-in of G's samples), left out of the slots' classes.
        classes_unsplit: by class and confidence: the classes refined whole, G drawing one of their
            cells too rarely (``UNSPLIT_BELOW``).
    """

    samples: torch.Tensor
    method: str
    proposals: int  # G's samples drawn (class by class: every draw, those of other classes included)
    accepted: int
    acceptance: float
    seconds: float
    by_class: bool = False
    classes_left_out: list[int] = field(default_factory=list)
    classes_unsplit: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "proposals": self.proposals, "acceptance": self.acceptance, "seconds": self.seconds,
                "by_class": self.by_class, "classes_left_out": self.classes_left_out, "classes_unsplit": self.classes_unsplit}


def _drs_f(l: torch.Tensor, m: torch.Tensor | float) -> torch.Tensor:
    """DRS's F(x) = l - M - log(1 - exp(l - M - eps)) (Azadi et al., Eq. 8, before the gamma shift)."""
    d = (l - m).clamp(max=0.0)
    return d - torch.log1p(-torch.exp(d - EPS))


def rejection_sample(
    propose: Propose,
    log_ratio: LogRatio,
    slot_labels: torch.Tensor | None,
    n: int,
    gen: torch.Generator,
    *,
    gamma_quantile: float | None,
    burn_in: int,
    max_proposals: int,
) -> tuple[torch.Tensor, int, int, int]:
    """Discriminator rejection sampling of ``n`` slots (Azadi et al. 2019, Algorithm 1).

    The burn-in's proposals estimate, class by class (one class where slots have none), M (the
    largest log ratio seen, raised whenever a larger one appears) and gamma (the ``gamma_quantile``
    of F over the burn-in; None: 0, exact rejection). Each round proposes for the open slots, as
    many as their class's acceptance in the burn-in says they need (a slot's proposals are of its
    class), and fills them in order with the accepted proposals of their class.

    Returns:
        (samples (n, ...), proposals drawn after the burn-in, of which accepted, proposals in the burn-in).

    Raises:
        RefineError: more than ``max_proposals`` proposals per sample were needed.
    """
    burn_labels = _cycle(slot_labels, burn_in)
    l_burn = log_ratio(propose(burn_labels, burn_in, gen), burn_labels)
    # One envelope per class: within class y the target is p_data(x | y), whose ratio to p_g(x | y)
    # is l(x) up to a constant of y, so M, gamma and the acceptance rate are read class by class.
    # With exact rejection (gamma 0) the samples' law is the one a single M gives, but a class whose
    # ratios all lie low is no longer held to another class's envelope and thrown away; with gamma,
    # each class keeps the same share of its own proposals' best.
    groups = _groups(burn_labels, burn_in)
    size = 1 + int(groups.max() if slot_labels is None else max(groups.max(), slot_labels.max()))
    m = torch.full((size,), -math.inf, dtype=l_burn.dtype).scatter_reduce(0, groups, l_burn, "amax")
    gamma = torch.zeros(size, dtype=torch.float64)
    rate = torch.ones(size, dtype=torch.float64)

    def read_burn_in(cells: list[int]) -> None:  # gamma and the acceptance rate of each class at its M now
        for c in cells:
            f_c = _drs_f(l_burn[groups == c], m[c]).double()
            if not len(f_c):  # a class the burn-in did not propose for keeps gamma 0 and rate 1
                continue
            if gamma_quantile is not None:
                gamma[c] = torch.quantile(f_c, gamma_quantile)
            rate[c] = max(float(torch.sigmoid(f_c - gamma[c]).mean()), 1.0 / max_proposals)

    read_burn_in(groups.unique().tolist())
    samples: torch.Tensor | None = None
    open_slots = torch.arange(n)
    drawn = accepted = 0
    while len(open_slots):
        if drawn >= max_proposals * n:
            raise RefineError(f"DRS accepted only {n - len(open_slots)} of {n} samples in {drawn} proposals "
                              f"(refine.max_proposals = {max_proposals} per sample); lower refine.gamma_quantile")
        # each open slot gets the proposals its class's acceptance says it needs (at least one)
        open_groups = _groups(None if slot_labels is None else slot_labels[open_slots], len(open_slots))
        per_slot = (1.1 / rate[open_groups]).ceil().long()
        if int(per_slot.sum()) < 64:
            per_slot *= math.ceil(64 / int(per_slot.sum()))
        target = open_slots.repeat_interleave(per_slot)[: 20 * BATCH]  # proposal i has slot target[i]'s class
        count = len(target)
        labels = None if slot_labels is None else slot_labels[target]
        x = propose(labels, count, gen)
        l = log_ratio(x, labels)
        g = _groups(labels, count)
        raised = m.scatter_reduce(0, g, l.to(m.dtype), "amax")
        # A larger M lowers every F of its class; gamma is read again at the new M, so that it stays
        # the burn-in's quantile and the class's acceptance does not collapse after one outlier.
        changed, m = (raised > m).nonzero().view(-1).tolist(), raised
        read_burn_in(changed)
        ok = (torch.rand(count, generator=gen) < torch.sigmoid(_drs_f(l, m[g]) - gamma[g].to(l.dtype))).nonzero().view(-1)
        drawn, accepted = drawn + count, accepted + len(ok)
        if samples is None:
            samples = torch.empty(n, *x.shape[1:], dtype=x.dtype)
        open_slots = _fill(samples, open_slots, slot_labels, x, labels, ok)
    return (samples if samples is not None else torch.empty(0)), drawn, accepted, burn_in


def _groups(labels: torch.Tensor | None, n: int) -> torch.Tensor:
    """Each of ``n`` proposals' class for DRS's per-class envelope: its label, or 0 where there are none."""
    return torch.zeros(n, dtype=torch.int64) if labels is None else labels


def _fill(samples: torch.Tensor, open_slots: torch.Tensor, slot_labels: torch.Tensor | None, x: torch.Tensor,
          x_labels: torch.Tensor | None, candidates: torch.Tensor) -> torch.Tensor:
    """Put the ``candidates`` among the proposals ``x`` into the open slots of their class (any open
    slot where there are no classes), in order; returns the slots still open."""
    for c in [None] if x_labels is None else x_labels[candidates].unique().tolist():
        have = candidates if c is None else candidates[x_labels[candidates] == c]
        want = open_slots if c is None else open_slots[slot_labels[open_slots] == c]
        k = min(len(have), len(want))
        samples[want[:k]] = x[have[:k]]
        open_slots = open_slots[~torch.isin(open_slots, want[:k])]
    return open_slots


def mh_sample(
    propose: Propose,
    log_ratio: LogRatio,
    slot_labels: torch.Tensor | None,
    n: int,
    gen: torch.Generator,
    *,
    steps: int,
) -> tuple[torch.Tensor, int, int]:
    """Independent Metropolis-Hastings with G as the proposal (Turner et al. 2019), one chain per slot.

    A chain starts at a proposal; each of ``steps`` moves proposes x' ~ p_g (of the slot's class)
    and moves with probability min(1, exp(l(x') - l(x))). Its last state is the slot's sample.

    Returns:
        (samples (n, ...), proposals drawn, moves accepted).
    """
    x = propose(slot_labels, n, gen)
    l = log_ratio(x, slot_labels)
    moves = 0
    for _ in range(steps):
        x_new = propose(slot_labels, n, gen)
        l_new = log_ratio(x_new, slot_labels)
        accept = torch.rand(n, generator=gen).log() < (l_new - l).clamp(max=0.0)
        x = torch.where(accept.view(-1, *[1] * (x.ndim - 1)), x_new, x)
        l = torch.where(accept, l_new, l)
        moves += int(accept.sum())
    return x, n * (steps + 1), moves


def _cycle(labels: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """``n`` labels cycling over ``labels`` (the burn-in asks for the slots' classes in their shares)."""
    return None if labels is None else labels.repeat(math.ceil(n / max(1, len(labels))))[:n]


# --------------------------------------------------------------------------------------------
# Generators and mixtures.


def _propose_from(generator: Generator) -> Propose:
    @torch.no_grad()
    def propose(labels: torch.Tensor | None, count: int, gen: torch.Generator) -> torch.Tensor:
        out = []
        for i in range(0, count, BATCH):
            k = min(BATCH, count - i)
            z = sample_noise(generator.config.prior, k, generator.config.noise_dim, gen)
            out.append(generator(z, None if labels is None else labels[i : i + k]))
        return torch.cat(out) if out else torch.empty(0, *generator.data_shape)

    return propose


@dataclass(frozen=True)
class ClassShares:
    """Class-by-class refinement of an unconditional G (see the module's docstring).

    Attributes:
        classify: (N, C, H, W) images -> (N,) int64 cells (the domain classifier's argmax, or a
            finer labelling: cell c is class c % num_classes).
        shares: (cells,) the cells' shares in the data.
        num_classes: the classes (None: one cell per class).
    """

    classify: Callable[[torch.Tensor], torch.Tensor]
    shares: np.ndarray
    num_classes: int | None = None

    def class_of(self, cells: list[int]) -> list[int]:
        """The classes with no cell left among ``cells`` left out (cells of a class are c, c + K, ...)."""
        k = self.num_classes or len(self.shares)
        kept = {c % k for c in range(len(self.shares)) if self.shares[c] > 0 and c not in cells}
        return sorted({c % k for c in cells} - kept)


def class_shares(model: Any, held_out: Any = None, confident: float = 0.0) -> ClassShares:
    """:class:`ClassShares` from a :class:`raygan.quality.QualityModel` (trained on the training split
    only): one cell per class with the training labels' shares, or, with ``confident`` > 0 and
    ``held_out`` real images (the validation split), two per class: the classifier's top probability
    at least ``confident`` (cell c) or below it (cell K + c), the unsure share read on ``held_out``."""
    from raygan import quality

    k, labels = model.num_classes, np.asarray(model.label_histogram, dtype=np.float64)

    def probabilities(x: torch.Tensor) -> torch.Tensor:
        return quality.read(model.classifier, x, BATCH)[1].cpu()

    if not confident or held_out is None:
        return ClassShares(lambda x: probabilities(x).argmax(1), labels)

    def cell(p: torch.Tensor) -> torch.Tensor:
        top = p.max(1)
        return top.indices + k * (top.values < confident).long()

    read = cell(probabilities(torch.as_tensor(held_out))).numpy()
    per_class = np.bincount(read % k, minlength=k)
    unsure = np.bincount(read[read >= k] - k, minlength=k) / np.maximum(per_class, 1)
    return ClassShares(lambda x: cell(probabilities(x)), np.concatenate([labels * (1 - unsure), labels * unsure]), k)


def classes_for(model: Any, held_out: Any, config: RefineConfig) -> ClassShares | None:
    """What refines class by class under ``config``: :func:`class_shares` of the domain classifier
    ``model`` split by ``config.confident`` on ``held_out`` (the validation split); None where
    ``refine.by_class`` is off or there is no classifier."""
    return class_shares(model, held_out, config.confident) if config.by_class and model is not None else None


def _without_classes(log_ratio: LogRatio) -> LogRatio:
    return lambda x, labels: log_ratio(x, None)


class _ProposeInClass:
    """Proposals of the asked classes from an unconditional G: G's samples, each kept for an open
    slot of the class the classifier gives it (draws from p_g(x | y)). ``drawn`` counts every draw."""

    def __init__(self, propose: Propose, classify: Callable[[torch.Tensor], torch.Tensor], max_draws: int,
                 num_classes: int | None = None) -> None:
        self.propose, self.classify, self.max_draws = propose, classify, max_draws
        self.num_classes = num_classes  # cells c, c + K, ... are class c's
        self.piloted = self.asked = self.spent = 0  # the pilot's draws; proposals asked for and draws for them
        # Draws no open slot of their cell wanted, by cell, for later calls: each is still a draw of
        # p_g(x | its cell) that nothing has looked at but the classifier, so it serves as well as a
        # fresh one, and a rare cell's draws no longer throw away the common cells' (up to
        # SPARE_BYTES in all).
        self.spare: dict[int, list[torch.Tensor]] = {}
        self.spare_size: dict[int, int] = {}  # draws kept per cell
        self.cells = 1
        self.to_cell = torch.arange(0)  # cell -> the cell it is drawn as (after _unsplit); empty: itself
        self.unsplit: list[int] = []

    @property
    def drawn(self) -> int:
        return self.piloted + self.spent

    def reachable(self, shares: np.ndarray, pilot: int, gen: torch.Generator) -> tuple[torch.Tensor, list[int]]:
        """The data's class shares over the classes G draws often enough to fill (on ``pilot`` draws,
        at least ``MIN_PILOT_HITS`` times and at a share of at least ``PILOT_MARGIN`` times the data's
        over ``max_draws``, so filling them takes about half the draws allowed), renormalised; and
        the cells left out. Before that, a class one of whose two cells G draws at under
        ``UNSPLIT_BELOW`` times its share is drawn whole (:meth:`_unsplit`); the pilot's draws are
        kept as spares."""
        x = self.propose(None, pilot, gen)
        y = self.classify(x)
        self.piloted, self.cells = self.piloted + pilot, len(shares)
        self.to_cell = torch.arange(len(shares))
        shares, hits = self._unsplit(np.asarray(shares, dtype=np.float64).copy(), np.bincount(y.numpy(), minlength=len(shares)), pilot)
        self._keep_spare(x, self.merge(y))
        keep = (hits >= MIN_PILOT_HITS) & (hits / pilot * self.max_draws >= PILOT_MARGIN * shares)
        if not (keep & (shares > 0)).any():
            raise RefineError("the domain classifier puts none of G's samples in a class of the data; set refine.by_class false")
        target = np.where(keep, shares, 0.0)
        left_out = [c for c in range(len(shares)) if shares[c] > 0 and not keep[c]]
        # a merged class left out is left out with both its cells (ClassShares.class_of reads them)
        return torch.as_tensor(target / target.sum()), left_out + [c + len(shares) // 2 for c in self.unsplit if c in left_out]

    def _unsplit(self, shares: np.ndarray, hits: np.ndarray, pilot: int) -> tuple[np.ndarray, np.ndarray]:
        """Merge the two cells (c, K + c) of each class one of whose cells G draws at under
        ``UNSPLIT_BELOW`` times its data share into cell c (kept in ``to_cell``, the classes in
        ``unsplit``); the cells' shares and pilot hits after that."""
        k = self.num_classes
        if not k or len(shares) != 2 * k:
            return shares, hits
        drawn = hits / pilot
        self.unsplit = [c for c in range(k) if any(shares[t] > 0 and drawn[t] < UNSPLIT_BELOW * shares[t] for t in (c, c + k))]
        for c in self.unsplit:
            self.to_cell[c + k] = c
            shares[c], shares[c + k] = shares[c] + shares[c + k], 0.0
            hits[c], hits[c + k] = hits[c] + hits[c + k], 0
        return shares, hits

    def merge(self, cells: torch.Tensor) -> torch.Tensor:
        return self.to_cell[cells] if len(self.to_cell) else cells

    def __call__(self, labels: torch.Tensor | None, count: int, gen: torch.Generator) -> torch.Tensor:
        assert labels is not None and len(labels) == count
        out: torch.Tensor | None = None
        open_slots, drawn = torch.arange(count), 0
        self.asked += count
        while True:
            out, open_slots = self._serve(out, open_slots, labels)
            if not len(open_slots):
                break
            if self.spent + drawn >= self.max_draws * self.asked:  # the cap over every call so far: a small
                # call's few slots of a rare class borrow from the draws earlier calls did not need
                cell = int(labels[open_slots[0]])
                n_classes = self.num_classes or cell + 1
                missing = f"{cell % n_classes}" + (" (its samples the classifier is unsure of)" if cell >= n_classes else "")
                raise RefineError(f"class {missing} came up too rarely in {self.spent + drawn} of G's samples to fill "
                                  f"{self.asked} proposals (refine.max_proposals = {self.max_draws} per sample); set "
                                  "refine.by_class false")
            k = min(max(2 * len(open_slots), 64), 20 * BATCH)
            x = self.propose(None, k, gen)
            drawn += k
            self._keep_spare(x, self.merge(self.classify(x)), labels[open_slots])
        self.spent += drawn
        return out if out is not None else torch.empty(0)

    def _keep_spare(self, x: torch.Tensor, cells: torch.Tensor, wanted: torch.Tensor | None = None) -> None:
        """Add draws ``x`` of ``cells`` to the spares, as many per cell as fit in its equal part of
        SPARE_BYTES (at least BATCH), plus, for the open slots' cells ``wanted`` (served next), one
        per open slot; the rest are dropped."""
        per_cell = max(BATCH, SPARE_BYTES // max(1, x[0].numel() * x.element_size() * self.cells)) if len(x) else 0
        open_per_cell = torch.zeros(0, dtype=torch.int64) if wanted is None else torch.bincount(wanted)
        for c in cells.unique().tolist():
            room = per_cell + (int(open_per_cell[c]) if c < len(open_per_cell) else 0) - self.spare_size.get(c, 0)
            if room > 0:
                fresh = x[cells == c][:room].clone()  # a copy: no chunk holds the whole draw alive
                self.spare.setdefault(c, []).append(fresh)
                self.spare_size[c] = self.spare_size.get(c, 0) + len(fresh)

    def _serve(self, out: torch.Tensor | None, open_slots: torch.Tensor,
               labels: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Fill open slots from the spares of their cells, oldest first; the output and the slots still open."""
        for c in labels[open_slots].unique().tolist():
            chunks = self.spare.get(c)
            while chunks and len(open_slots):
                have = chunks[0]
                if out is None:
                    out = torch.empty(len(labels), *have.shape[1:], dtype=have.dtype)
                want = open_slots[labels[open_slots] == c]
                if not len(want):
                    break
                k = min(len(have), len(want))
                out[want[:k]] = have[:k]
                self.spare_size[c] -= k
                if k == len(have):
                    chunks.pop(0)
                else:
                    chunks[0] = have[k:]
                open_slots = open_slots[~torch.isin(open_slots, want[:k])]
        return out, open_slots


def refine(
    members: list[Generator],
    ratios: list[Calibrated],
    weights: Any,
    n: int,
    method: str,
    config: RefineConfig,
    *,
    seed: int = 0,
    labels: Any = None,
    classes: ClassShares | None = None,
) -> Refined:
    """``n`` samples of a generator (one member, weight 1) or a mixture, each member's corrected by its own D.

    Args:
        members: the generators (in eval mode).
        ratios: one calibrated D per member.
        weights: the members' weights (a mixture's; [1.0] for one generator).
        n: samples.
        method: "drs" or "mh".
        config: the samplers' settings.
        seed: the same seed, the same samples.
        labels: a conditional model's class per sample (None: every class equally often).
        classes: an unconditional model's classifier and the data's class shares: refine class by
            class (each slot's class drawn from the shares; see the module's docstring). None, or a
            conditional model: no classes.

    Raises:
        RefineError: an unknown method, DRS's proposal cap reached, or a class G (almost) never draws.
    """
    if method not in REFINE_METHODS:
        raise RefineError(f"unknown refinement {method!r}; choose one of: {', '.join(REFINE_METHODS)}")
    start = time.perf_counter()
    y = check_labels(members[0], labels, n)
    gen = torch.Generator().manual_seed(seed)
    w = torch.as_tensor(np.asarray(weights, dtype=np.float64))
    comps = torch.multinomial(w, n, replacement=True, generator=gen) if len(members) > 1 else torch.zeros(n, dtype=torch.int64)
    by_class = classes is not None and y is None
    missing: set[int] = set()
    unsplit: set[int] = set()
    samples = torch.empty(n, *members[0].data_shape)
    proposals = sampling = accepted = 0  # sampling: DRS's proposals after the burn-in
    for j, (g, ratio) in enumerate(zip(members, ratios)):
        where = (comps == j).nonzero().view(-1)
        if not len(where):
            continue
        slot_labels = None if y is None else y[where]
        propose, log_ratio = _propose_from(g.eval()), ratio.log_ratio
        if by_class:  # each slot's class from the data's shares (the first factor of p_data / p_g) picks
            # its proposals; the unconditional D reads no class
            propose = in_class = _ProposeInClass(propose, classes.classify, config.max_proposals, classes.num_classes)
            target, left_out = in_class.reachable(classes.shares, config.burn_in, gen)
            slot_labels = torch.multinomial(target, len(where), replacement=True, generator=gen)
            missing.update(classes.class_of(left_out))
            unsplit.update(in_class.unsplit)
            log_ratio = _without_classes(ratio.log_ratio)
        if method == "drs":
            x, drawn, took, burn = rejection_sample(propose, log_ratio, slot_labels, len(where), gen,
                                                    gamma_quantile=config.gamma_quantile, burn_in=config.burn_in,
                                                    max_proposals=config.max_proposals)
            drawn_here, sampling, accepted = drawn + burn, sampling + drawn, accepted + took
        else:
            x, drawn_here, moves = mh_sample(propose, log_ratio, slot_labels, len(where), gen, steps=config.mh_steps)
            accepted += moves
        proposals += in_class.drawn if by_class else drawn_here
        samples[where] = x
    acceptance = accepted / max(1, sampling if method == "drs" else n * config.mh_steps)
    return Refined(samples, method, proposals, accepted, acceptance, time.perf_counter() - start, by_class, sorted(missing),
                   sorted(unsplit - missing))


# --------------------------------------------------------------------------------------------
# The discriminators a generator or mixture file carries.


@dataclass
class Refinable:
    """A generator or mixture file's members, each with the discriminator trained beside it.

    Attributes:
        members: the generators (one for a generator file).
        discriminators: one D per member.
        weights: the members' weights ([1.0] for a generator file).
    """

    members: list[Generator]
    discriminators: list[Discriminator]
    weights: np.ndarray

    @property
    def num_classes(self) -> int | None:
        return self.members[0].num_classes

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.members[0].data_shape)


def load_refinable(path: str | Path) -> Refinable:
    """A ``generator.pt`` or ``mixture.pt`` with its discriminator(s) (read with ``weights_only=True``).

    Raises:
        CheckpointError: the file is missing, unreadable or not raygan's.
        RefineError: it holds no discriminator (written by an earlier raygan, or saved without one).
    """
    from raygan.mixture import GeneratorMixture, load_pair, load_samplable

    model = load_samplable(path)
    source = repr(str(Path(path).expanduser()))
    if isinstance(model, GeneratorMixture):
        if model.discriminators is None:
            raise RefineError(f"the mixture {source} holds no discriminators to refine with; build it again "
                              "with python -m raygan.mixture from a run of this version of raygan")
        return Refinable(model.members, model.discriminators, model.weights)
    generator, discriminator = load_pair(path)
    if discriminator is None:
        raise RefineError(f"{source} holds no discriminator to refine with; refine a best/generator.pt "
                          "written by this version of raygan.tune")
    return Refinable([generator], [discriminator], np.ones(1))


def calibrate_all(model: Refinable, data: Any, config: RefineConfig, seed: int = 0) -> list[Calibrated]:
    """Each member's D calibrated against its own G (:func:`calibrate`) on ``data``'s validation split
    (and, for finetune, its training split); ``data`` is a :class:`raygan.data.Dataset`."""
    return [calibrate(g, d, data.valid, config, seed=seed + i, train=data.train, valid_labels=data.valid_labels,
                      train_labels=data.train_labels)
            for i, (g, d) in enumerate(zip(model.members, model.discriminators))]


def sample_file(path: str | Path, data: Any, n: int, method: str, config: RefineConfig, *, seed: int = 0,
                labels: Any = None, classes: ClassShares | None = None) -> tuple[Refined, list[Calibrated]]:
    """``n`` refined samples of a ``generator.pt`` or ``mixture.pt``: each member's D calibrated on
    ``data`` (a :class:`raygan.data.Dataset` of the shape it was trained on), then ``method``
    (class by class where ``classes`` is given and the model is unconditional).

    Raises:
        CheckpointError: a missing or foreign file, or one for another data shape.
        RefineError: no discriminator in the file, an unknown method, or DRS's proposal cap.
    """
    from raygan.errors import CheckpointError

    model = load_refinable(path)
    if model.data_shape != tuple(data.shape):
        raise CheckpointError(f"{str(path)!r} generates {model.data_shape} samples, but {data.name} is {tuple(data.shape)}")
    ratios = calibrate_all(model, data, config, seed=seed)
    return refine(model.members, ratios, model.weights, n, method, config, seed=seed, labels=labels, classes=classes), ratios
