"""The config loader: property-based tests (hypothesis) of build / load_config, and the YAML files.

Properties: valid settings round-trip unchanged through to_dict -> build and through a YAML
file; any unknown key at any level, and any value of the wrong type anywhere, is a ConfigError
with a one-line message (never another exception type); the validation rules reject what they
should and name the valid choices.
"""

from __future__ import annotations

import math
import types
import typing

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from raygan.config import (
    ARCHS,
    CALIBRATIONS,
    OPTIMIZERS,
    REALLOCATE,
    REFINE_METHODS,
    DATASETS,
    G_LOSSES,
    INITS,
    PRIORS,
    SCHEDULERS,
    ConfigError,
    DataConfig,
    EvalConfig,
    ExperimentConfig,
    ModelConfig,
    SearchConfig,
    TrainConfig,
    TuneConfig,
    build,
    is_dataset_path,
    is_factory,
    load_config,
    replace,
    to_dict,
)
from raygan.errors import UserError

SECTIONS: dict[str, type] = typing.get_type_hints(ExperimentConfig)  # section name -> its dataclass
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _fields(cls: type) -> dict[str, typing.Any]:
    return typing.get_type_hints(cls)


# ---- strategies for valid values, one per setting ---------------------------------------------

finite = dict(allow_nan=False, allow_infinity=False)
positive = st.floats(min_value=1e-9, max_value=1e6, **finite)
unit = st.floats(min_value=0.0, max_value=1.0, exclude_max=True, **finite)
# Printable names: PyYAML itself does not round-trip some control characters (e.g. U+0085).
names = st.text(st.characters(categories=("L", "N", "P", "S", "Zs"), exclude_characters="/"), min_size=1, max_size=12)


# Absolute paths, as DataConfig and EvalConfig keep a user's paths (a relative one is made absolute).
abs_paths = names.filter(lambda n: n not in (".", "..")).map(lambda n: "/data/" + n)
shares = st.tuples(*[st.floats(0.01, 1.0, **finite)] * 3).map(lambda t: tuple(x / sum(t) for x in t))


def _pair(low: float, high: float):
    return st.tuples(st.floats(low, high, **finite), st.floats(low, high, **finite)).map(lambda p: tuple(sorted(p)))


def _subset(choices):
    return st.lists(st.sampled_from(choices), min_size=1, max_size=len(choices), unique=True).map(tuple)


