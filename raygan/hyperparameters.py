"""The searched hyperparameters: one table, from which everything that names them is derived.

Each row is one dimension of the search. Its name is at once the key in a trial's Tune config,
the field of :class:`raygan.config.SearchConfig` that holds its range or choices, the field it
sets in the ``train`` or ``model`` section, its TensorBoard tag (``hparams/<name>``) and its
leaderboard column. The search space, PBT's mutations, the first trial's point, the trial's
config, the HParams dashboard's domains, the live table's columns and the leaderboard read this
table (through :func:`table`), so adding a dimension is one row here and one ``SearchConfig``
field.

How PBT treats a row follows from its kind (DESIGN: PBT lineages stay valid):

- ``log-uniform`` / ``uniform``: continuous; drawn from ``[low, high]``; PBT scales it by 0.8 or
  1.2 (or resamples it) and clips it to the range.
- ``choice``: drawn from a list; PBT moves it to a neighbouring value (or resamples it).
- ``lineage``: drawn from a list at the start and never mutated. It decides what the trained
  weights mean (architecture, noise prior, learning rule), so it travels with the weights when
  PBT copies a donor into another trial.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LOG_UNIFORM = "log-uniform"
UNIFORM = "uniform"
CHOICE = "choice"
LINEAGE = "lineage"
KINDS = (LOG_UNIFORM, UNIFORM, CHOICE, LINEAGE)


@dataclass(frozen=True)
class Hyperparameter:
    """One searched dimension; see the module docstring."""

    name: str
    kind: str
    section: str  # "train" or "model": the config section whose field ``name`` it sets
    also_sets: tuple[str, ...] = ()  # further fields of that section set to the same value

    def __post_init__(self) -> None:
        if self.kind not in KINDS or self.section not in ("train", "model"):
            raise ValueError(f"bad hyperparameter row {self}")  # a programming error, not user input

    @property
    def continuous(self) -> bool:
        return self.kind in (LOG_UNIFORM, UNIFORM)

    @property
    def mutable(self) -> bool:
        """Whether PBT may change it on a copied network."""
        return self.kind != LINEAGE

    def values(self, search: Any) -> tuple:
        """Its range ``(low, high)`` or its choices, from a :class:`~raygan.config.SearchConfig`."""
        return tuple(getattr(search, self.name))

    def searched(self, search: Any) -> bool:
        """False where the search pins it to one value (a range ``[x, x]`` or a one-element list)
        or leaves it at the experiment's own setting (an empty list)."""
        return len(set(self.values(search))) > 1

    def base_value(self, config: Any) -> Any:
        """Its value in an :class:`~raygan.config.ExperimentConfig`'s own settings."""
        return getattr(getattr(config, self.section), self.name)


TABLE: tuple[Hyperparameter, ...] = (
    Hyperparameter("arch", LINEAGE, "model"),
    Hyperparameter("optimizer", LINEAGE, "train"),
    Hyperparameter("prior", LINEAGE, "model"),
    Hyperparameter("lr_d", LOG_UNIFORM, "train"),
    Hyperparameter("lr_g", LOG_UNIFORM, "train"),
    # The searched momentum is the momentum in force: a value PBT mutates must not fade back
    # through the paper's ramp, so a trial's momentum also ends the ramp (a constant momentum).
    Hyperparameter("momentum", UNIFORM, "train", also_sets=("final_momentum",)),
    Hyperparameter("k", CHOICE, "train"),
    Hyperparameter("g_loss", CHOICE, "train"),
)

TRIAL_SEED = "seed"  # each trial's own initialisation seed, drawn by the search (train.seed)


def table() -> tuple[Hyperparameter, ...]:
    """The rows, read at call time (tests extend the table by patching :data:`TABLE`)."""
    return TABLE


def names() -> tuple[str, ...]:
    """Every searched hyperparameter's name, in table order."""
    return tuple(h.name for h in table())


def trial_hyperparameters(trial_config: dict[str, Any]) -> dict[str, Any]:
    """The table's values (and the trial's seed) out of a trial's Tune config, in table order."""
    keys = (*names(), TRIAL_SEED)
    return {k: trial_config[k] for k in keys if k in trial_config}


def apply(config: Any, values: dict[str, Any]) -> Any:
    """``config`` (an ExperimentConfig) with the table's values (and ``seed``) set in their sections."""
    from raygan.config import replace

    sections: dict[str, dict[str, Any]] = {"train": {}, "model": {}}
    for h in table():
        if h.name in values:
            for name in (h.name, *h.also_sets):
                sections[h.section][name] = values[h.name]
    if TRIAL_SEED in values:
        sections["train"]["seed"] = values[TRIAL_SEED]
    return replace(
        config,
        train=replace(config.train, **sections["train"]),
        model=replace(config.model, **sections["model"]),
    )
