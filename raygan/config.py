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
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from raygan.errors import UserError

DATASETS = ("mnist5k", "fashion-mnist", "mnist", "cifar10", "toy-1d", "ring-8", "grid-25")
PRIORS = ("uniform", "gaussian", "truncated-normal", "hypersphere")
G_LOSSES = ("non-saturating", "minimax")
ARCHS = ("mlp", "conv")
INITS = ("paper", "torch")
OPTIMIZERS = ("adam", "sgd")
SCHEDULERS = ("pbt", "asha", "random")


class ConfigError(UserError, ValueError):
    """A setting that cannot be used; the message is one sentence meant for the user."""


def _choice(value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")


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
    """Which data set to train on, and where its files are (None: the data set's default place)."""

    name: str = "mnist5k"
    root: str | None = None
    download: bool = False

    def __post_init__(self) -> None:
        _choice(self.name, DATASETS, "dataset")


@dataclass(frozen=True)
class ModelConfig:
    """The generator, its noise prior p_z, and the discriminator.

    The defaults are the pair that learns every digit of mnist5k on a CPU within minutes (a
    small DCGAN-style conv pair; experiments/README.md, "Recipes on mnist5k"); the paper's
    MNIST pair (Section 5) is ``arch: mlp`` with the sizes in experiments/mnist_paper.yaml.
    """

    # "conv": a DCGAN-style pair (transposed convolutions with batch norm in G, LeakyReLU
    # convolutions in D), one stride-2 layer per halving of the image side down to 4-7 pixels;
    # "mlp": the paper's MNIST pair (ReLU MLP G, maxout D), also the one for point sets.
    arch: str = "conv"
    noise_dim: int = 100
    # Unit-variance priors; "uniform" is the released code's U[-sqrt 3, sqrt 3] per coordinate.
    prior: str = "uniform"
    g_hidden: tuple[int, ...] = (1200, 1200)  # mlp: G's ReLU units
    d_hidden: tuple[int, ...] = (240, 240)  # mlp: D's maxout units
    d_pieces: int = 5  # mlp: linear pieces per maxout unit
    d_input_dropout: float = 0.0  # dropout on D's input (the paper's maxout D: 0.2)
    d_hidden_dropout: float = 0.0  # dropout on D's last hidden layer (the paper's maxout D: 0.5)
    # Max L2 norm of each of D's linear units' weight vectors (pylearn2's max_col_norm). None:
    # unconstrained, as in the released MNIST config (its 1.9365 belongs to the TFD config).
    d_max_norm: float | None = None
    conv_width: int = 32  # conv: channels of D's first layer and G's last hidden layer, doubled per layer inwards
    # For images in [0, 1]: G's output bias starts at logit(mean training pixel), clamped to
    # [1e-7, 1 - 1e-7] (pylearn2's init_bias_target_marginals), so G starts at the data's mean image.
    g_marginal_bias: bool = True
    # mlp only (the conv pair keeps PyTorch's init). "paper": pylearn2's uniform ranges (G
    # +-0.05, D +-0.005), tuned for 784-d images; "torch": PyTorch's fan-in scaled defaults, which
    # small nets on 1-D/2-D points need (with the paper's ranges G collapses to a point on toy-1d).
    init: str = "paper"

    def __post_init__(self) -> None:
        _choice(self.arch, ARCHS, "architecture")
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


@dataclass(frozen=True)
class TrainConfig:
    """Algorithm 1's settings: k, minibatch size, the learning rule and its schedules, the G loss.

    The defaults are the recipe that learns every digit of mnist5k on a CPU (Adam, as DCGAN
    trains; experiments/README.md, "Recipes on mnist5k"); the paper's momentum SGD with its
    schedules is experiments/mnist_paper.yaml. Algorithm 1 allows any gradient-based rule.
    """

    k: int = 1  # discriminator steps per generator step; the paper used k = 1
    batch_size: int = 32  # the minibatch size m (the paper's: 100)
    optimizer: str = "adam"  # the learning rule of both nets: "adam" or "sgd" (momentum SGD, the paper's)
    lr_d: float = 1e-3  # D's learning rate (the paper's SGD: 0.1)
    lr_g: float = 1e-3  # G's learning rate (the paper's SGD: 0.1)
    # The momentum: SGD's momentum, or Adam's beta1 (its running mean of gradients is a momentum).
    # It moves linearly from `momentum` to `final_momentum` over momentum_ramp_epochs (paper: 0.5 -> 0.7).
    momentum: float = 0.5
    final_momentum: float = 0.5
    momentum_ramp_epochs: float = 250.0  # the released code's MomentumAdjustor saturates at epoch 250
    beta2: float = 0.999  # Adam's running mean of squared gradients (unused by SGD)
    lr_decay: float = 1.0  # the learning rates are divided by this every iteration (paper: 1.000004)
    min_lr: float = 1e-6
    g_loss: str = "non-saturating"  # Section 3: maximise log D(G(z)) instead of minimising log(1 - D(G(z)))
    seed: int = 0

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
        _seed(self.seed, "train.seed")


def _default_sigmas() -> tuple[float, ...]:
    # The original evaluation's grid: 10 values, log-spaced from 0.1 to 1.
    return tuple(float(10 ** (-1 + i / 9)) for i in range(10))


@dataclass(frozen=True)
class EvalConfig:
    """The Parzen-window protocol (paper Section 5): samples, sigma grid, evaluation cadence."""

    num_samples: int = 10_000  # the final report's Parzen centres, as in the paper
    # Centres per ranking evaluation during the search (capped at num_samples). Fewer centres
    # bias every trial's LL down alike, so the ranking holds, at a fifth of the cost.
    ranking_samples: int = 2_000
    sigmas: tuple[float, ...] = field(default_factory=_default_sigmas)
    every: int = 2  # evaluate every this many Tune steps (generating 10k samples is not free)
    chunk_size: int = 2048  # points scored per distance block: bounds memory
    cpus: float = 1.0  # the evaluator actor's CPU request
    gpus: float | None = None  # its GPU request (None: 0.25 where the cluster has GPUs, else 0)
    histograms: bool = False  # G and D weight histograms in TensorBoard at each evaluation (~0.1 s each)

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
        if self.gpus is not None and self.gpus < 0:
            raise ConfigError(f"eval.gpus must be non-negative, got {self.gpus!r}")


@dataclass(frozen=True)
class SearchConfig:
    """The hyperparameters a population search explores, and how the scheduler moves them."""

    k: tuple[int, ...] = (1, 2, 3, 5)
    momentum: tuple[float, float] = (0.3, 0.9)  # uniform range
    lr_d: tuple[float, float] = (0.02, 0.3)  # log-uniform range around the paper's 0.1
    lr_g: tuple[float, float] = (0.02, 0.3)  # log-uniform range
    prior: tuple[str, ...] = PRIORS
    g_loss: tuple[str, ...] = G_LOSSES
    perturbation_interval: int = 4  # PBT: exploit/explore every this many steps (a multiple of eval.every)
    quantile_fraction: float = 0.25  # PBT: bottom share that copies from the top share
    grace_period: int = 4  # ASHA: steps before a trial can be stopped
    reduction_factor: int = 2  # ASHA
    # The first trial runs the experiment's own train/model settings (the paper's, by default)
    # and the others are drawn from the ranges: the search starts from a known-good point.
    start_from_base: bool = True

    def __post_init__(self) -> None:
        if not self.k or any(k < 1 for k in self.k):
            raise ConfigError(f"search.k must be a non-empty list of integers >= 1, got {list(self.k)}")
        for name in ("momentum", "lr_d", "lr_g"):
            low, high = getattr(self, name)
            if not low <= high:
                raise ConfigError(f"search.{name} must be [low, high] with low <= high, got [{low}, {high}]")
        _in_unit_interval(self.momentum[0], "search.momentum low")
        _in_unit_interval(self.momentum[1], "search.momentum high")
        _positive(self.lr_d[0], "search.lr_d low")
        _positive(self.lr_g[0], "search.lr_g low")
        if not self.prior:
            raise ConfigError("search.prior must name at least one noise prior")
        for p in self.prior:
            _choice(p, PRIORS, "noise prior")
        if not self.g_loss:
            raise ConfigError("search.g_loss must name at least one generator loss")
        for g in self.g_loss:
            _choice(g, G_LOSSES, "generator loss")
        if self.perturbation_interval < 1:
            raise ConfigError(f"search.perturbation_interval must be at least 1, got {self.perturbation_interval}")
        if not 0 < self.quantile_fraction <= 0.5:
            raise ConfigError(f"search.quantile_fraction must lie in (0, 0.5], got {self.quantile_fraction!r}")
        if self.grace_period < 1:
            raise ConfigError(f"search.grace_period must be at least 1, got {self.grace_period}")
        if self.reduction_factor < 2:
            raise ConfigError(f"search.reduction_factor must be at least 2, got {self.reduction_factor}")


@dataclass(frozen=True)
class TuneConfig:
    """How the population runs: size, scheduler, resources, budget, storage."""

    num_trials: int = 4
    scheduler: str = "pbt"
    cpus_per_trial: float = 0.5  # 4 trials share a 2-core laptop; torch gets max(1, int(cpus)) threads
    gpus_per_trial: float | None = None  # None: 0.25 where the cluster has GPUs, 0 where it has none
    time_budget_s: float | None = 420.0  # the default run finishes within 10 minutes on 2 cores
    max_iterations: int = 200  # Tune steps per trial
    iterations_per_step: int | None = None  # Algorithm 1 iterations per Tune step (None: one epoch)
    checkpoint_every: int = 4  # Tune steps between checkpoints (PBT also checkpoints the donors it copies)
    max_failures: int = 3  # restarts of a trial from its last checkpoint
    storage_path: str = "~/raygan_results"
    name: str = "raygan"
    resume: bool = False
    address: str | None = None  # None: start a local Ray; "auto": join the running cluster
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_trials < 1:
            raise ConfigError(f"tune.num_trials must be at least 1, got {self.num_trials}")
        _choice(self.scheduler, SCHEDULERS, "scheduler")
        _positive(self.cpus_per_trial, "tune.cpus_per_trial")
        if self.gpus_per_trial is not None and not 0 <= self.gpus_per_trial:
            raise ConfigError(f"tune.gpus_per_trial must be non-negative, got {self.gpus_per_trial!r}")
        if self.time_budget_s is not None:
            _positive(self.time_budget_s, "tune.time_budget_s")
        if self.max_iterations < 1:
            raise ConfigError(f"tune.max_iterations must be at least 1, got {self.max_iterations}")
        if self.iterations_per_step is not None and self.iterations_per_step < 1:
            raise ConfigError(f"tune.iterations_per_step must be at least 1, got {self.iterations_per_step}")
        if self.checkpoint_every < 1:
            raise ConfigError(f"tune.checkpoint_every must be at least 1, got {self.checkpoint_every}")
        if self.max_failures < -1:
            raise ConfigError(f"tune.max_failures must be -1 (unlimited) or more, got {self.max_failures}")
        _seed(self.seed, "tune.seed")
        if not self.name or "/" in self.name:
            raise ConfigError(f"tune.name must be a non-empty name without '/', got {self.name!r}")


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: the data, the model, Algorithm 1, evaluation, the search and the population."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)


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