VALID: dict[str, dict[str, st.SearchStrategy]] = {
    "data": {
        "name": st.sampled_from(DATASETS) | abs_paths | abs_paths.map(lambda p: p + ".npz"),
        "root": st.none() | names,
        "download": st.booleans(),
        "resize": st.none() | st.integers(1, 512),
        "split": shares,
        "split_seed": st.integers(0, 2**63 - 1),
    },
    "model": {
        "arch": st.sampled_from(ARCHS),
        "noise_dim": st.integers(1, 1000),
        "prior": st.sampled_from(PRIORS),
        "g_hidden": st.lists(st.integers(1, 5000), min_size=1, max_size=4).map(tuple),
        "d_hidden": st.lists(st.integers(1, 5000), min_size=1, max_size=4).map(tuple),
        "d_pieces": st.integers(1, 10),
        "d_input_dropout": unit,
        "d_hidden_dropout": unit,
        "d_max_norm": st.none() | positive,
        "conv_width": st.integers(1, 512),
        "d_extra_convs": st.integers(0, 4),
        "g_marginal_bias": st.booleans(),
        "conditional": st.booleans(),
        "init": st.sampled_from(INITS),
    },
    "train": {
        "k": st.integers(1, 20),
        "batch_size": st.integers(1, 10_000),
        "lr_d": positive,
        "lr_g": positive,
        "momentum": unit,
        "final_momentum": unit,
        "optimizer": st.sampled_from(OPTIMIZERS),
        "momentum_ramp_epochs": st.floats(0.0, 1e6, **finite),
        "beta2": unit,
        "lr_decay": st.floats(1.0, 2.0, **finite),
        "min_lr": st.floats(0.0, 1.0, **finite),
        "g_loss": st.sampled_from(G_LOSSES),
        "g_average": unit,
        "r1": st.floats(0.0, 1e3, **finite),
        "r1_every": st.integers(1, 64),
        "seed": st.integers(0, 2**63 - 1),
    },
    "eval": {
        "num_samples": st.integers(1, 10**6),
        "ranking_samples": st.integers(1, 10**6),
        "histograms": st.booleans(),
        "sigmas": st.lists(positive, min_size=1, max_size=12).map(tuple),
        "every": st.integers(1, 100),
        "chunk_size": st.integers(1, 10**5),
        "cpus": positive,
        "gpus": st.none() | st.floats(0.0, 8.0, **finite),
        "seed": st.integers(0, 2**63 - 1),
        "quality": st.sampled_from([None, True]),
        "classifier": st.none() | abs_paths.map(lambda p: p + ".pt"),
        "rank_by": st.just("parzen"),
        "min_classes": st.none() | st.integers(1, 1000),
        "min_class_share": st.floats(1e-6, 0.999, **finite),
        "replicas": st.integers(1, 64),
    },
    "search": {
        "arch": st.just(()) | _subset((*ARCHS, "tests.plugin_gan:pair")),
        "optimizer": st.just(()) | _subset(OPTIMIZERS),
        "k": st.lists(st.integers(1, 20), min_size=1, max_size=5).map(tuple),
        "momentum": _pair(0.0, 0.999),
        "lr_d": _pair(1e-6, 1.0),
        "lr_g": _pair(1e-6, 1.0),
        "prior": _subset(PRIORS),
        "g_loss": _subset(G_LOSSES),
        "perturbation_interval": st.integers(1, 100),
        "quantile_fraction": st.floats(1e-6, 0.5, **finite),
        "resample_probability": st.floats(0.0, 1.0, **finite),
        "grace_period": st.integers(1, 100),
        "reduction_factor": st.integers(2, 10),
        "start_from_base": st.booleans(),
    },
    "tune": {
        "num_trials": st.integers(1, 1000),
        "scheduler": st.sampled_from(SCHEDULERS),
        "cpus_per_trial": positive,
        "gpus_per_trial": st.none() | st.floats(0.0, 8.0, **finite),
        "time_budget_s": st.none() | positive,
        "max_iterations": st.integers(1, 10**6),
        "iterations_per_step": st.none() | st.integers(1, 10**6),
        "checkpoint_every": st.integers(1, 100),
        "checkpoints_kept": st.integers(1, 100),
        "default_gpu_fraction": st.floats(1e-3, 8.0, **finite),
        "max_failures": st.integers(-1, 100),
        "storage_path": names,
        "name": names,
        "resume": st.booleans(),
        "address": st.none() | st.sampled_from(["auto", "ray://head:10001"]),
        "seed": st.integers(0, 2**63 - 1),
        "reallocate": st.sampled_from(REALLOCATE),
    },
    "refine": {
        "methods": st.just(()) | _subset(REFINE_METHODS),
        "calibration": st.sampled_from(CALIBRATIONS),
        "finetune_steps": st.integers(0, 10**5),
        "finetune_lr": positive,
        "gamma_quantile": st.none() | unit,
        "burn_in": st.integers(1, 10**6),
        "max_proposals": st.integers(1, 10**4),
        "mh_steps": st.integers(1, 1000),
        "by_class": st.booleans(),
        "confident": st.floats(0.0, 1.0, **finite),
    },
    "mixture": {"members": st.integers(1, 64), "fit_to": st.none() | st.sampled_from(["parzen", "fd", "tvd"])},
}


def test_the_strategies_cover_every_setting():
    """A setting added to a dataclass must get a strategy here, or the round-trip tests miss it."""
    assert set(VALID) == set(SECTIONS)
    for section, cls in SECTIONS.items():
        assert set(VALID[section]) == set(_fields(cls)), section


@st.composite
def valid_values(draw) -> dict[str, dict[str, typing.Any]]:
    """A nested dict of valid settings: random sections, each with a random subset of its keys."""
    out = {}
    for section in draw(st.lists(st.sampled_from(sorted(VALID)), unique=True)):
        keys = draw(st.lists(st.sampled_from(sorted(VALID[section])), unique=True))
        out[section] = {key: draw(VALID[section][key]) for key in keys}
    return out


def _as_yaml_input(values):
    """What YAML gives: lists, not tuples."""
    if isinstance(values, dict):
        return {k: _as_yaml_input(v) for k, v in values.items()}
    if isinstance(values, tuple):
        return [_as_yaml_input(v) for v in values]
    return values


# ---- round trips ----------------------------------------------------------------------------


