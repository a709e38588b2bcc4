"""The Parzen-window maths against a direct float64 formula (scipy), and the protocol around it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from scipy.special import logsumexp

from raygan import parzen

GRID = (0.01, 0.03, 0.1, 0.2, 0.5, 1.0)


def direct(samples: np.ndarray, points: np.ndarray, sigma: float) -> np.ndarray:
    """log (1/N) sum_j N(x; s_j, sigma^2 I), with d = sum_k (x_k - s_k)^2 in float64: the definition."""
    s = np.asarray(samples, np.float64).reshape(len(samples), -1)
    p = np.asarray(points, np.float64).reshape(len(points), -1)
    d = cdist(p, s, "sqeuclidean")
    n, dim = s.shape
    return logsumexp(-d / (2 * sigma**2), axis=1) - math.log(n) - 0.5 * dim * math.log(2 * math.pi * sigma**2)


def clustered(rng: np.random.Generator, n: int, dim: int, centres: np.ndarray, spread: float) -> np.ndarray:
    """Points near a few centres: many near-ties between samples, as with real digits."""
    x = centres[rng.integers(0, len(centres), n)] + spread * rng.normal(size=(n, dim))
    return np.clip(x, 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(0)


def test_matches_the_direct_formula_on_random_data(rng):
    samples = rng.random((300, 20), dtype=np.float32)
    points = rng.random((150, 20), dtype=np.float32)
    got = parzen.log_likelihood_grid(samples, points, GRID).numpy()
    assert got.dtype == np.float64 and got.shape == (150, len(GRID))
    for k, sigma in enumerate(GRID):
        np.testing.assert_allclose(got[:, k], direct(samples, points, sigma), rtol=0, atol=1e-3)


@pytest.mark.parametrize("data", ["uniform", "clustered"])
def test_float32_within_1e3_nats_on_image_like_data(rng, data):
    # 784 dims in [0, 1]: where float32's ||x||^2 + ||s||^2 - 2 x.s cancels worst. "uniform" sums
    # every term (dense); "clustered" has few terms within reach and takes the sparse path.
    if data == "uniform":
        samples, points = rng.random((1000, 784), dtype=np.float32), rng.random((200, 784), dtype=np.float32)
    else:
        centres = rng.random((20, 784)) < 0.2
        samples, points = clustered(rng, 1000, 784, centres, 0.15), clustered(rng, 200, 784, centres, 0.15)
    got = parzen.log_likelihood_grid(samples, points).numpy()
    for k, sigma in enumerate(parzen.DEFAULT_SIGMAS):
        np.testing.assert_allclose(got[:, k], direct(samples, points, sigma), rtol=0, atol=1e-3)


def test_point_equal_to_a_sample_at_sigma_001(rng):
    samples = rng.random((400, 784), dtype=np.float32)
    points = np.concatenate([samples[:5], samples[200:205] + np.float32(1e-3), rng.random((5, 784), dtype=np.float32)])
    for sigma in (0.01, 0.001):
        got = parzen.log_likelihood(samples, points, sigma).numpy()
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, direct(samples, points, sigma), rtol=0, atol=1e-3)
    # A point on a sample, at a width where no other sample counts: exactly log(1/N) + log N(0; 0, sigma^2 I).
    got = parzen.log_likelihood(samples, samples[:1], 0.01).item()
    assert got == pytest.approx(-math.log(400) - 392 * math.log(2 * math.pi * 1e-4), abs=1e-6)


def test_one_sample_one_dimension_closed_form():
    # One Gaussian N(x; 0.25, sigma^2): LL = -(x - 0.25)^2 / (2 sigma^2) - log(2 pi sigma^2) / 2.
    x = torch.tensor([[0.25], [1.0], [-3.0], [0.2500001]])
    for sigma in (0.01, 0.3, 2.0):
        got = parzen.log_likelihood(torch.tensor([[0.25]]), x, sigma)
        want = -((x[:, 0].double() - 0.25) ** 2) / (2 * sigma**2) - 0.5 * math.log(2 * math.pi * sigma**2)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_one_dimension_many_samples(rng):
    samples = rng.normal(size=(500, 1)).astype(np.float32)
    points = rng.normal(size=(64, 1)).astype(np.float32)
    got = parzen.log_likelihood_grid(samples, points, GRID).numpy()
    for k, sigma in enumerate(GRID):
        np.testing.assert_allclose(got[:, k], direct(samples, points, sigma), rtol=0, atol=1e-3)


def test_precision_does_not_depend_on_where_the_data_sit(rng):
    # Far from the origin, ||x||^2 ~ 1e6 and an uncentred float32 expansion loses every digit of d;
    # centring by the samples' mean keeps the answer within tolerance.
    samples = (100 + rng.random((300, 50))).astype(np.float32)
    points = (100 + rng.random((60, 50))).astype(np.float32)
    got = parzen.log_likelihood_grid(samples, points, (0.05, 0.3, 1.0)).numpy()
    for k, sigma in enumerate((0.05, 0.3, 1.0)):
        np.testing.assert_allclose(got[:, k], direct(samples, points, sigma), rtol=0, atol=1e-3)


def test_float64_option_agrees(rng):
    samples, points = rng.random((200, 30)), rng.random((40, 30))
    got = parzen.log_likelihood_grid(samples, points, GRID, dtype=torch.float64).numpy()
    for k, sigma in enumerate(GRID):
        np.testing.assert_allclose(got[:, k], direct(samples, points, sigma), rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-9), (torch.float32, 1e-3)])
def test_chunk_size_does_not_change_the_answer(rng, dtype, atol):
    # In float64 the chunking logic must be exact. In float32 the BLAS sums a product in another
    # order for another number of rows, so results move within the float32 tolerance only.
    centres = rng.random((5, 64)) < 0.3
    samples, points = clustered(rng, 500, 64, centres, 0.1), clustered(rng, 97, 64, centres, 0.1)
    base = parzen.log_likelihood_grid(samples, points, GRID, chunk_size=10_000, dtype=dtype)
    for chunk_size in (1, 7, 32, 96):
        got = parzen.log_likelihood_grid(samples, points, GRID, chunk_size=chunk_size, dtype=dtype)
        torch.testing.assert_close(got, base, rtol=0, atol=atol)


def test_row_blocks_on_worker_threads_agree(rng, monkeypatch):
    # Blocks of 3 rows, so a chunk's exp work runs on torch.get_num_threads() Python threads.
    centres = rng.random((4, 32)) < 0.3
    samples, points = clustered(rng, 300, 32, centres, 0.1), clustered(rng, 100, 32, centres, 0.1)
    whole = parzen.log_likelihood_grid(samples, points, GRID, dtype=torch.float64)
    monkeypatch.setattr(parzen, "_CACHE_BYTES", 3 * 4 * 320)
    threads = torch.get_num_threads()
    split = parzen.log_likelihood_grid(samples, points, GRID, dtype=torch.float64)
    assert torch.get_num_threads() == threads  # restored after the threaded blocks
    torch.testing.assert_close(split, whole, rtol=0, atol=1e-9)
    for k, sigma in enumerate(GRID):
        np.testing.assert_allclose(split[:, k].numpy(), direct(samples, points, sigma), rtol=0, atol=1e-6)


def test_image_shapes_are_flattened(rng):
    samples = rng.random((100, 1, 28, 28), dtype=np.float32)
    points = rng.random((20, 1, 28, 28), dtype=np.float32)
    torch.testing.assert_close(
        parzen.log_likelihood_grid(samples, points, GRID),
        parzen.log_likelihood_grid(samples.reshape(100, -1), torch.from_numpy(points.reshape(20, -1)), GRID),
        rtol=0,
        atol=0,
    )


def test_select_sigma_picks_the_best_mean_validation_ll(rng):
    # Samples and validation points from N(0, 0.3^2 I) in 2-D: the best window is interior to the grid.
    samples = (0.3 * rng.normal(size=(400, 2))).astype(np.float32)
    valid = (0.3 * rng.normal(size=(300, 2))).astype(np.float32)
    grid = tuple(np.logspace(-2, 0.5, 12))
    means = [direct(samples, valid, s).mean() for s in grid]
    best = grid[int(np.argmax(means))]
    assert grid[0] < best < grid[-1]
    assert parzen.select_sigma(samples, valid, grid) == best
    assert parzen.select_sigma(samples, valid, (best,)) == best


def test_evaluate_reports_mean_and_standard_error_at_the_chosen_sigma(rng):
    samples = rng.random((300, 10), dtype=np.float32)
    valid, test = rng.random((100, 10), dtype=np.float32), rng.random((80, 10), dtype=np.float32)
    result = parzen.evaluate(samples, valid, test, GRID)
    assert result.sigma == parzen.select_sigma(samples, valid, GRID)
    assert result.valid_ll == pytest.approx(direct(samples, valid, result.sigma).mean(), abs=1e-3)
    per_point = direct(samples, test, result.sigma)
    assert result.test_ll == pytest.approx(per_point.mean(), abs=1e-3)
    assert result.test_se == pytest.approx(per_point.std(ddof=0) / math.sqrt(80), rel=1e-6)
    with pytest.raises(AttributeError):
        result.sigma = 1.0  # frozen


def test_the_test_set_never_chooses_sigma(rng):
    samples = rng.random((200, 10), dtype=np.float32)
    valid = rng.random((50, 10), dtype=np.float32)
    a = parzen.evaluate(samples, valid, rng.random((30, 10), dtype=np.float32), GRID)
    b = parzen.evaluate(samples, valid, np.full((30, 10), 5.0, np.float32), GRID)
    assert (a.sigma, a.valid_ll) == (b.sigma, b.valid_ll)
    assert a.test_ll != b.test_ll


def test_standard_error_formula():
    values = torch.tensor([1.0, 2.0, 4.0, 7.0], dtype=torch.float64)
    assert parzen.standard_error(values) == pytest.approx(np.std([1, 2, 4, 7]) / 2)
    assert parzen.standard_error(torch.tensor([3.0])) == 0.0


def test_reference_uses_training_images_as_centres(rng):
    train = rng.random((120, 8), dtype=np.float32)
    valid, test = rng.random((40, 8), dtype=np.float32), rng.random((30, 8), dtype=np.float32)
    everything = parzen.reference(train, valid, test, num_samples=500, sigmas=GRID)
    assert everything == parzen.evaluate(train, valid, test, GRID)
    subset = parzen.reference(train, valid, test, num_samples=50, sigmas=GRID, seed=3)
    assert subset == parzen.reference(train, valid, test, num_samples=50, sigmas=GRID, seed=3)
    order = torch.randperm(120, generator=torch.Generator().manual_seed(3))[:50]
    assert subset == parzen.evaluate(train[order.numpy()], valid, test, GRID)


def test_bad_arguments_raise_value_error(rng):
    samples = rng.random((10, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="values each"):
        parzen.log_likelihood(samples, rng.random((3, 5)), 0.1)
    with pytest.raises(ValueError, match="non-empty"):
        parzen.log_likelihood(np.zeros((0, 4), np.float32), samples, 0.1)
    with pytest.raises(ValueError, match="positive"):
        parzen.log_likelihood_grid(samples, samples, (0.1, 0.0))
    with pytest.raises(ValueError, match="chunk_size"):
        parzen.log_likelihood_grid(samples, samples, chunk_size=0)
    assert parzen.log_likelihood(samples, np.zeros((0, 4), np.float32), 0.1).shape == (0,)


def test_a_collapsed_generator_is_scored_within_tolerance():
    """Every sample near every point (mode collapse): the float32 grid still agrees with float64
    (its cost is measured by experiments/benchmarks/bench_parzen.py, not here)."""
    rng = np.random.default_rng(0)
    centre = rng.random((1, 784), dtype=np.float32)
    samples = centre + 1e-3 * rng.standard_normal((4000, 784)).astype(np.float32)
    points = np.clip(centre + 0.05 * rng.standard_normal((300, 784)), 0, 1).astype(np.float32)
    got = parzen.log_likelihood_grid(samples, points, (0.05, 0.1, 0.5)).numpy()
    want = parzen.log_likelihood_grid(samples, points, (0.05, 0.1, 0.5), dtype=torch.float64).numpy()
    assert np.abs(got - want).max() < 1e-2
