"""A tiny population run end to end: every trial directory holds the TensorBoard events users watch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.plugins.hparams import metadata as hparams_metadata

from raygan.monitor import SAMPLES_TAG, SUMMARY_FILE

pytestmark = pytest.mark.ray

COMPARED_TAGS = ("loss/d", "loss/g", "d/real", "d/fake", "eval/parzen_valid_ll", "eval/queue_seconds", "hparams/k", "hparams/lr_d",
                 "hparams/momentum")


def lineage(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """What TensorBoard shows of a trial's results: a restore to step s replaces the steps from s on."""
    shown: list[tuple[int, float]] = []
    for step, value in points:
        while shown and shown[-1][0] >= step:
            shown.pop()
        shown.append((step, value))
    return shown


def resource_pauses(results: list[dict]) -> int:
    """How many times a trial's CPUs changed: each change was a pause and a restore."""
    cpus = [r["perf/cpus"] for r in results]
    return sum(a != b for a, b in zip(cpus, cpus[1:]))


def load(logdir: Path) -> ea.EventAccumulator:
    acc = ea.EventAccumulator(str(logdir), size_guidance={ea.SCALARS: 0, ea.IMAGES: 0, ea.TENSORS: 0})
    return acc.Reload()


def test_each_trial_logs_scalars_samples_and_hparams_matching_tunes_results(ray_local, tmp_path, tiny_dataset, tiny_experiment):
    from raygan import hyperparameters
    from raygan.tune import run_experiment

    config = tiny_experiment(tmp_path, name="watched")
    report = run_experiment(config, dataset=tiny_dataset(), verbose=0)

    experiment = Path(report.experiment_path)
    trial_dirs = sorted(p.parent for p in experiment.glob("*/result.json"))
    assert len(trial_dirs) == config.tune.num_trials
    for trial_dir in trial_dirs:
        assert (trial_dir / "progress.csv").stat().st_size > 0  # Tune's own result files are kept
        events = load(trial_dir)
        scalars = set(events.Tags()["scalars"])
        assert set(COMPARED_TAGS) <= scalars
        assert not any(tag.startswith("ray/") for tag in scalars)  # Tune's duplicate TBX events are off

        # The same names and numbers as Tune's results, step for step (through PBT's exploits too).
        results = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
        for tag in COMPARED_TAGS:
            logged = [(e.step, e.value) for e in events.Scalars(tag)]
            reported = lineage([(r["training_iteration"], r[tag]) for r in results if r.get(tag, float("-inf")) > float("-inf")])
            # Tune leaves out of result.json the result on which its resource-changing scheduler paused
            # the trial to move CPUs (the trial goes on from the checkpoint saved there); the trainer
            # logged that step, so TensorBoard may show steps Tune's file lacks, never the reverse.
            shown = dict(logged)
            assert [s for s, _ in logged] == sorted(shown) and set(shown) >= {s for s, _ in reported}, tag
            assert [shown[s] for s, _ in reported] == pytest.approx([v for _, v in reported], rel=1e-6), tag
            assert len(logged) - len(reported) <= resource_pauses(results), tag

        grids = events.Images(SAMPLES_TAG)  # every step is evaluated in the tiny config
        steps = [s for s, _ in lineage([(r["training_iteration"], 0.0) for r in results])]
        assert set(steps) <= {g.step for g in grids} and len(grids) - len(steps) <= resource_pauses(results)
        assert grids[0].width == grids[0].height == 8 * (4 + 1) + 1  # 64 fixed-z samples of 4x4

        content = events.PluginTagToContent("hparams")
        start = hparams_metadata.parse_session_start_info_plugin_data(content[hparams_metadata.SESSION_START_INFO_TAG])
        carried = {k for k in results[0]["config"] if k in (*hyperparameters.names(), hyperparameters.TRIAL_SEED)}
        assert set(start.hparams) == carried and {"momentum", "lr_d", "prior", "seed"} <= carried
        assert start.hparams["prior"].string_value == results[0]["config"]["prior"]
        assert start.hparams["momentum"].number_value == pytest.approx(results[0]["config"]["momentum"])

    summary = experiment / "summary"
    assert report.leaderboard[0].trial_id in (summary / SUMMARY_FILE).read_text()
    best = {tag: events.Scalars(tag)[-1].value for events in [load(summary)] for tag in events.Tags()["scalars"]}
    assert best["best/parzen_test_ll"] == pytest.approx(report.summary["parzen_test_ll"], rel=1e-6)
    assert best["reference/parzen_test_ll"] == pytest.approx(report.reference["parzen_test_ll"], rel=1e-6)
