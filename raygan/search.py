"""The search space, the scheduler (PBT by default, ASHA, random search) and the Tuner.

A trial's Tune config is ``{"experiment": <the whole ExperimentConfig as a dict>, "seed": ...,
<one key per row of raygan.hyperparameters>}``: the searched hyperparameters at the top (where
schedulers can see and mutate them), the rest of the experiment unchanged.
"""

from __future__ import annotations

import functools
import logging
import math
import signal
import threading
from collections.abc import Callable
from typing import Any

import pyarrow.fs

from ray import tune
from ray.tune.execution.placement_groups import PlacementGroupFactory
from ray.tune.schedulers import (
    ASHAScheduler,
    FIFOScheduler,
    PopulationBasedTraining,
    TrialScheduler,
)
from ray.tune.schedulers.resource_changing_scheduler import (
    DistributeResources,
    DistributeResourcesToTopJob,
    ResourceChangingScheduler,
)
from ray.tune.search import BasicVariantGenerator

from raygan import hyperparameters, keys
from raygan.config import ConfigError, ExperimentConfig, SearchConfig, to_dict
from raygan.hyperparameters import LOG_UNIFORM, TRIAL_SEED, UNIFORM, Hyperparameter
from raygan.trainable import torch_threads

# Trials are ranked on validation data only, never the test set, with the collapse rule
# (raygan.ranking): the scheduler stops, copies and feeds the trials the final ranking would pick.
METRIC = keys.RANK_SCORE
MODE = "max"
CTRL_C = threading.Event()  # set by NoteCtrlC: clear it before Tuner.fit(), read it after

logger = logging.getLogger(__name__)


class NoteCtrlC(tune.Callback):
    """Notes a Ctrl-C during ``Tuner.fit()`` in :data:`CTRL_C`.

    Tune catches SIGINT itself: it saves the experiment's state and returns from ``fit()`` as if
    the run had finished (its trials come back TERMINATED), leaving no other trace of the interrupt.
    """

    def setup(self, **info: Any) -> None:
        tune_handler = signal.getsignal(signal.SIGINT)  # Tune installs its handler just before this
        if threading.current_thread() is not threading.main_thread() or not callable(tune_handler):
            return

        def note_and_forward(signum: int, frame: Any) -> None:
            CTRL_C.set()
            tune_handler(signum, frame)

        signal.signal(signal.SIGINT, note_and_forward)


def _domain(h: Hyperparameter, search: SearchConfig) -> Any:
    values = h.values(search)
    if h.kind == LOG_UNIFORM:
        return tune.loguniform(*values)
    if h.kind == UNIFORM:
        return tune.uniform(*values)
    return tune.choice(list(values))


def param_space(config: ExperimentConfig) -> dict[str, Any]:
    """Tune's param_space: a domain per row of the hyperparameter table, plus the fixed experiment.

    A row whose search range is a single value is fixed to that value (so a YAML file can pin
    any hyperparameter by giving ``[x, x]`` or a one-element list); where that value is the
    experiment's own setting the trial simply runs the experiment's settings (a pinned momentum
    then keeps the experiment's ramp).
    """
    # Each trial draws its own initialisation seed; the draw itself is seeded (tune_config).
    space: dict[str, Any] = {"experiment": to_dict(config), TRIAL_SEED: tune.randint(0, 2**31 - 1)}
    for h in hyperparameters.table():
        values = h.values(config.search)
        if h.searched(config.search):
            space[h.name] = _domain(h, config.search)
        elif values and values[0] != h.base_value(config):
            space[h.name] = values[0]
    return space


def _mutations(search: SearchConfig) -> dict[str, Any]:
    # PBT perturbs a search Domain by multiplying the value by 0.8 or 1.2: right for the continuous
    # settings, wrong for the categorical ones (a G loss's name times 1.2 is a TypeError that stops
    # the whole experiment; k = 3 * 1.2 becomes 4, outside the search). Those go to PBT as lists.
    # Lineage settings are not mutated at all: PBT then copies them from the donor with its weights.
    return {
        h.name: _domain(h, search) if h.continuous else list(h.values(search))
        for h in hyperparameters.table()
        if h.mutable and h.searched(search)
    }


