"""TrialMonitor and the experiment summary, read back with TensorBoard's own event reader (no Ray)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.plugins.hparams import summary_v2 as hp

from raygan.monitor import (
    HPARAMS_METRICS,
    SAMPLES_TAG,
    SUMMARY_FILE,
    TrialMonitor,
    write_experiment_summary,
)

HPARAMS = {"k": 3, "lr_d": 0.05, "lr_g": 0.12, "momentum": 0.6, "prior": "gaussian", "g_loss": "minimax", "seed": 7}
DOMAINS = {"k": hp.Discrete([1, 2, 3, 5]), "momentum": hp.RealInterval(0.3, 0.9), "prior": hp.Discrete(["uniform", "gaussian"])}


def trial_result(step: int, parzen: float = -math.inf, k: int = 3) -> dict:
    """A result dict shaped like GANTrainable._result's, plus Tune's own keys."""
    return {
        "eval/parzen_valid_ll": parzen,
        "eval/sigma": math.nan if parzen == -math.inf else 0.2,
        "eval/seconds": 0.01,
        "perf/iterations_per_s": 40.0 + step,
        "algorithm/iteration": 20 * step,
        "hparams/k": k,
        "hparams/lr_d": 0.05,
        "hparams/lr_g": 0.12,
        "hparams/momentum": 0.6,
        "diverged": False,
        "loss/d": 1.3,
        "loss/g": 0.8,
        "d/real": 0.5 + 0.01 * step,
        "d/fake": 0.5 - 0.01 * step,
        "training_iteration": step,
        "trial_id": "abc",
        "done": False,
    }


def load(logdir: Path) -> ea.EventAccumulator:
    """Every event of a run, nothing sampled away."""
    acc = ea.EventAccumulator(str(logdir), size_guidance={ea.SCALARS: 0, ea.IMAGES: 0, ea.TENSORS: 0, ea.HISTOGRAMS: 0})
    return acc.Reload()


def test_scalars_are_written_under_the_result_dicts_grouped_tags(tmp_path):
    monitor = TrialMonitor(tmp_path / "trial", HPARAMS)
    first = monitor.log_step(1, trial_result(1))  # before the first evaluation
    monitor.log_step(2, trial_result(2, parzen=-812.5))
    monitor.log_step(3, {**trial_result(3, parzen=-790.0, k=5), "loss/d": math.nan})  # a PBT mutation, a divergence
    monitor.close()

    assert "eval/parzen_valid_ll" not in first and "eval/sigma" not in first  # "not evaluated yet" is no score
    events = load(tmp_path / "trial")
    expected = {"loss/d", "loss/g", "d/real", "d/fake", "eval/parzen_valid_ll", "eval/sigma", "eval/seconds",
                "perf/iterations_per_s", "hparams/k", "hparams/lr_d", "hparams/lr_g", "hparams/momentum"}
    assert set(events.Tags()["scalars"]) == expected  # Tune's bookkeeping and flags are not logged

    def series(tag):
        return [(e.step, e.value) for e in events.Scalars(tag)]

    assert series("eval/parzen_valid_ll") == [(2, -812.5), (3, -790.0)]
    assert series("hparams/k") == [(1, 3.0), (2, 3.0), (3, 5.0)]  # the mutation is a step in the curve
    assert [s for s, _ in series("d/real")] == [1, 2, 3]
    assert series("d/real")[0][1] == pytest.approx(0.51)
    assert math.isnan(series("loss/d")[-1][1])  # a diverged trial shows it rather than hiding it


def test_sample_grids_hold_the_given_images(tmp_path):
    monitor = TrialMonitor(tmp_path / "trial", HPARAMS)
    images = torch.zeros(64, 1, 28, 28)
    images[0] = 1.0  # the first sample white, the rest black
    for step in (2, 4, 6):
        monitor.log_samples(step, images * step / 6)
    monitor.close()

    grids = load(tmp_path / "trial").Images(SAMPLES_TAG)
    assert [g.step for g in grids] == [2, 4, 6]
    side = 8 * (28 + 1) + 1  # 8 x 8 samples, 1-pixel borders
    assert all((g.width, g.height) == (side, side) for g in grids)
    png = Image.open(io.BytesIO(grids[-1].encoded_image_string))
    assert png.mode == "L"  # grey data, a grey grid
    last = np.asarray(png)
    assert last.shape == (side, side)
    assert last[1:29, 1:29].min() == 255 and last[1:29, 30:58].max() == 0  # sample 0, then sample 1
    first = np.asarray(Image.open(io.BytesIO(grids[0].encoded_image_string)).convert("L"))
    assert first[1:29, 1:29].mean() == pytest.approx(255 / 3, abs=1)  # intensity 2/6


def test_colour_samples_make_a_colour_grid(tmp_path):
    monitor = TrialMonitor(tmp_path / "trial", HPARAMS)
    images = torch.zeros(4, 3, 8, 8)
    images[0, 0] = 1.0  # a red first sample (CIFAR-10's conv pair), the rest black
    monitor.log_samples(1, images)
    monitor.close()

    (grid,) = load(tmp_path / "trial").Images(SAMPLES_TAG)
    assert (grid.width, grid.height) == (2 * 9 + 1, 2 * 9 + 1)
    png = Image.open(io.BytesIO(grid.encoded_image_string))
    assert png.mode == "RGB"
    pixels = np.asarray(png)
    assert (pixels[1:9, 1:9] == [255, 0, 0]).all() and (pixels[1:9, 10:18] == 0).all()


def test_hparams_summary_sits_in_the_scalars_run_with_names_values_and_metrics(tmp_path):
    monitor = TrialMonitor(tmp_path / "trial", HPARAMS, domains=DOMAINS)
    monitor.log_step(1, trial_result(1, parzen=-800.0))
    monitor.log_hparams({**HPARAMS, "k": 99}, {"eval/parzen_valid_ll": -800.0, "eval/final_only": 1.5})
    monitor.close()

    assert [p.name for p in (tmp_path / "trial").iterdir() if p.is_dir()] == []  # no add_hparams sub-run
    events = load(tmp_path / "trial")
    content = events.PluginTagToContent("hparams")
    assert set(content) == {hparams_metadata.EXPERIMENT_TAG, hparams_metadata.SESSION_START_INFO_TAG}
    for tag in content:
        assert events.SummaryMetadata(tag).plugin_data.plugin_name == "hparams"

    start = hparams_metadata.parse_session_start_info_plugin_data(content[hparams_metadata.SESSION_START_INFO_TAG])
    values = {name: getattr(v, v.WhichOneof("kind")) for name, v in start.hparams.items()}
    assert values == {**HPARAMS, "k": 3.0, "seed": 7.0}  # the first configuration is kept
    assert start.group_name == "trial"  # each trial is its own group

    experiment = hparams_metadata.parse_experiment_plugin_data(content[hparams_metadata.EXPERIMENT_TAG])
    assert [m.name.tag for m in experiment.metric_infos] == list(HPARAMS_METRICS)
    infos = {i.name: i for i in experiment.hparam_infos}
    assert set(infos) == set(HPARAMS)
    assert infos["prior"].type == api_pb2.DATA_TYPE_STRING
    assert {v.string_value for v in infos["prior"].domain_discrete.values} == {"uniform", "gaussian"}
    assert (infos["momentum"].domain_interval.min_value, infos["momentum"].domain_interval.max_value) == (0.3, 0.9)
    assert infos["g_loss"].type == api_pb2.DATA_TYPE_STRING and infos["lr_d"].type == api_pb2.DATA_TYPE_FLOAT64
    assert infos["k"].differs and infos["prior"].differs and not infos["lr_d"].differs  # searched ones differ

    # A metric value log_step already wrote at the latest step is not written twice; a new one is.
    assert [(e.step, e.value) for e in events.Scalars("eval/parzen_valid_ll")] == [(1, -800.0)]
    assert [(e.step, e.value) for e in events.Scalars("eval/final_only")] == [(1, 1.5)]


def test_histograms_only_when_asked(tmp_path):
    g, d = torch.nn.Linear(2, 3), torch.nn.Sequential(torch.nn.Linear(3, 1))
    with torch.no_grad():
        g.weight.copy_(torch.arange(6.0).view(3, 2))
        g.bias.zero_()
    quiet = TrialMonitor(tmp_path / "quiet", HPARAMS)
    quiet.log_histograms(1, g, d)
    quiet.close()
    loud = TrialMonitor(tmp_path / "loud", HPARAMS, histograms=True)
    loud.log_histograms(1, g, d)
    loud.close()

    assert load(tmp_path / "quiet").Tags()["histograms"] == []
    histograms = load(tmp_path / "loud")
    assert set(histograms.Tags()["histograms"]) == {"weights/g/weight", "weights/g/bias", "weights/d/0.weight", "weights/d/0.bias"}
    weight = histograms.Histograms("weights/g/weight")[0].histogram_value
    assert (weight.min, weight.max, weight.num, weight.sum, weight.sum_squares) == (0, 5, 6, 15, 55)
    assert sum(weight.bucket) == 6 and weight.bucket[0] == 1 and weight.bucket[-1] == 1
    assert weight.bucket_limit[-1] == pytest.approx(5)
    bias = histograms.Histograms("weights/g/bias")[0].histogram_value  # constant: bins around it
    assert (bias.num, sum(bias.bucket), bias.min, bias.max) == (3, 3, 0, 0)


def test_a_restored_trial_continues_its_curves_instead_of_doubling_back(tmp_path):
    first = TrialMonitor(tmp_path / "crashed", HPARAMS)
    for step in range(1, 7):
        first.log_step(step, {"loss/d": float(step)})
    first.close()  # crashed after step 6; its last checkpoint was step 4
    again = TrialMonitor(tmp_path / "crashed", {**HPARAMS, "k": 1})
    again.resume_at(5)
    for step in (5, 6, 7):
        again.log_step(step, {"loss/d": 10.0 + step})
    again.close()
    restarted = TrialMonitor(tmp_path / "restarted", HPARAMS)  # a new actor with no restore hides nothing
    restarted.log_step(1, {"loss/d": 1.0})
    restarted.close()
    TrialMonitor(tmp_path / "restarted", HPARAMS).close()

    events = load(tmp_path / "crashed")
    assert [(e.step, e.value) for e in events.Scalars("loss/d")] == [(1, 1), (2, 2), (3, 3), (4, 4), (5, 15), (6, 16), (7, 17)]
    start = hparams_metadata.parse_session_start_info_plugin_data(
        events.PluginTagToContent("hparams")[hparams_metadata.SESSION_START_INFO_TAG])
    assert start.hparams["k"].number_value == 3  # the trial's configuration survives the restart
    assert [(e.step, e.value) for e in load(tmp_path / "restarted").Scalars("loss/d")] == [(1, 1.0)]


def test_close_twice_is_harmless(tmp_path):
    monitor = TrialMonitor(tmp_path / "trial", HPARAMS)
    monitor.log_step(1, {"loss/d": 1.25})
    monitor.close()
    files = {p: p.read_bytes() for p in (tmp_path / "trial").iterdir()}
    monitor.close()  # no error, and nothing more written
    assert {p: p.read_bytes() for p in (tmp_path / "trial").iterdir()} == files
    assert [s.value for s in load(tmp_path / "trial").Scalars("loss/d")] == [1.25]


def test_experiment_summary_has_the_leaderboard_and_the_best_trials_numbers(tmp_path):
    rows = [
        {"trial_id": "t_1", "parzen_valid_ll": -790.25, "iterations": 4, "status": "OK", "config": {"k": 2, "prior": "uniform"}},
        {"trial_id": "t_0", "parzen_valid_ll": -math.inf, "iterations": 1, "status": "ERROR", "config": {"k": 1, "prior": "gaussian"}},
    ]
    summary = {
        "trial_id": "t_1", "training_iteration": 4, "parzen_valid_ll": -790.25, "parzen_test_ll": -801.5,
        "parzen_test_se": 2.25, "sigma": 0.2, "config": {"k": 2, "prior": "uniform"},
        "reference": {"parzen_valid_ll": -700.0, "parzen_test_ll": -702.0, "parzen_test_se": 1.5, "sigma": 0.1},
    }
    text = write_experiment_summary(tmp_path / "summary", rows, summary)

    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| # | trial | valid LL (nats) | steps | status | k | prior")
    assert table[1] == "| 1 | t_1 | -790.25 | 4 | OK | 2 | uniform |"
    assert table[2] == "| 2 | t_0 | -inf | 1 | ERROR | 1 | gaussian |"
    assert "-801.50 ± 2.25" in text and "sigma 0.2" in text and "-702.00 ± 1.50" in text
    assert (tmp_path / "summary" / SUMMARY_FILE).read_text() == text

    events = load(tmp_path / "summary")
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert scalars["best/parzen_test_ll"] == [(4, -801.5)]
    assert scalars["best/parzen_valid_ll"] == [(4, -790.25)]
    assert scalars["reference/parzen_test_ll"] == [(4, -702.0)]
    texts = {tag: events.Tensors(tag)[0].tensor_proto.string_val[0].decode() for tag in events.Tags()["tensors"]}
    assert any("| 1 | t_1 |" in t for t in texts.values()) and any("-801.50 ± 2.25" in t for t in texts.values())
