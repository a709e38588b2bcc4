"""``python -m raygan.tune --dataset PATH`` end to end, as a user runs it: 3,000 generated 32x32 RGB
images as a labelled folder (with a plug-in model searched beside the conv pair), as an .npz read
by a named classifier, and as an unlabelled folder whose plug-in model is interrupted and resumed;
``raygan.sample`` and ``raygan.evaluate`` on each run's best generator. Tiny models, few steps."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from ray import tune

from raygan import evaluate, mixture, quality, sample
from raygan import tune as raygan_tune
from raygan.files import DATA_SPLIT_FILE

pytestmark = pytest.mark.ray

FACTORY = "tests.plugin_gan:pair"
N_IMAGES = 3000
TINY = {
    "model": {"conv_width": 4, "noise_dim": 8},
    "train": {"batch_size": 16},
    "eval": {"num_samples": 300, "ranking_samples": 300, "every": 1},
    "search": {"perturbation_interval": 2},
    "tune": {"scheduler": "pbt", "cpus_per_trial": 1, "gpus_per_trial": 0, "time_budget_s": 300, "iterations_per_step": 10, "checkpoint_every": 1},
    "mixture": {"members": 2},
}


@pytest.fixture(scope="module")
def data(tmp_path_factory, shape_images, write_images):
    """The same 3,000 images as a labelled folder (3 class subfolders), an .npz with class-name
    labels, and an unlabelled folder."""
    root = tmp_path_factory.mktemp("your_data")
    images, labels = shape_images(N_IMAGES, side=32, seed=0)
    for path in write_images(root / "labelled", images, labels):  # the unlabelled folder: the same files, loose
        (root / "unlabelled").mkdir(exist_ok=True)
        os.link(path, root / "unlabelled" / path.name)
    np.savez(root / "shapes.npz", images=images, labels=np.array(["discs", "squares", "crosses"])[labels])
    return root


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Results and classifier cache under the test's tmp_path; the classifier trained for one epoch."""
    monkeypatch.setenv(quality.CACHE_DIR_ENV, str(tmp_path / "classifiers"))
    monkeypatch.setattr(quality, "TRAIN_IMAGES", 0)
    monkeypatch.setattr(quality, "MIN_EPOCHS", 1)
    return tmp_path


def _config(tmp_path: Path, name: str, **changes) -> Path:
    values = json.loads(json.dumps(TINY))
    for section, settings in changes.items():
        values.setdefault(section, {}).update(settings)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _argv(tmp_path: Path, dataset: Path, name: str, config: Path, iterations: int = 2) -> list[str]:
    return ["--dataset", str(dataset), "--num-trials", "2", "--max-iterations", str(iterations), "--config", str(config),
            "--storage-path", str(tmp_path / "results"), "--name", name]


def _sample(best: Path, tmp_path: Path, capsys) -> np.ndarray:
    out = tmp_path / "samples.npy"
    assert sample.main(["--checkpoint", str(best / "generator.pt"), "--num", "16", "--out", str(out)]) == 0
    assert sample.main(["--checkpoint", str(best / "generator.pt"), "--num", "16", "--out", str(tmp_path / "grid.png")]) == 0
    capsys.readouterr()
    assert Image.open(tmp_path / "grid.png").mode == "RGB"
    return np.load(out, allow_pickle=False)