def _clip_to_search(config: dict[str, Any], search: SearchConfig) -> dict[str, Any]:
    """PBT's custom_explore_fn: a scaled continuous value stays within its search range
    (0.9 * 1.2 is a momentum no trial can run)."""
    for h in hyperparameters.table():
        if h.continuous and h.name in config:
            low, high = h.values(search)
            config[h.name] = min(max(config[h.name], low), high)
    return config


def checkpoints_pbt_needs(config: ExperimentConfig) -> int:
    """The fewest checkpoints per trial (``tune.checkpoints_kept``) with which PBT never finds its
    donor's checkpoint deleted.

    PBT records a top trial's checkpoint at a perturbation and hands it to the trials that copy
    it until that trial's next perturbation. A copy restores it when it next starts, which, with
    more trials than slots, can be after the donor has trained on; but PBT starts the least
    advanced trials first, so that is before the donor trains past its next perturbation. Until
    then the donor saves up to ceil(perturbation_interval / checkpoint_every) more checkpoints,
    each pushing the oldest kept one out: one more than that keeps the recorded one on disk.
    """
    return math.ceil(config.search.perturbation_interval / config.tune.checkpoint_every) + 1


def _on_storage(checkpoint: Any) -> bool:
    """Whether a Tune checkpoint's directory still exists on its storage."""
    info = checkpoint.filesystem.get_file_info(checkpoint.path)
    return info.type == pyarrow.fs.FileType.Directory


class BudgetedPBT(PopulationBasedTraining):
    """PopulationBasedTraining that never restores a donor checkpoint that is gone from storage.

    :func:`checkpoints_pbt_needs` keeps the donor's checkpoint within ``tune.checkpoints_kept``;
    should it be gone all the same (deleted by hand, lost storage), the exploit is skipped as PBT
    skips a donor without a checkpoint, instead of failing the copying trial on a missing
    directory. ``skipped_exploits`` counts them.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.skipped_exploits = 0

    def _exploit(self, tune_controller: Any, trial: Any, trial_to_clone: Any) -> None:
        checkpoint = self._trial_state[trial_to_clone].last_checkpoint
        if checkpoint is not None and not _on_storage(checkpoint):
            self.skipped_exploits += 1
            logger.warning("PBT: trial %s's checkpoint %s is gone from storage; trial %s goes on without copying it",
                           trial_to_clone.trial_id, checkpoint.path, trial.trial_id)
            return
        super()._exploit(tune_controller, trial, trial_to_clone)


class RecheckedASHA(ASHAScheduler):
    """Tune's ASHA, whose promotions are checked again as later trials reach the rung.

    ASHA decides when a trial reaches a rung, against the trials that reached it before: the first
    to arrive always goes on. Trials that train at the same pace reach every rung in the same
    order, so a faster but worse trial is never compared with the better one behind it; on seed 0
    of the default run two trials shared the cores to the end that way (about 9,000 iterations each).
    Here each new score at a rung re-reads the rung with ASHA's own cutoff (the top
    1/reduction_factor of the scores recorded there), and a trial recorded there below it stops at
    its next result. Once every trial has reached a rung, those still going on from it are the
    ones synchronous successive halving would keep; none waits for the others.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.demoted: set[str] = set()  # trial ids below a rung's cutoff, stopped at their next result

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        bracket = self._trial_info.get(trial.trial_id)
        if bracket is not None:
            for _, recorded in bracket._rungs:  # (milestone, {trial id: score x mode's sign})
                cutoff = bracket.cutoff(recorded)
                if cutoff is not None:
                    self.demoted.update(t for t, score in recorded.items() if score < cutoff)
        if action == TrialScheduler.CONTINUE and trial.trial_id in self.demoted:
            self._num_stopped += 1
            return TrialScheduler.STOP
        return action


