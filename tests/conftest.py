"""Shared fixtures. Ray is started once per test session, and only by tests that ask for it."""

from __future__ import annotations

from pathlib import Path

import pytest


def _start_local_ray() -> None:
    import ray

    ray.init(
        num_cpus=4,  # logical CPUs: lets small tunes run a trial and the evaluator side by side
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
    )


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for every test that needs it (starting Ray costs seconds)."""
    import ray

    if not ray.is_initialized():
        _start_local_ray()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def without_local_ray():
    """For a module that runs its own Ray (a multi-node cluster): the shared local Ray is shut
    down while the module runs and started again afterwards if it was up, so the session's
    ``ray_local`` stays usable whatever order the modules run in."""
    import ray

    was_up = ray.is_initialized()
    if was_up:
        ray.shutdown()
    yield
    if ray.is_initialized():
        ray.shutdown()
    if was_up:
        _start_local_ray()


@pytest.fixture(autouse=True)
def _torch_threads():
    """One torch thread per test: the CI machine has 2 cores, the nets in tests are small, and two
    threads on two busy cores spin in OpenMP barriers (measured: 3 ms vs 240 ms per iteration of a
    tiny GAN while another process used a core)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # two tests or Ray workers may share the two cores
    yield
    torch.set_num_threads(before)


# ---- a tiny population: small enough that a Tune run of it takes seconds ----------------------


def _tiny_dataset(seed: int = 0):
    """Blobby 1x4x4 'images' in [0, 1]: enough structure for G to learn something quickly."""
    import numpy as np

    from raygan.data import Dataset

    rng = np.random.default_rng(seed)

    def draw(n: int) -> np.ndarray:
        base = rng.choice([0.2, 0.8], size=(n, 1, 1, 1))
        return np.clip(base + 0.05 * rng.standard_normal((n, 1, 4, 4)), 0, 1).astype(np.float32)

    return Dataset("tiny", draw(400), draw(100), draw(100), True)


def _tiny_experiment(tmp_path, **tune_changes):
    from raygan.config import (
        EvalConfig,
        ExperimentConfig,
        ModelConfig,
        SearchConfig,
        TrainConfig,
        TuneConfig,
    )

    tune = dict(
        num_trials=2,
        scheduler="pbt",
        cpus_per_trial=1.0,
        gpus_per_trial=0.0,
        time_budget_s=None,
        max_iterations=4,
        iterations_per_step=20,
        storage_path=str(tmp_path),
        name="tiny",
        seed=3,
    )
    tune.update(tune_changes)
    return ExperimentConfig(
        model=ModelConfig(arch="mlp", noise_dim=4, g_hidden=(16,), d_hidden=(16,), d_pieces=2, d_input_dropout=0.0),
        train=TrainConfig(batch_size=20, optimizer="sgd", lr_d=0.05, lr_g=0.05),
        eval=EvalConfig(num_samples=200, sigmas=(0.05, 0.1, 0.2, 0.5), every=1, cpus=1.0),
        search=SearchConfig(lr_d=(0.02, 0.3), lr_g=(0.02, 0.3), perturbation_interval=2),
        tune=TuneConfig(**tune),
    )


@pytest.fixture(scope="session")
def tiny_dataset():
    """``tiny_dataset(seed=0)``: a Dataset of 400/100/100 blobby 1x4x4 images."""
    return _tiny_dataset


@pytest.fixture(scope="session")
def tiny_experiment():
    """``tiny_experiment(storage_path, **tune_changes)``: a two-trial PBT experiment of tiny MLPs."""
    return _tiny_experiment