@FAST
@given(valid_values())
def test_valid_settings_are_kept_and_round_trip_through_to_dict(values):
    config = build(ExperimentConfig, _as_yaml_input(values))
    for section, settings_ in values.items():
        for key, value in settings_.items():
            got = getattr(getattr(config, section), key)
            assert got == value and type(got) is type(value), (section, key)
    plain = to_dict(config)
    assert build(ExperimentConfig, plain) == config
    assert to_dict(build(ExperimentConfig, plain)) == plain


@FAST
@given(values=valid_values())
def test_valid_settings_round_trip_through_a_yaml_file(values, tmp_path_factory):
    config = build(ExperimentConfig, _as_yaml_input(values))
    path = tmp_path_factory.mktemp("cfg") / "experiment.yaml"
    path.write_text(yaml.safe_dump(to_dict(config), allow_unicode=True))
    assert load_config(path) == config


@given(
    lr=st.integers(1, 10**6),
    k=st.integers(1, 100).map(float),
    sigmas=st.lists(st.integers(1, 9), min_size=1, max_size=3),
)
@FAST
def test_yaml_style_numbers_are_coerced(lr, k, sigmas):
    """YAML writes 1 for 1.0 and 3.0 for 3: an int is a valid float, an integral float a valid int."""
    config = load_config(overrides={"train": {"lr_d": lr, "k": k}, "eval": {"sigmas": sigmas}})
    assert config.train.lr_d == lr and type(config.train.lr_d) is float
    assert config.train.k == k and type(config.train.k) is int
    assert config.eval.sigmas == tuple(float(s) for s in sigmas)


def test_defaults_are_valid_and_are_what_an_empty_file_gives(tmp_path):
    assert load_config() == ExperimentConfig()
    (tmp_path / "empty.yaml").write_text("")
    assert load_config(tmp_path / "empty.yaml") == ExperimentConfig()
    (tmp_path / "comments.yaml").write_text("# nothing set\n")
    assert load_config(tmp_path / "comments.yaml") == ExperimentConfig()
    assert build(ExperimentConfig, to_dict(ExperimentConfig())) == ExperimentConfig()


def test_overrides_replace_only_the_leaves_they_name(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("train:\n  k: 3\n  lr_d: 0.2\nmodel:\n  prior: gaussian\n")
    config = load_config(path, overrides={"train": {"lr_d": 0.05}, "tune": {"num_trials": 8}})
    assert (config.train.k, config.train.lr_d, config.model.prior, config.tune.num_trials) == (3, 0.05, "gaussian", 8)


def test_replace_validates():
    assert replace(TrainConfig(), k=4).k == 4
    with pytest.raises(ConfigError, match="train.k|k must be at least 1"):
        replace(TrainConfig(), k=0)


# ---- unknown keys ---------------------------------------------------------------------------

any_key = st.text(min_size=1, max_size=10) | st.integers() | st.none() | st.booleans()


@FAST
@given(values=valid_values(), section=st.sampled_from([None, *sorted(SECTIONS)]), key=any_key)
def test_an_unknown_key_at_any_level_is_a_config_error(values, section, key):
    known = set(SECTIONS) if section is None else set(_fields(SECTIONS[section]))
    assume(key not in known)
    values = _as_yaml_input(values)
    target = values if section is None else values.setdefault(section, {})
    target[key] = 1
    with pytest.raises(ConfigError) as info:
        build(ExperimentConfig, values)
    message = str(info.value)
    assert "\n" not in message
    assert repr(key) in message and "valid settings are" in message
    assert all(name in message for name in known)  # it lists what is allowed


# ---- wrong types ----------------------------------------------------------------------------

json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=6,
)


def _field_paths() -> list[tuple[str, str]]:
    return [(section, key) for section, cls in SECTIONS.items() for key in _fields(cls)]


