"""The population as one generator: a weighted mixture of its best trials' generators.

A population ends with several generators that are each good at part of the data. Lipizzaner
(Schmiedlechner et al. 2018; Toutouh et al. 2019, "Spatial evolutionary generative adversarial
networks") samples from a weighted mixture of its generators, the weights evolved to lower the
mixture's FID; on MNIST the mixture's class-histogram TVD and FID fall well below one
generator's. Here the weights are fitted once, at the end of a run, never on the test split:

- ``parzen``: the mixture's Parzen density is the weighted sum of the members' Parzen densities,
  so the weights that maximise the mean validation log-likelihood solve a concave problem on the
  simplex, max_w (1/P) sum_i log sum_j w_j p_j(x_i). EM (Dempster et al. 1977; the mixture-
  weights-only case) climbs it: r_ji = w_j p_j(x_i) / sum_k w_k p_k(x_i), then w_j = mean_i r_ji.
  Each member's p_j is its own Parzen window at its own sigma, chosen on the validation split.
- ``fd`` (or ``tvd``), to the training split's features (labels), which every FD and TVD in
  raygan is measured against: the mixture's feature mean and covariance in the domain
  classifier's feature space are closed-form mixtures of the members' moments, and its class
  histogram is the weighted sum of theirs, so nothing is resampled per candidate: FD by a small
  search on the simplex (a grid, then local moves of shrinking size), TVD exactly, as a linear
  program.

Sampling draws each sample's component by weight, then z from that component's own prior.
The mixture saves as one self-describing file (``best/mixture.pt``, format ``raygan-mixture/1``)
that :mod:`raygan.sample` and :mod:`raygan.evaluate` take wherever they take a ``generator.pt``.

    python -m raygan.mixture --run ~/raygan_results/raygan [--members 4] [--fit-to parzen|fd]

No Ray here: a finished run is read from its directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raygan import keys, parzen, quality
from raygan.config import MIXTURE_FIT_TO, MixtureConfig
from raygan.errors import CheckpointError, UserError
from raygan.files import DATA_SPLIT_FILE, EXPERIMENT_FILE, GENERATOR_FILE, SCORES_FILE, atomic_torch_save, read_scores
from raygan.models import (
    GENERATOR_FORMAT,
    Discriminator,
    Generator,
    check_labels,
    discriminator_from_state,
    generate,
    generator_from_state,
    generator_state,
)

FORMAT = "raygan-mixture/1"
FIT_TO = MIXTURE_FIT_TO  # what the weights are fitted to (fd, tvd: the domain classifier's)
FITTED_ON = {  # what each fit reads, as the CLI says it; none reads the test split
    "parzen": "the Parzen log-likelihood of the validation split",
    "fd": "the FD to the training split's features",
    "tvd": "the TVD to the training split's labels",
}
DEFAULT_MEMBERS = MixtureConfig().members  # the top trials that are not diverged
MIXTURE_FILE = "mixture.pt"  # written into the run's best/ directory
WEIGHT_TOL = 1e-6  # weights must sum to 1 within this
EM_ITERATIONS = 10_000
EM_TOL = 1e-12  # EM stops when no weight moves by more than this in one update
GRID_STEP = 0.1  # the quality search's first grid on the simplex (for <= GRID_MAX_MEMBERS members)
GRID_MAX_MEMBERS = 4
REFINE_MIN_STEP = 1e-4  # local moves of mass between two members halve down to this


class GeneratorMixture:
    """Generators with weights on the simplex: sample a component by weight, then G_j(z), z ~ its p_z.

    Args:
        members: the generators (each keeps its own config: prior, noise dimension).
        weights: one non-negative weight per member, summing to 1 within :data:`WEIGHT_TOL`.
        names: one name per member (trial ids); default "0", "1", ...
        fit: how the weights were fitted (plain JSON-ready values), kept in the file.
        discriminators: the D trained beside each member (for :mod:`raygan.refine`), kept in the
            file; None where they are not known.

    Raises:
        ValueError: no members, weights off the simplex, or members of different data shapes.
    """

    def __init__(
        self,
        members: Sequence[Generator],
        weights: Sequence[float] | np.ndarray | torch.Tensor,
        names: Sequence[str] | None = None,
        fit: dict[str, Any] | None = None,
        discriminators: Sequence[Discriminator] | None = None,
    ) -> None:
        w = np.asarray(torch.as_tensor(weights, dtype=torch.float64).cpu(), dtype=np.float64).reshape(-1)
        if not members:
            raise ValueError("a mixture needs at least one member")
        if len(w) != len(members) or not np.isfinite(w).all() or (w < 0).any() or abs(w.sum() - 1) > WEIGHT_TOL:
            raise ValueError(f"weights must be {len(members)} non-negative numbers summing to 1, got {w.tolist()}")
        shapes = {(tuple(g.data_shape), g.bounded) for g in members}
        if len(shapes) != 1:
            raise ValueError(f"members must make samples of one shape and kind, got {sorted(shapes)}")
        classes = {g.num_classes for g in members}
        if len(classes) != 1:
            raise ValueError(f"members must be all unconditional or all conditional on the same classes, got {sorted(classes, key=str)}")
        names = [str(i) for i in range(len(members))] if names is None else [str(n) for n in names]
        if len(names) != len(members):
            raise ValueError(f"{len(members)} members but {len(names)} names")
        if discriminators is not None and len(discriminators) != len(members):
            raise ValueError(f"{len(members)} members but {len(discriminators)} discriminators")
        self.members = list(members)
        self.discriminators = None if discriminators is None else list(discriminators)
        self.weights = w / w.sum()
        self.names = names
        self.fit = dict(fit or {})
        self.data_shape = tuple(members[0].data_shape)
        self.bounded = members[0].bounded
        self.num_classes = members[0].num_classes  # conditional members: p(x | c) = sum_j w_j p_j(x | c)

    def components(self, n: int, seed: int = 0) -> torch.Tensor:
        """The component of each of ``n`` samples, (n,) int64, drawn by weight (what :meth:`sample` uses)."""
        return self._draw(n, seed)[0]

    def sample(self, n: int, seed: int = 0, batch_size: int = 1000, labels: Any = None) -> torch.Tensor:
        """Draw ``n`` samples (n, C, H, W), in the order their components were drawn; the same seed, the same samples.

        One CPU stream seeded by ``seed`` draws the components (multinomial by weight) and then one
        noise seed per member; member j makes its share with :func:`raygan.models.generate`.
        Conditional members: sample i is asked for class ``labels[i]`` whichever member draws it
        (the weights do not depend on the class); without labels, every class equally often in
        :func:`raygan.models.class_grid_labels`' order.

        Raises:
            LabelError: labels for unconditional members, or classes they do not have.
        """
        labels = check_labels(self.members[0], labels, n)
        comps, seeds = self._draw(n, seed)
        device = next(self.members[0].parameters()).device
        out = torch.empty(n, *self.data_shape, device=device)
        for j, member in enumerate(self.members):
            where = (comps == j).nonzero().view(-1)
            if len(where):
                asked = None if labels is None else labels[where]
                out[where.to(device)] = generate(member, len(where), seed=seeds[j], batch_size=batch_size,
                                                 labels=asked).to(device)
        return out

    def _draw(self, n: int, seed: int) -> tuple[torch.Tensor, list[int]]:
        if n < 0:
            raise ValueError(f"cannot draw {n} samples")
        gen = torch.Generator().manual_seed(seed)
        w = torch.from_numpy(self.weights)
        comps = torch.multinomial(w, n, replacement=True, generator=gen) if n else torch.empty(0, dtype=torch.int64)
        seeds = torch.randint(0, 2**62, (len(self.members),), generator=gen).tolist()
        return comps, seeds

    def to(self, device: str | torch.device) -> GeneratorMixture:
        """Move every member to ``device`` (in place); returns self."""
        for net in [*self.members, *(self.discriminators or [])]:
            net.to(device)
        return self

    def state(self) -> dict[str, Any]:
        """The checkpoint: format tag, each member's generator state, weights, names, how they were fitted."""
        return {
            "format": FORMAT,
            "members": [generator_state(g, d) for g, d in zip(self.members, self.discriminators or [None] * len(self.members))],
            "weights": torch.from_numpy(self.weights.copy()),
            "names": list(self.names),
            "fit": self.fit,
        }

    def save(self, path: str | Path) -> None:
        """Write the mixture to ``path`` atomically (tensors and plain values only)."""
        atomic_torch_save(self.state(), path)

    @classmethod
    def from_state(cls, state: Any, source: str) -> GeneratorMixture:
        """Rebuild a mixture from :meth:`state`'s dict (members on the CPU, in eval mode).

        Raises:
            CheckpointError: ``state`` is not a raygan mixture's, or is damaged (``source`` names it).
        """
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise CheckpointError(f"{source} is not a raygan mixture checkpoint (expected format {FORMAT})")
        members, weights, names, fit = (state.get(k) for k in ("members", "weights", "names", "fit"))
        if not isinstance(members, list) or not isinstance(weights, torch.Tensor) or not isinstance(fit, dict):
            raise CheckpointError(f"{source} holds a damaged mixture (members, weights or fit missing)")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise CheckpointError(f"{source} holds a damaged mixture (member names missing)")
        generators = [generator_from_state(m, f"member {i} of {source}") for i, m in enumerate(members)]
        discriminators = None
        if all(isinstance(m, dict) and "discriminator" in m for m in members):
            discriminators = [discriminator_from_state(m["discriminator"], f"member {i}'s discriminator in {source}",
                                                       bool(m.get("bounded", True))) for i, m in enumerate(members)]
        try:
            return cls(generators, weights, names, fit, discriminators)
        except ValueError as e:
            raise CheckpointError(f"{source} holds a damaged mixture ({e})") from None

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> GeneratorMixture:
        """Read a mixture file, with ``weights_only=True``: nothing in it can run code.

        Raises:
            CheckpointError: the file is missing, unreadable, or not a raygan mixture.
        """
        state = _read(path, "mixture")
        return cls.from_state(state, repr(str(Path(path).expanduser()))).to(device)