@pytest.fixture
def make_trainable(tmp_path):
    """``make_trainable(experiment=None, deadline=None, **hyperparameters)``: a GANTrainable of the tiny experiment
    (or of ``experiment``, stored alike) under the test's tmp_path, built directly (no Tuner) as a Tune actor would build it; stopped at the end
    of the test."""
    from raygan.config import to_dict
    from raygan.trainable import with_data

    made = []

    def make(experiment=None, deadline=None, **hyper):
        config = experiment or _tiny_experiment(tmp_path)
        trial_config = {"experiment": to_dict(config), "arch": "mlp", "optimizer": "sgd", "k": 1, "lr_d": 0.05,
                        "lr_g": 0.05, "momentum": 0.5, "prior": "uniform", "g_loss": "non-saturating", "seed": 0, **hyper}
        data = _tiny_dataset()
        trainable = with_data({"train": data.train, "bounded": True}, cpus=1, gpus=0, deadline=deadline)(config=trial_config)
        made.append(trainable)
        return trainable

    yield make
    for trainable in made:
        trainable.stop()


def _snapshot_source(dataset, directory):
    """A DataSource that loads ``dataset`` back from a snapshot file written into ``directory``."""
    from raygan.config import DataConfig
    from raygan.data import DataSource, write_snapshot

    path = str(Path(directory) / f"{dataset.name}-snapshot.npz")
    write_snapshot(dataset, path)
    return DataSource(DataConfig(), snapshot=path)


@pytest.fixture(scope="session")
def snapshot_source():
    """``snapshot_source(dataset, directory)``: a DataSource that evaluator replicas load ``dataset``
    back from (a snapshot file in ``directory``), as run_experiment does for a data set given in memory."""
    return _snapshot_source


@pytest.fixture
def evaluator(ray_local, tmp_path):
    """The named evaluator pool that ``make_trainable``'s trials look up (the same experiment,
    stored under the test's tmp_path); alive while the test runs."""
    from raygan.evaluator import evaluator_name, start_evaluators

    data, config = _tiny_dataset(), _tiny_experiment(tmp_path)
    pool = start_evaluators(_snapshot_source(data, tmp_path), config.eval, name=evaluator_name(config.tune.name, config.tune.storage_path))
    yield pool
    pool.kill()


@pytest.fixture(scope="session")
def mnist5k_labelled():
    """mnist5k with its labels, loaded once for the quality tests."""
    from raygan.data import load_dataset

    return load_dataset("mnist5k")


@pytest.fixture(scope="session")
def quality_cache_dir(tmp_path_factory):
    """A classifier cache for this session only (never ~/.cache)."""
    return tmp_path_factory.mktemp("classifiers")


@pytest.fixture(scope="session")
def mnist5k_quality(mnist5k_labelled, quality_cache_dir):
    """The mnist5k domain classifier, trained once per session into ``quality_cache_dir`` (about 20 s);
    every quality test and the evaluate CLI's tests share it."""
    from raygan import quality

    lines: list[str] = []
    model = quality.load_or_train(mnist5k_labelled, cache_dir=quality_cache_dir, log=lines.append)
    assert len(lines) == 1 and "accuracy" in lines[0], lines
    return model


# ---- a user's own data: images drawn from shapes and colours, written as files -----------------


def _shapes(n: int, side: int = 32, seed: int = 0, grey: bool = False):
    """(uint8 images, int64 labels) of shapes in colours: experiments/make_shapes.py's, the README's example data."""
    from experiments.make_shapes import draw

    return draw(n, side, seed, grey)


def _write_images(root, images, labels=None, classes=("discs", "squares", "crosses"), suffix=".png", start: int = 0):
    """Image files under ``root``, one subfolder per class (none where ``labels`` is None), named by index."""
    from experiments.make_shapes import write

    return write(root, images, labels, classes, suffix, start)


@pytest.fixture(scope="session")
def shape_images():
    """``shape_images(n, side=32, seed=0, grey=False)``: (uint8 images, labels) of discs, squares, crosses."""
    return _shapes


@pytest.fixture(scope="session")
def write_images():
    """``write_images(root, images, labels=None, classes=(discs, squares, crosses), suffix=".png")``: image files, one folder per class."""
    return _write_images