def _wrong_for(tp) -> st.SearchStrategy:
    """Values that are never valid for annotation ``tp`` (ignoring None where tp is Optional)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        assert len(inner) == 1
        return _wrong_for(inner[0])
    dicts = st.dictionaries(st.text(max_size=3), st.integers(), min_size=1, max_size=2)
    if tp is int:
        return (
            st.text(max_size=8)  # "3" is a string, not an int
            | st.integers().map(str)
            | st.booleans()
            | st.floats().filter(lambda f: not (math.isfinite(f) and f.is_integer()))
            | st.lists(st.integers(), max_size=3)
            | dicts
        )
    if tp is float:
        return (
            st.text(max_size=8)
            | st.floats(allow_nan=False).map(repr)
            | st.booleans()
            | st.sampled_from([math.nan, math.inf, -math.inf])
            | st.integers(min_value=2**1024)  # beyond float range
            | st.integers(max_value=-(2**1024))
            | st.lists(st.floats(), max_size=3)
            | dicts
        )
    if tp is str:
        return st.integers() | st.floats() | st.booleans() | st.lists(st.text(max_size=3), max_size=3) | dicts
    if tp is bool:
        return st.integers() | st.floats() | st.sampled_from(["true", "yes", "false"]) | st.lists(st.booleans()) | dicts
    if origin is tuple:
        (elem, *rest) = args
        wrong_elements = st.lists(_wrong_for(elem), min_size=1, max_size=3)
        # a scalar where a list belongs, or a list with a wrongly typed element
        return st.integers() | st.floats() | st.text(max_size=5) | st.booleans() | dicts | wrong_elements
    raise AssertionError(f"no wrong-value strategy for {tp}")


@st.composite
def one_wrong_value(draw):
    section, key = draw(st.sampled_from(_field_paths()))
    value = draw(_wrong_for(_fields(SECTIONS[section])[key]))
    return section, key, value


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid=valid_values(), wrong=one_wrong_value())
def test_a_wrongly_typed_value_anywhere_is_a_config_error_naming_the_setting(valid, wrong):
    section, key, value = wrong
    values = _as_yaml_input(valid)
    values.setdefault(section, {})[key] = value
    with pytest.raises(ConfigError) as info:
        build(ExperimentConfig, values)
    message = str(info.value)
    assert "\n" not in message
    assert f"{section}.{key}" in message


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    where=st.sampled_from([None, *sorted(SECTIONS), *[f"{s}.{k}" for s, k in _field_paths()]]),
    value=json_like,
)
def test_arbitrary_yaml_values_give_a_config_or_a_config_error_and_nothing_else(where, value):
    """Whatever a YAML file holds at whatever place, build() returns a config or raises ConfigError."""
    if where is None:
        values = value
    elif "." in where:
        section, key = where.split(".")
        values = {section: {key: value}}
    else:
        values = {where: value}
    try:
        if not isinstance(values, dict):
            with pytest.raises(ConfigError):
                build(ExperimentConfig, {"train": values})
            return
        config = build(ExperimentConfig, values)
    except ConfigError as e:
        assert "\n" not in str(e)
    else:
        assert isinstance(config, ExperimentConfig)
        assert build(ExperimentConfig, to_dict(config)) == config


@pytest.mark.parametrize(
    "values, where",
    [
        ({"train": {"k": "3"}}, "train.k"),  # a string for an int
        ({"train": {"lr_d": "0.1"}}, "train.lr_d"),  # a string for a float
        ({"train": {"k": [1, 2]}}, "train.k"),  # a list for a scalar
        ({"train": {"lr_d": [0.1]}}, "train.lr_d"),
        ({"model": {"prior": ["uniform"]}}, "model.prior"),
        ({"train": {"k": True}}, "train.k"),  # a bool for a number
        ({"train": {"momentum": False}}, "train.momentum"),
        ({"model": {"d_max_norm": True}}, "model.d_max_norm"),
        ({"data": {"download": 1}}, "data.download"),  # a number for a bool
        ({"data": {"download": "yes"}}, "data.download"),
        ({"model": {"g_hidden": 1200}}, "model.g_hidden"),  # a scalar for a list
        ({"model": {"g_hidden": [1200, "1200"]}}, "model.g_hidden[1]"),
        ({"search": {"momentum": [0.1]}}, "search.momentum"),  # a pair of the wrong length
        ({"train": {"k": 2.5}}, "train.k"),
        ({"train": "fast"}, "train"),  # a scalar for a section
        ({"train": None}, "train"),
        ({"train": {"lr_d": 10**400}}, "train.lr_d"),  # beyond float range (was an OverflowError)
        ({"eval": {"gpus": math.nan}}, "eval.gpus"),  # .nan (was accepted)
        ({"train": {"min_lr": math.inf}}, "train.min_lr"),  # .inf (was accepted)
    ],
)
def test_wrong_types_examples(values, where):
    with pytest.raises(ConfigError) as info:
        build(ExperimentConfig, values)
    assert where in str(info.value) and "\n" not in str(info.value)


def test_config_error_is_a_user_error_and_a_value_error():
    assert issubclass(ConfigError, UserError) and issubclass(ConfigError, ValueError)


# ---- validation rules -----------------------------------------------------------------------


@FAST
@given(k=st.integers(max_value=0))
def test_k_below_one_is_rejected(k):
    with pytest.raises(ConfigError, match=r"train\.k must be at least 1"):
        build(TrainConfig, {"k": k}, "train")
    with pytest.raises(ConfigError, match=r"search\.k"):
        build(SearchConfig, {"k": [1, k]}, "search")


@FAST
@given(key=st.sampled_from(["lr_d", "lr_g"]), lr=st.floats(max_value=0.0, allow_nan=False) | st.integers(max_value=0))
def test_non_positive_learning_rates_are_rejected(key, lr):
    assume(math.isfinite(lr))
    with pytest.raises(ConfigError, match=rf"train\.{key} must be a positive number"):
        build(TrainConfig, {key: lr}, "train")


@FAST
@given(
    key=st.sampled_from(["momentum", "final_momentum"]),
    m=st.floats(max_value=0.0, exclude_max=True, allow_nan=False, allow_infinity=False)
    | st.floats(min_value=1.0, allow_nan=False, allow_infinity=False),
)
def test_momentum_outside_zero_one_is_rejected(key, m):
    with pytest.raises(ConfigError, match=rf"train\.{key} must lie in \[0, 1\)"):
        build(TrainConfig, {key: m}, "train")


@FAST
@given(m=st.floats(0.0, 1.0, exclude_max=True))
def test_momentum_inside_zero_one_is_accepted(m):
    assert build(TrainConfig, {"momentum": m, "final_momentum": m}).momentum == m


CHOICES = [
    ("data", "name", DATASETS, "dataset"),
    ("model", "prior", PRIORS, "noise prior"),
    ("model", "arch", ARCHS, "architecture"),
    ("model", "init", INITS, "initialisation"),
    ("train", "g_loss", G_LOSSES, "generator loss"),
    ("train", "optimizer", OPTIMIZERS, "optimizer"),
    ("tune", "scheduler", SCHEDULERS, "scheduler"),
]


@FAST
@given(case=st.sampled_from(CHOICES), name=st.text(max_size=20))
def test_unknown_names_are_rejected_naming_the_valid_choices(case, name):
    section, key, choices, what = case
    assume(name not in choices)
    assume(not (key == "name" and is_dataset_path(name)) and not (key == "arch" and is_factory(name)))  # a path, a factory
    with pytest.raises(ConfigError) as info:
        build(ExperimentConfig, {section: {key: name}})
    message = str(info.value)
    assert f"unknown {what} {name!r}" in message
    assert "choose one of: " + ", ".join(choices) in message
    assert "\n" not in message


@pytest.mark.parametrize("key, choices", [("prior", PRIORS), ("g_loss", G_LOSSES)])
def test_search_lists_reject_unknown_names_too(key, choices):
    with pytest.raises(ConfigError) as info:
        build(ExperimentConfig, {"search": {key: [choices[0], "nonsense"]}})
    assert "'nonsense'" in str(info.value) and all(c in str(info.value) for c in choices)


@pytest.mark.parametrize(
    "section, values, pattern",
    [
        ("model", {"noise_dim": 0}, "model.noise_dim must be at least 1"),
        ("model", {"g_hidden": []}, "model.g_hidden must be a non-empty list"),
        ("model", {"d_hidden": [240, 0]}, "model.d_hidden must be a non-empty list"),
        ("model", {"d_pieces": 0}, "model.d_pieces must be at least 1"),
        ("model", {"d_extra_convs": -1}, "model.d_extra_convs must be 0 or more"),
        ("model", {"d_input_dropout": 1.0}, r"model.d_input_dropout must lie in \[0, 1\)"),
        ("model", {"d_max_norm": 0}, "model.d_max_norm must be a positive number"),
        ("train", {"batch_size": 0}, "train.batch_size must be at least 1"),
        ("train", {"lr_decay": 0.99}, "train.lr_decay must be a finite number >= 1"),
        ("train", {"min_lr": -1e-9}, "train.min_lr must be non-negative"),
        ("train", {"momentum_ramp_epochs": -1}, "train.momentum_ramp_epochs must be a non-negative number"),
        ("train", {"g_average": 1.0}, r"train.g_average must lie in \[0, 1\)"),
        ("train", {"r1": -1.0}, r"train.r1 must be a finite number >= 0"),
        ("train", {"r1_every": 0}, r"train.r1_every must be at least 1"),
        ("eval", {"sigmas": []}, "eval.sigmas must be a non-empty list of positive numbers"),
        ("eval", {"sigmas": [0.1, 0.0]}, "eval.sigmas must be a non-empty list of positive numbers"),
        ("search", {"lr_d": [0.2, 0.1]}, r"search.lr_d must be \[low, high\] with low <= high"),
        ("search", {"momentum": [0.5, 1.0]}, r"search.momentum: train.momentum must lie in \[0, 1\), got 1.0"),
        ("search", {"quantile_fraction": 0.6}, r"search.quantile_fraction must lie in \(0, 0.5\]"),
        ("search", {"arch": ["mlp", "transformer"]}, "search.arch: unknown architecture 'transformer'"),
        ("tune", {"num_trials": 0}, r"tune.num_trials must lie in \[1, 10000\]"),
        ("tune", {"num_trials": 10**21}, r"tune.num_trials must lie in \[1, 10000\], got 1000000000000000000000"),
        ("tune", {"name": "a/b"}, "tune.name must be a non-empty name without '/'"),
        ("tune", {"max_failures": -2}, "tune.max_failures must be -1"),
    ],
)
def test_other_range_rules(section, values, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build(ExperimentConfig, {section: values})


# ---- YAML files -----------------------------------------------------------------------------


def _load_error(path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_missing_file(tmp_path):
    message = _load_error(tmp_path / "nope.yaml")
    assert "nope.yaml" in message and "does not exist" in message


def test_directory_instead_of_a_file(tmp_path):
    assert "cannot read config file" in _load_error(tmp_path)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("train: {k: 3\n", "is not valid YAML"),  # unclosed flow mapping
        ("train:\n  k: 3\n bad indent: 1\n", "is not valid YAML at line"),
        ("a: [1, 2\n", "is not valid YAML"),
        ("train:\n  k: !!python/object:os.system ls\n", "is not valid YAML"),  # safe_load refuses tags
        ("train:\n  seed: 2001-02-30\n", "is not valid YAML"),  # an impossible date (was a ValueError)
        ("- train\n- model\n", "must hold a mapping of sections, got a list"),
        ("42\n", "must hold a mapping of sections, got a int"),
        ("just a sentence\n", "must hold a mapping of sections, got a str"),
        ("trian:\n  k: 3\n", "unknown setting 'trian'; valid settings are: data, model, train, eval, search, tune"),
        ("train:\n  kk: 3\n", "unknown setting 'kk' in train; valid settings are: k, batch_size"),
        ("train: [1, 2]\n", "train must be a mapping of settings"),
        ("train:\n  k: three\n", "train.k must be an integer, got 'three'"),
    ],
)
def test_bad_yaml_files(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    message = _load_error(path)
    assert expected in message


def test_binary_file(tmp_path):
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"\xff\xfe\x00\x81garbage")
    assert "cannot read config file" in _load_error(path)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(max_size=60))
def test_any_text_file_loads_or_is_a_config_error(text, tmp_path_factory):
    path = tmp_path_factory.mktemp("any") / "x.yaml"
    path.write_text(text)
    try:
        config = load_config(path)
    except ConfigError as e:
        assert "\n" not in str(e)
    else:
        assert isinstance(config, ExperimentConfig)


def test_section_classes_build_alone_with_their_prefix():
    for section, cls in SECTIONS.items():
        assert build(cls, {}, section) == cls()
    assert isinstance(build(DataConfig, {"name": "toy-1d"}), DataConfig)
    assert isinstance(build(ModelConfig, {}), ModelConfig)
    assert isinstance(build(EvalConfig, {}), EvalConfig)
    assert isinstance(build(TuneConfig, {}), TuneConfig)


def test_gpu_requests_resolve_to_the_default_share_only_where_the_cluster_has_gpus():
    tune = TuneConfig(default_gpu_fraction=0.5)
    assert tune.gpus_for(None, cluster_gpus=2) == 0.5
    assert tune.gpus_for(None, cluster_gpus=0) == 0.0
    assert tune.gpus_for(0.125, cluster_gpus=0) == 0.125  # an explicit request stands (and is checked later)
    assert tune.gpus_for(0.0, cluster_gpus=8) == 0.0


def test_every_setting_is_documented_and_the_readme_table_is_current():
    """Each field's docstring is the one description of a setting: --help and the README reuse it."""
    from pathlib import Path

    from raygan.config import field_docs, settings_table

    for section in typing.get_type_hints(ExperimentConfig).values():
        missing = set(_fields(section)) - set(field_docs(section))
        assert not missing, f"{section.__name__}: no docstring for {sorted(missing)}"
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert settings_table() in readme, "README.md's settings table is stale: paste python -m raygan.config's output"