Samplable = Generator | GeneratorMixture


def load_samplable(path: str | Path, device: str | torch.device = "cpu") -> Samplable:
    """A generator or a mixture file, told apart by its format tag (what ``raygan.sample`` and ``raygan.evaluate`` read).

    Raises:
        CheckpointError: the file is missing, unreadable, or neither a raygan generator nor a mixture.
    """
    state = _read(path, "generator or mixture")
    source = repr(str(Path(path).expanduser()))
    tag = state.get("format") if isinstance(state, dict) else None
    if tag == FORMAT:
        return GeneratorMixture.from_state(state, source).to(device)
    if tag == GENERATOR_FORMAT:
        return generator_from_state(state, source).to(device)
    raise CheckpointError(f"{source} is neither a raygan generator nor a mixture checkpoint (format {tag!r})")


def load_pair(path: str | Path) -> tuple[Generator, Discriminator | None]:
    """A generator file's generator and the discriminator saved with it (None where there is none).

    Raises:
        CheckpointError: the file is missing, unreadable, not a raygan generator, or damaged.
    """
    state = _read(path, "generator")
    source = repr(str(Path(path).expanduser()))
    generator = generator_from_state(state, source)
    d_state = state.get("discriminator")
    return generator, None if d_state is None else discriminator_from_state(d_state, f"the discriminator in {source}", bool(state.get("bounded", True)))


