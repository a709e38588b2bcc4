"""Shared fixtures. Ray is started once per test session, and only by tests that ask for it."""

from __future__ import annotations


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
    """Keep each test's torch on few threads: the CI machine has 2 cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # two tests or Ray workers may share the two cores
    yield
    torch.set_num_threads(before)


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