def make_scheduler(config: ExperimentConfig, trial_resources: dict[str, float] | None = None,
                   reserved: dict[str, float] | None = None) -> TrialScheduler:
    """The trial scheduler named by ``config.tune.scheduler``, inside Tune's ResourceChangingScheduler
    unless ``tune.reallocate`` is none.

    Args:
        config: the experiment.
        trial_resources: one trial's request, ``{"CPU": c, "GPU": g}`` (default: tune.cpus_per_trial,
            no GPU): the unit by which a trial's share grows.
        reserved: what the cluster holds outside Tune's trials (the evaluator's CPUs and GPU
            share), never handed to a trial.
    """
    base = _base_scheduler(config)
    if config.tune.reallocate == "none":
        return base
    unit = {k: v for k, v in (trial_resources or {"CPU": config.tune.cpus_per_trial}).items() if v}
    kwargs = {"add_bundles": False, "increase_by": unit, "reserve_resources": dict(reserved or {})}
    if config.tune.reallocate == "best":
        allocation = DistributeResourcesToTopJob(metric=METRIC, mode=MODE, **kwargs)
    else:
        allocation = DistributeResources(**kwargs)
    return ResourceChangingScheduler(base_scheduler=base, resources_allocation_function=WhenItChangesTheRun(allocation))


class WhenItChangesTheRun:
    """Tune's allocation function, applied only where the new resources change how the trial runs,
    and only as far as one node holds them.

    A change of resources costs a restart (checkpoint, a new actor, restore: seconds of a trial's
    time). Half a CPU more changes nothing for a trial whose torch threads are whole cores
    (:func:`raygan.trainable.torch_threads`): 0.5 and 1.0 CPUs both run one thread. So a new
    allocation is passed on only where it changes the thread count or the GPU share.

    Tune's DistributeResources shares out the cluster's total, but a trial is one process on one
    node: on three 1-CPU workers, 1.5 CPUs each for two trials is a request no node can place, and
    the trial would wait forever. Each resource is capped at the largest node's (``node_capacity``,
    by default read from Ray's nodes).
    """

    def __init__(self, allocation: DistributeResources,
                 node_capacity: Callable[[], dict[str, float]] | None = None) -> None:
        self.allocation = allocation
        self.node_capacity = node_capacity or largest_node

    def __call__(self, tune_controller: Any, trial: Any, result: dict[str, Any], scheduler: Any) -> Any:
        new = self.allocation(tune_controller, trial, result, scheduler)
        if new is None:
            return None
        old = trial.placement_group_factory.required_resources
        now = dict(new.required_resources)
        if _runs_alike(old, now):  # the common case, decided before asking Ray for its nodes
            return None
        for name, most in self.node_capacity().items():
            if now.get(name, 0.0) > most:
                now[name] = max(most, old.get(name, 0.0))
        if _runs_alike(old, now):
            return None
        return new if now == new.required_resources else PlacementGroupFactory([{k: v for k, v in now.items() if v}])


def _runs_alike(old: dict[str, float], now: dict[str, float]) -> bool:
    """Whether a trial would run the same on ``now`` as on ``old``: the same torch threads and GPU share."""
    return torch_threads(old.get("CPU", 0.0)) == torch_threads(now.get("CPU", 0.0)) and old.get("GPU", 0.0) == now.get("GPU", 0.0)


def largest_node() -> dict[str, float]:
    """The most CPUs and GPUs any one live node of the connected Ray cluster declares."""
    import ray

    most: dict[str, float] = {}
    for node in ray.nodes() if ray.is_initialized() else []:
        if node.get("Alive"):
            for name in ("CPU", "GPU"):
                most[name] = max(most.get(name, 0.0), float(node["Resources"].get(name, 0.0)))
    return most