def draw(model: Samplable, n: int, seed: int = 0, labels: Any = None) -> torch.Tensor:
    """``n`` samples (n, C, H, W) from a generator or a mixture; the same seed, the same samples.

    ``labels``: the class of each sample for a conditional model (see :func:`raygan.models.generate`).
    """
    if isinstance(model, GeneratorMixture):
        return model.sample(n, seed=seed, labels=labels)
    return generate(model, n, seed=seed, labels=labels)


def _read(path: str | Path, what: str) -> Any:
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - on arbitrary bytes the unpickler also raises KeyError, struct.error...
        raise CheckpointError(f"{str(path)!r} is not a raygan {what} checkpoint ({e.__class__.__name__})") from None


# --------------------------------------------------------------------------------------------
# Fitting the weights to the Parzen validation log-likelihood (EM on the simplex).


def member_log_densities(
    member_samples: Sequence[Any],
    valid: Any,
    sigmas: Sequence[float] | None = None,
    chunk_size: int = parzen.DEFAULT_CHUNK_SIZE,
) -> tuple[np.ndarray, list[float]]:
    """Each member's Parzen log-density at every validation point, at its own sigma chosen on validation.

    Args:
        member_samples: one (N_j, ...) array of samples per member: the Parzen centres.
        valid: the validation points (P, ...).
        sigmas: the grid sigma is chosen from (default :data:`raygan.parzen.DEFAULT_SIGMAS`).
        chunk_size: points per distance block.

    Returns:
        ``(L, sigmas)``: L (members, P) float64 with L_ji = log p_j(x_i), and each member's sigma
        (the one :func:`raygan.parzen.select_sigma` picks: the best mean validation LL).
    """
    grid = tuple(sigmas) if sigmas is not None else parzen.DEFAULT_SIGMAS
    rows, chosen = [], []
    for samples in member_samples:
        ll = parzen.log_likelihood_grid(samples, valid, grid, chunk_size=chunk_size)  # (P, len(grid))
        best = int(torch.argmax(ll.mean(0)))  # as parzen.validation_score: the first of any ties
        rows.append(ll[:, best].double().cpu().numpy())
        chosen.append(grid[best])
    return np.stack(rows), chosen


def fit_parzen_weights(
    log_densities: Any, iterations: int = EM_ITERATIONS, tol: float = EM_TOL
) -> tuple[np.ndarray, int]:
    """The weights maximising the mean log-likelihood of a mixture of fixed densities, by EM.

    max_w (1/P) sum_i log sum_j w_j exp(L_ji) over the simplex is concave; EM's update
    r_ji = w_j p_j(x_i) / sum_k w_k p_k(x_i), w_j = mean_i r_ji never decreases it and never leaves
    the simplex (Dempster et al. 1977). Computed in log space, so densities of e^-1000 are fine.

    Args:
        log_densities: L, (members, P): L_ji = log p_j(x_i), finite.
        iterations: the most EM updates.
        tol: stop when no weight moves by more than this in one update.

    Returns:
        ``(weights, updates)``: (members,) float64 on the simplex, and the number of updates made.
    """
    L = np.asarray(torch.as_tensor(log_densities).double().cpu(), dtype=np.float64)
    if L.ndim != 2 or L.size == 0 or not np.isfinite(L).all():
        raise ValueError(f"log_densities must be a finite (members, points) array, got shape {L.shape}")
    w = np.full(len(L), 1.0 / len(L))
    for step in range(1, iterations + 1):
        log_joint = np.log(np.maximum(w, 1e-300))[:, None] + L  # log w_j p_j(x_i); a zero weight stays zero
        r = np.exp(log_joint - _logsumexp(log_joint))  # responsibilities, (members, P), columns sum to 1
        new = r.mean(axis=1)
        new /= new.sum()
        moved = np.abs(new - w).max()
        w = new
        if moved <= tol:
            return w, step
    return w, iterations