def _histories(experiment: Path) -> dict[str, list[dict]]:
    out = {}
    for result in experiment.glob("GANTrainable_*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        out[rows[0]["trial_id"]] = rows
    return out


def test_a_labelled_folder_trains_with_a_searched_plugin_model_samples_and_evaluates(ray_local, data, env, capsys):
    config = _config(env, "folder", model={"arch": FACTORY}, search={"arch": [FACTORY, "conv"]})
    assert raygan_tune.main(_argv(env, data / "labelled", "folder", config)) == 0
    out = capsys.readouterr().out
    assert "Leaderboard" in out and "Sample quality by" in out
    experiment = env / "results" / "folder"
    saved = yaml.safe_load((experiment / "experiment.yaml").read_text())
    assert saved["data"]["name"] == str(data / "labelled") and saved["search"]["arch"] == [FACTORY, "conv"]
    split = json.loads((experiment / DATA_SPLIT_FILE).read_text())
    assert [len(split["members"][s]) for s in ("train", "valid", "test")] == [2400, 300, 300]
    assert split["classes"] == ["crosses", "discs", "squares"] and split["channels"] == 3
    summary = json.loads((experiment / "best" / "summary.json").read_text())
    assert summary["dataset"] == str(data / "labelled") and summary["quality"]["classes_covered"] >= 0
    assert len(summary["quality"]["histogram"]) == 3
    archs = {row["config"]["arch"] for row in _leaderboard(experiment)}
    assert FACTORY in archs  # the first trial runs model.arch, the factory
    samples = _sample(experiment / "best", env, capsys)
    assert samples.shape == (16, 3, 32, 32) and samples.dtype == np.float32 and 0 <= samples.min() and samples.max() <= 1
    # raygan.evaluate on the best generator, without --dataset: the run's data and its recorded split
    # (the samples of eval.seed 1234, as raygan.tune drew them).
    best = str(experiment / "best" / "generator.pt")
    assert evaluate.main(["--checkpoint", best, "--num-samples", "300", "--seed", "1234", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dataset"] == str(data / "labelled") and report["quality"] is not None
    assert report["parzen_test_ll"] == pytest.approx(summary["parzen_test_ll"], abs=1e-3)  # same samples, same test split
    # raygan.mixture on the finished run: the recorded split again, the cached classifier.
    assert mixture.main(["--run", str(experiment), "--num-samples", "300", "--out", str(env / "m.pt"), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["dataset"] == str(data / "labelled") and again["best_single"]["parzen_test_ll"] == pytest.approx(summary["parzen_test_ll"], abs=1e-3)


def _leaderboard(experiment: Path) -> list[dict]:
    """Each trial's searched settings, from its params.json."""
    return [{"config": json.loads(p.read_text())} for p in experiment.glob("GANTrainable_*/params.json")]


@pytest.mark.slow  # the .npz reader is covered in test_userdata.py; past it, this run is the folder's
def test_an_npz_trains_read_by_a_named_classifier_and_samples_rgb(ray_local, data, env, capsys):
    from raygan.data import Dataset

    # Any raygan classifier file of 32x32 RGB images: here an untrained one, which still has features.
    torch.manual_seed(0)
    classifier = quality.DomainClassifier((3, 32, 32), 4)
    stand_in = Dataset("other", *[np.zeros((2, 3, 32, 32), np.float32)] * 3, True, *[np.array([0, 3])] * 3)
    model = quality.QualityModel(classifier, 0.5, np.zeros(128), np.eye(128), np.full(4, 0.25), np.zeros((4, 128)),
                                 np.zeros((4, 128, 128)))
    quality.save(model, stand_in, env / "named.pt")
    config = _config(env, "npz", eval={"classifier": str(env / "named.pt"), "quality": True})
    assert raygan_tune.main(_argv(env, data / "shapes.npz", "npz", config)) == 0
    capsys.readouterr()
    experiment = env / "results" / "npz"
    summary = json.loads((experiment / "best" / "summary.json").read_text())
    assert summary["quality"]["fd"] > 0 and len(summary["quality"]["histogram"]) == 4  # the named classifier's 4 classes
    assert not (env / "classifiers").exists()  # none was trained
    split = json.loads((experiment / DATA_SPLIT_FILE).read_text())
    assert split["kind"] == "npz" and split["classes"] == ["crosses", "discs", "squares"]
    samples = _sample(experiment / "best", env, capsys)
    assert samples.shape == (16, 3, 32, 32)


class InterruptOnceCheckpointed(tune.Callback):
    """Ctrl-C (SIGINT to this process) once every trial has written a checkpoint, once: Tune keeps
    its callbacks with the experiment, and the resumed run must not be interrupted again (the
    marker file says it was sent)."""

    def __init__(self, trials: int, marker: Path) -> None:
        self.trials, self.seen, self.marker = trials, set(), marker

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        self.seen.add(trial.trial_id)
        if len(self.seen) >= self.trials and not self.marker.exists():
            self.marker.write_text("sent")
            os.kill(os.getpid(), signal.SIGINT)


def test_an_unlabelled_folder_with_a_plugin_model_is_interrupted_resumed_and_sampled(ray_local, data, env, capsys):
    steps, per_step = 6, 50
    config = _config(env, "unlabelled", model={"arch": FACTORY}, tune={"iterations_per_step": per_step})
    argv = _argv(env, data / "unlabelled", "unlabelled", config, iterations=steps)
    experiment = env / "results" / "unlabelled"
    interrupt = InterruptOnceCheckpointed(2, env / "interrupted")
    with pytest.raises(KeyboardInterrupt):
        raygan_tune.run_experiment(raygan_tune.config_from_args(argv), verbose=0, callbacks=[interrupt])
    assert (experiment / DATA_SPLIT_FILE).is_file() and not (experiment / "best").exists()
    before = {trial: len(rows) for trial, rows in _histories(experiment).items()}
    assert all(0 < n < steps for n in before.values()), before

    assert raygan_tune.main(argv + ["--resume"]) == 0
    out = capsys.readouterr().out
    assert "has no class labels" in out and "Sample quality by" not in out  # the one line saying why
    for trial, rows in _histories(experiment).items():
        resumed = rows[before[trial]:]
        assert resumed and resumed[-1]["training_iteration"] == steps
        first = resumed[0]  # restored from a checkpoint: the trainer's iteration counter came with it
        assert first["training_iteration"] >= 2 and first["algorithm/iteration"] == first["training_iteration"] * per_step
    summary = json.loads((experiment / "best" / "summary.json").read_text())
    assert summary["training_iteration"] == steps and "quality" not in summary
    state = torch.load(experiment / "best" / "generator.pt", weights_only=True)
    assert state["model"]["arch"] == FACTORY
    samples = _sample(experiment / "best", env, capsys)
    assert samples.shape == (16, 3, 32, 32)