def _base_scheduler(config: ExperimentConfig) -> TrialScheduler:
    """PBT, ASHA or FIFO, as ``config.tune.scheduler`` names it.

    PBT perturbs every ``search.perturbation_interval`` training iterations: the bottom quantile
    copies a top trial's checkpoint (weights, optimiser state) and its lineage settings, then each
    continuous hyperparameter is scaled by 0.8 or 1.2 (kept within its search range) or resampled,
    and each choice moves to a neighbouring value of its list or is resampled
    (:mod:`raygan.hyperparameters` says which is which). ASHA is successive halving: at each rung
    (grace_period, then times reduction_factor) a trial below the top 1/reduction_factor of the
    trials that reached the rung stops, including one that went on before the others got there
    (:class:`RecheckedASHA`).

    Raises:
        ConfigError: PBT without a searched hyperparameter, or with fewer kept checkpoints than
            :func:`checkpoints_pbt_needs`.
    """
    search, name = config.search, config.tune.scheduler
    if name == "pbt":
        mutations = _mutations(search)
        if not mutations:
            raise ConfigError("the PBT scheduler needs at least one searched hyperparameter; widen a search range or use --scheduler random")
        needed = checkpoints_pbt_needs(config)
        if config.tune.checkpoints_kept < needed:
            raise ConfigError(
                f"tune.checkpoints_kept {config.tune.checkpoints_kept} is too few for PBT: a donor saves up to {needed - 1} "
                f"checkpoints between perturbations, so keep at least {needed} (or raise tune.checkpoint_every)"
            )
        return BudgetedPBT(
            time_attr="training_iteration",
            perturbation_interval=search.perturbation_interval,
            hyperparam_mutations=mutations,
            quantile_fraction=search.quantile_fraction,
            resample_probability=search.resample_probability,
            custom_explore_fn=functools.partial(_clip_to_search, search=search),
            log_config=True,
        )
    if name == "asha":
        return RecheckedASHA(
            time_attr="training_iteration",
            max_t=config.tune.max_iterations,
            grace_period=min(search.grace_period, config.tune.max_iterations),
            reduction_factor=search.reduction_factor,
        )
    return FIFOScheduler()


def decision_steps(config: ExperimentConfig) -> frozenset[int]:
    """The Tune steps at which the scheduler reads a trial's score: ASHA's rungs (grace_period x
    reduction_factor^i below max_iterations, as Tune's ``_Bracket`` lays them out), PBT's
    perturbations (every perturbation_interval steps); empty for the random search.

    A trial scores at each of them whatever ``eval.every`` says: a rung or a perturbation read
    with a stale score would stop, keep or replace a trial on what it was, not what it is.
    """
    max_t = config.tune.max_iterations
    if config.tune.scheduler == "pbt":
        # Tune's PBT perturbs a trial interval steps after its last perturbation, and a clone takes
        # its donor's (and the donor's checkpoint from then): with a result every step, multiples.
        interval = config.search.perturbation_interval
        return frozenset(range(interval, max_t + 1, interval))
    if config.tune.scheduler != "asha":
        return frozenset()
    rf = config.search.reduction_factor
    grace = min(config.search.grace_period, max_t)
    count = int(math.log(max_t / grace) / math.log(rf) + 1)  # Tune's MAX_RUNGS for its one bracket
    return frozenset(grace * rf**k for k in range(count))


def _base_point(config: ExperimentConfig) -> list[dict[str, Any]]:
    """The experiment's own hyperparameters as the first trial, where the search asks for it."""
    if not config.search.start_from_base:
        return []
    # A hyperparameter pinned to one value (a search range [x, x]) stays pinned in this trial too.
    return [{h.name: h.base_value(config) for h in hyperparameters.table() if h.searched(config.search)}]


def tune_config(config: ExperimentConfig, trial_resources: dict[str, float] | None = None,
                reserved: dict[str, float] | None = None) -> tune.TuneConfig:
    """Tune's TuneConfig: metric, scheduler (see :func:`make_scheduler` for the resources), population
    size, time budget, actor reuse."""
    return tune.TuneConfig(
        metric=METRIC,
        mode=MODE,
        scheduler=make_scheduler(config, trial_resources, reserved),
        num_samples=config.tune.num_trials,
        search_alg=BasicVariantGenerator(points_to_evaluate=_base_point(config), random_state=config.tune.seed),
        time_budget_s=config.tune.time_budget_s,
        # PBT's exploit resets an actor in place instead of starting a new one; Tune's
        # ResourceChangingScheduler needs a new actor for each trial whose resources change.
        reuse_actors=config.tune.reallocate == "none",
    )