def mixture_log_likelihood(log_densities: Any, weights: Any) -> float:
    """(1/P) sum_i log sum_j w_j exp(L_ji): the objective :func:`fit_parzen_weights` maximises."""
    L = np.asarray(log_densities, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return float(_logsumexp(np.log(w)[:, None] + L).mean())


def _logsumexp(a: np.ndarray) -> np.ndarray:
    """log sum_j exp(a_ji) over axis 0, stably."""
    m = a.max(axis=0)
    return m + np.log(np.exp(a - m).sum(axis=0))


# --------------------------------------------------------------------------------------------
# Fitting the weights to the domain classifier's FD or TVD (a search on the simplex).


@dataclass(frozen=True)
class MemberStatistics:
    """The domain classifier's reading of one member's samples: what the mixture's FD and TVD need."""

    mean: np.ndarray  # (F,) feature mean
    cov: np.ndarray  # (F, F) feature covariance, population (ddof=0): mixture moments combine exactly
    histogram: np.ndarray  # (K,) predicted-class shares


def member_statistics(model: quality.QualityModel, samples: Any) -> MemberStatistics:
    """Read one member's samples (N, C, H, W) with the domain classifier."""
    features, probs = quality.read(model.classifier, samples)
    mean, cov = quality.feature_statistics(features)
    n = len(features)
    return MemberStatistics(mean, cov * (n - 1) / n, quality.class_histogram(probs.argmax(dim=1), model.num_classes))


def mixture_moments(stats: Sequence[MemberStatistics], weights: Any) -> tuple[np.ndarray, np.ndarray]:
    """The mixture's feature mean and covariance from its members':

    mu = sum_j w_j mu_j,   Sigma = sum_j w_j (Sigma_j + mu_j mu_j^T) - mu mu^T.
    """
    w = np.asarray(weights, dtype=np.float64)
    means = np.stack([s.mean for s in stats])  # (M, F)
    mu = w @ means
    second = sum(wj * (s.cov + np.outer(s.mean, s.mean)) for wj, s in zip(w, stats))
    return mu, second - np.outer(mu, mu)


def quality_objective(
    stats: Sequence[MemberStatistics], reference: Any, objective: str = "fd"
) -> Callable[[np.ndarray], float]:
    """The mixture's FD to ``reference``'s training features, or its histogram's TVD to the training labels, as a function of w.

    Args:
        stats: each member's :class:`MemberStatistics`.
        reference: a :class:`raygan.quality.QualityModel` (or anything with its ``feature_mean``,
            ``feature_cov`` and ``label_histogram``).
        objective: "fd" or "tvd".
    """
    if objective == "fd":
        return lambda w: quality.frechet_distance(*mixture_moments(stats, w), reference.feature_mean, reference.feature_cov)
    if objective == "tvd":
        hists = np.stack([s.histogram for s in stats])
        return lambda w: quality.total_variation(np.asarray(w) @ hists, reference.label_histogram)
    raise ValueError(f"unknown objective {objective!r}; choose fd or tvd")


def fit_quality_weights(
    stats: Sequence[MemberStatistics],
    reference: Any,
    objective: str = "fd",
    step: float = GRID_STEP,
    min_step: float = REFINE_MIN_STEP,
) -> tuple[np.ndarray, float]:
    """The weights minimising the mixture's FD (a grid on the simplex, then local moves), or its TVD (exactly).

    TVD is piecewise linear in w, so its minimum over the simplex is a linear program, solved
    exactly for any number of members by :func:`fit_tvd_weights`; FD is searched as follows.

    The grid holds every w with entries in multiples of ``step`` (286 points for 4 members at 0.1);
    with more than :data:`GRID_MAX_MEMBERS` members, only the uniform weights and the vertices.
    From the best point, moves of ``delta`` mass from one member to another are taken while one
    lowers the objective, with ``delta`` halving from ``step / 2`` down to ``min_step``. Ties keep
    the earlier candidate, so the result is reproducible.

    Returns:
        ``(weights, objective value)``.
    """
    if objective == "tvd":
        return fit_tvd_weights(np.stack([s.histogram for s in stats]), reference.label_histogram)
    f = quality_objective(stats, reference, objective)
    m = len(stats)
    best_w, best_f = None, math.inf
    for w in _grid(m, step):
        value = f(w)
        if value < best_f:
            best_w, best_f = w, value
    delta = step / 2
    while delta >= min_step:
        improved = True
        while improved:
            improved = False
            for i, j in itertools.permutations(range(m), 2):
                moved = min(delta, best_w[i])
                if moved <= 0:
                    continue
                w = best_w.copy()
                w[i] -= moved
                w[j] += moved
                value = f(w)
                if value < best_f - 1e-12:
                    best_w, best_f, improved = w, value, True
        delta /= 2
    return best_w, float(best_f)


def fit_tvd_weights(histograms: Any, target: Any) -> tuple[np.ndarray, float]:
    """The weights whose mixed class histogram is nearest ``target`` in total variation, exactly.

    min_w 1/2 sum_c |sum_j w_j h_jc - p_c| over the simplex is the linear program
    min 1/2 sum_c t_c subject to -t <= H^T w - p <= t, sum_j w_j = 1, w >= 0 (HiGHS, deterministic).

    Args:
        histograms: H, (members, classes): each member's predicted-class shares.
        target: p, (classes,): the training labels' shares.

    Returns:
        ``(weights, TVD)``: (members,) float64 on the simplex, and the mixture's TVD to ``target``.
    """
    from scipy.optimize import linprog

    H = np.asarray(histograms, dtype=np.float64)
    p = np.asarray(target, dtype=np.float64)
    m, k = H.shape
    eye = np.eye(k)
    result = linprog(
        c=np.r_[np.zeros(m), np.full(k, 0.5)],
        A_ub=np.block([[H.T, -eye], [-H.T, -eye]]),
        b_ub=np.r_[p, -p],
        A_eq=np.r_[np.ones(m), np.zeros(k)][None],
        b_eq=[1.0],
        bounds=[(0, None)] * (m + k),
        method="highs",
    )
    if not result.success:  # cannot happen for a feasible, bounded LP; say so rather than guess
        raise RuntimeError(f"the TVD linear program failed: {result.message}")
    w = np.maximum(result.x[:m], 0.0)
    w /= w.sum()
    return w, quality.total_variation(w @ H, p)


def _grid(m: int, step: float) -> list[np.ndarray]:
    """Points of the simplex in multiples of ``step`` (m <= GRID_MAX_MEMBERS), else uniform plus the vertices."""
    if m > GRID_MAX_MEMBERS:
        return [np.full(m, 1.0 / m), *np.eye(m)]
    k = round(1 / step)
    return [np.array([*c, k - sum(c)], dtype=np.float64) / k
            for c in itertools.product(range(k + 1), repeat=m - 1) if sum(c) <= k]


# --------------------------------------------------------------------------------------------
# Tying it together.


def fit(
    members: Sequence[Generator],
    member_samples: Sequence[Any],
    valid: Any,
    fit_to: str = "parzen",
    quality_model: quality.QualityModel | None = None,
    names: Sequence[str] | None = None,
    sigmas: Sequence[float] | None = None,
    chunk_size: int = parzen.DEFAULT_CHUNK_SIZE,
    discriminators: Sequence[Discriminator] | None = None,
) -> GeneratorMixture:
    """Fit the mixture's weights, never on the test split; deterministic (the same inputs, the same weights).

    Args:
        members: the generators.
        member_samples: one array (N_j, C, H, W) of each member's samples.
        valid: the validation split (for ``parzen``).
        fit_to: "parzen" (EM on the validation LL), "fd" or "tvd" (a search on the simplex against
            ``quality_model``'s training-split statistics).
        quality_model: the data set's domain classifier (for ``fd`` and ``tvd``).
        names: the members' names (trial ids).
        sigmas: the Parzen grid each member's sigma is chosen from.
        chunk_size: points per distance block.
        discriminators: each member's D, kept with the mixture (None: not known).

    Returns:
        The :class:`GeneratorMixture`, its ``fit`` recording how the weights were found.
    """
    if len(members) != len(member_samples):
        raise ValueError(f"{len(members)} members but {len(member_samples)} sets of samples")
    if fit_to == "parzen":
        L, chosen = member_log_densities(member_samples, valid, sigmas, chunk_size)
        weights, updates = fit_parzen_weights(L)
        record = {"fit_to": fit_to, "sigmas": chosen, "em_updates": updates,
                  "parzen_valid_ll": mixture_log_likelihood(L, weights),
                  "member_parzen_valid_ll": L.mean(axis=1).tolist()}
    elif fit_to in ("fd", "tvd"):
        if quality_model is None:
            raise ValueError(f"fitting to {fit_to} needs the domain classifier")
        stats = [member_statistics(quality_model, s) for s in member_samples]
        weights, value = fit_quality_weights(stats, quality_model, fit_to)
        f = quality_objective(stats, quality_model, fit_to)
        record = {"fit_to": fit_to, fit_to: value, f"member_{fit_to}": [f(e) for e in np.eye(len(members))]}
    else:
        raise ValueError(f"unknown fit_to {fit_to!r}; choose one of {', '.join(FIT_TO)}")
    record["num_samples"] = [len(s) for s in member_samples]
    return GeneratorMixture(members, weights, names, record, discriminators)


# --------------------------------------------------------------------------------------------
# A finished run's trials (read from its directory: no Ray).



@dataclass(frozen=True)
class TrialCheckpoint:
    """A trial's latest checkpoint and the scores of the generator it holds."""

    trial_id: str
    path: Path  # the checkpoint_* directory
    scores: dict[str, Any] = field(repr=False)

    @property
    def rank_score(self) -> float:
        return _number(self.scores.get(keys.RANK_SCORE, self.scores.get(keys.PARZEN_VALID_LL)))

    @property
    def diverged(self) -> bool:
        return bool(self.scores.get(keys.DIVERGED, False))


def trial_checkpoints(run: str | Path) -> list[TrialCheckpoint]:
    """Every trial of a run with a scored checkpoint: ``<run>/<trial>/checkpoint_<n>/`` with the highest n."""
    out = []
    for trial in sorted(p for p in Path(run).iterdir() if p.is_dir()):
        checkpoints = [p for p in trial.glob("checkpoint_*") if p.is_dir() and p.name.split("_")[-1].isdigit()]
        if not checkpoints:
            continue
        latest = max(checkpoints, key=lambda p: int(p.name.split("_")[-1]))
        if not (latest / GENERATOR_FILE).is_file() or not (latest / SCORES_FILE).is_file():
            continue
        try:
            scores = read_scores(latest)
        except (OSError, ValueError):
            continue
        if isinstance(scores, dict):
            out.append(TrialCheckpoint(_trial_id(trial.name), latest, scores))
    return out


def select_members(checkpoints: Sequence[TrialCheckpoint], members: int = DEFAULT_MEMBERS) -> list[TrialCheckpoint]:
    """The top ``members`` trials by rank score (higher is better; then the Parzen validation LL), not diverged."""
    usable = [c for c in checkpoints if not c.diverged and math.isfinite(c.rank_score)]
    ranked = sorted(usable, key=lambda c: (c.rank_score, _number(c.scores.get(keys.PARZEN_VALID_LL)), c.trial_id),
                    reverse=True)
    return ranked[:members]


def _number(value: Any) -> float:
    """A score as written to scores.json ("-inf", "nan" as strings; None where missing) as a float."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return -math.inf


def _trial_id(directory: str) -> str:
    """Tune's trial id (``a731e_00002``) from a trial directory's name, else the name itself."""
    match = re.search(r"_([0-9a-f]{5}_\d{5})(?:_|$)", directory)
    return match.group(1) if match else directory


# --------------------------------------------------------------------------------------------
# python -m raygan.mixture: build, fit and score a mixture from a finished run.


@dataclass(frozen=True)
class Scores:
    """One sampler's numbers under the evaluation protocol: Parzen (sigma chosen on validation) and the classifier's."""

    parzen: parzen.ParzenResult
    quality: quality.QualityScores | None  # None where the data set has no labels
    num_samples: int

    def as_json(self) -> dict[str, Any]:
        """The keys of ``summary.json``: sigma, parzen_valid_ll, parzen_test_ll, parzen_test_se, quality."""
        p = self.parzen
        return {"num_samples": self.num_samples, "sigma": p.sigma, "parzen_valid_ll": p.valid_ll,
                "parzen_test_ll": p.test_ll, "parzen_test_se": p.test_se,
                "quality": None if self.quality is None else self.quality.as_dict()}

    @classmethod
    def from_json(cls, scores: dict[str, Any], quality_scores: dict[str, Any] | None) -> Scores:
        """Scores as ``summary.json`` holds them (the best trial's, or its "reference"), the classifier's apart."""
        q = None
        if quality_scores is not None:
            q = quality.QualityScores(**{f.name: quality_scores[f.name] for f in fields(quality.QualityScores)})
            q = dataclasses.replace(q, histogram=tuple(q.histogram))
        result = parzen.ParzenResult(scores["sigma"], scores["parzen_valid_ll"], scores["parzen_test_ll"], scores["parzen_test_se"])
        return cls(result, q, scores["num_samples"])


@dataclass(frozen=True)
class Comparison:
    """A run's mixture beside its best single trial and the held-out-data reference."""

    run: str
    dataset: str
    out: str  # where the mixture was saved
    mixture: GeneratorMixture = field(repr=False)
    members: list[TrialCheckpoint]  # best first
    scores: Scores  # the mixture's
    best: Scores  # the best single trial's (members[0])
    reference: Scores  # real data: training images as Parzen centres, the validation split for the classifier

    def as_json(self) -> dict[str, Any]:
        """One JSON-ready object: what ``summary.json``'s "mixture" object holds, and the comparison."""
        return {
            "run": self.run,
            "dataset": self.dataset,
            "file": self.out,
            "members": [{"trial_id": m.trial_id, "weight": float(w), "rank_score": m.rank_score, "checkpoint": str(m.path)}
                        for m, w in zip(self.members, self.mixture.weights)],
            "fit": self.mixture.fit,
            "mixture": self.scores.as_json(),
            "best_single": {"trial_id": self.members[0].trial_id, **self.best.as_json()},
            "reference": self.reference.as_json(),
        }


def score(samples: Any, data: Any, sigmas: Sequence[float], chunk_size: int, model: quality.QualityModel | None,
          min_share: float = quality.DEFAULT_MIN_SHARE) -> Scores:
    """Parzen test LL ± SE at the sigma chosen on validation, and the classifier's FD, classes, TVD (where labelled)."""
    result = parzen.evaluate(samples, data.valid, data.test, sigmas, chunk_size=chunk_size)
    return Scores(result, None if model is None else model.score(samples, min_share=min_share), len(samples))


def build_from_run(
    run: str | Path,
    members: int = DEFAULT_MEMBERS,
    fit_to: str | None = None,
    num_samples: int | None = None,
    out: str | Path | None = None,
    cache_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
    data: Any = None,
) -> Comparison:
    """Build a mixture of a finished run's top trials, fit its weights on validation, save it, and score it.

    Members are the top ``members`` trials by rank score that did not diverge, each at its latest
    checkpoint. Each member's fitting samples are drawn with ``eval.seed + 1``; the mixture and the
    best single trial are scored on ``eval.seed``'s samples (the best trial's as ``raygan.tune``
    scored it), so the fitted objective's own sample noise does not flatter the mixture.

    Args:
        run: the experiment directory (``<storage_path>/<name>``, holding experiment.yaml).
        members: how many trials to mix.
        fit_to: parzen, fd or tvd (None: what the run ranked by, ``eval.rank_by``).
        num_samples: samples per member for fitting, and for scoring (None: ``eval.num_samples``).
        out: where to save the mixture (None: ``<run>/best/mixture.pt``).
        cache_dir: where the domain classifier is cached (see :func:`raygan.quality.load_or_train`).
        log: progress lines.
        data: the run's data set, already loaded (None: load the one its experiment.yaml names).

    Raises:
        UserError: a missing or foreign run directory, no usable trial, bad numbers, or fd/tvd
            on a data set without labels.
    """
    from raygan.config import load_config
    from raygan.data import load_data

    run = Path(run).expanduser()
    if not (run / EXPERIMENT_FILE).is_file():
        raise UserError(f"{str(run)!r} is not a raygan run directory (it holds no {EXPERIMENT_FILE})")
    if members < 1:
        raise UserError(f"--members must be at least 1, got {members}")
    if num_samples is not None and num_samples < 2:
        raise UserError(f"--num-samples must be at least 2, got {num_samples}")
    if fit_to is not None and fit_to not in FIT_TO:
        raise UserError(f"--fit-to must be one of {', '.join(FIT_TO)}, got {fit_to!r}")
    config = load_config(run / EXPERIMENT_FILE)
    fit_to = fit_to or config.eval.rank_by
    n = num_samples or config.eval.num_samples
    chosen = select_members(trial_checkpoints(run), members)
    if not chosen:
        raise UserError(f"no trial in {str(run)!r} has a scored checkpoint that did not diverge")
    if data is None:  # a user's data: the split the run recorded
        data = load_data(config.data, seed=config.tune.seed, recorded=recorded_split(run))
    model = None
    measured = data.labelled or config.eval.classifier is not None
    if (measured and config.eval.quality is not False) or fit_to != "parzen":
        # QualityError where there is neither a label nor a named classifier
        model = quality.for_data(data, config.eval.classifier, cache_dir=cache_dir, log=log)
    pairs = [load_pair(c.path / GENERATOR_FILE) for c in chosen]
    generators = [g for g, _ in pairs]
    discriminators = [d for _, d in pairs] if all(d is not None for _, d in pairs) else None
    if not all(tuple(g.data_shape) == data.shape for g in generators):
        raise CheckpointError(f"the trials of {str(run)!r} do not all hold generators of {data.name}'s shape {data.shape}")
    log(f"mixture: fitting {len(chosen)} members to {fit_to} on {n} samples each")
    fit_samples = [generate(g, n, seed=config.eval.seed + 1) for g in generators]
    mixture = fit(generators, fit_samples, data.valid, fit_to, model, [c.trial_id for c in chosen],
                  config.eval.sigmas, config.eval.chunk_size, discriminators)
    out = Path(out).expanduser() if out is not None else run / "best" / MIXTURE_FILE
    mixture.save(out)
    log(f"mixture: saved to {str(out)!r}; scoring it beside the best single trial")
    e = config.eval

    def measure(samples: Any) -> Scores:
        return score(samples, data, e.sigmas, e.chunk_size, model, e.min_class_share)

    best, reference = _scored_by_the_run(run, chosen[0], n, len(data.train), with_quality=model is not None)
    if best is None:
        best = measure(generate(generators[0], n, seed=e.seed))
    if reference is None:
        result = parzen.reference(data.train, data.valid, data.test, n, e.sigmas, seed=e.seed, chunk_size=e.chunk_size)
        reference_quality = None if model is None else model.reference(data.valid, min_share=e.min_class_share)
        reference = Scores(result, reference_quality, min(n, len(data.train)))
    return Comparison(
        run=str(run),
        dataset=data.name,
        out=str(out),
        mixture=mixture,
        members=chosen,
        scores=measure(mixture.sample(n, seed=e.seed)),
        best=best,
        reference=reference,
    )


def recorded_split(run: Path) -> dict[str, Any] | None:
    """The data split a run on a user's data recorded (``data_split.json``), or None."""
    from raygan import userdata

    path = Path(run) / DATA_SPLIT_FILE
    return userdata.read_record(path.read_text(), repr(str(path))) if path.is_file() else None


def _scored_by_the_run(
    run: Path, best: TrialCheckpoint, n: int, train_size: int, with_quality: bool
) -> tuple[Scores | None, Scores | None]:
    """The best trial's and the reference's scores from ``<run>/best/summary.json``, where raygan.tune
    already scored the same samples (the same trial and checkpoint, ``n`` samples of eval.seed, the
    same reference centres); None for each that must be scored again."""
    try:
        summary = json.loads((run / "best" / "summary.json").read_text())
    except (OSError, ValueError):
        return None, None
    if not isinstance(summary, dict) or (summary.get("quality") is not None) != with_quality:
        return None, None
    quality_scores = summary.get("quality")
    try:
        same_best = (summary.get("trial_id") == best.trial_id and summary.get("num_samples") == n
                     and summary.get("training_iteration") == best.scores.get(keys.TRAINING_ITERATION))
        best_scores = Scores.from_json(summary, quality_scores) if same_best else None
        reference = summary.get("reference") or {}
        same_reference = reference.get("num_samples") == min(n, train_size)
        reference_quality = None if quality_scores is None else quality_scores.get("reference")
        reference_scores = Scores.from_json(reference, reference_quality) if same_reference else None
    except (KeyError, TypeError):  # a summary written by another version: score again
        return None, None
    return best_scores, reference_scores


def format_comparison(c: Comparison) -> str:
    """The comparison as the CLI prints it: one row per sampler, Parzen beside the classifier's measures."""
    header = (f"{'':<26} {'samples':>8} {'sigma':>7} {'valid LL':>9} {'test LL ± SE':>16}"
              f" {'FD':>8} {'classes':>8} {'TVD':>6}")
    rows = [header]
    for name, s in ((f"mixture of {len(c.members)}", c.scores), (f"best single ({c.members[0].trial_id})", c.best),
                    ("held-out data", c.reference)):
        p, q = s.parzen, s.quality
        cells = (f"{name[:26]:<26} {s.num_samples:>8} {p.sigma:>7.4f} {p.valid_ll:>9.2f}"
                 f" {p.test_ll:>9.2f} ± {p.test_se:<4.2f}")
        if q is not None:
            cells += f" {q.fd:>8.2f} {f'{q.classes_covered}/{len(q.histogram)}':>8} {q.tvd:>6.3f}"
        rows.append(cells)
    weights = ", ".join(f"{m.trial_id} {w:.3f}" for m, w in zip(c.members, c.mixture.weights))
    rows += [
        f"weights (fitted to {FITTED_ON[c.mixture.fit['fit_to']]}): {weights}",
        (f"Parzen test LL in nats on {c.dataset}, sigma chosen on validation (held-out data: training images as "
         "centres); FD, classes and TVD read by the domain classifier (held-out data: the validation split)."),
        f"mixture saved to {c.out}",
    ]
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m raygan.mixture``; returns the exit code."""
    p = argparse.ArgumentParser(
        prog="python -m raygan.mixture",
        description="Mix a finished run's best generators, with weights fitted on the validation split, "
        "and score the mixture beside the best single trial.",
    )
    p.add_argument("--run", required=True, help="the run's directory (<storage_path>/<name>, holding experiment.yaml)")
    p.add_argument("--members", type=int, default=DEFAULT_MEMBERS, help="the top trials to mix, not diverged (default 4)")
    p.add_argument("--fit-to", choices=FIT_TO, default=None,
                   help="fit the weights to the Parzen validation LL, or the classifier's FD or TVD "
                   "(default: what the run ranked by, eval.rank_by)")
    p.add_argument("--num-samples", type=int, default=None, help="samples per member and for scoring (default eval.num_samples)")
    p.add_argument("--out", default=None, help="where to save the mixture (default <run>/best/mixture.pt)")
    p.add_argument("--cache-dir", default=None, help="where the classifier is cached (default ~/.cache/raygan/classifiers)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = p.parse_args(argv)
    try:
        comparison = build_from_run(args.run, args.members, args.fit_to, args.num_samples, args.out, args.cache_dir,
                                    log=lambda line: print(line, file=sys.stderr))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(comparison.as_json(), indent=2) if args.json else format_comparison(comparison))
    return 0


if __name__ == "__main__":
    sys.exit(main())
