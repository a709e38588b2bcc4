"""A user's own data, named by its path: a folder of images or an .npy/.npz array.

Forms:

- **A folder of PNG or JPEG images** (other files, and names starting with ``.``, are ignored).
  With subfolders, each subfolder is a class (its images found at any depth below it, the
  classes numbered in sorted name order) and the data are labelled; a folder with only loose
  images, or a single subfolder, is unlabelled. A folder whose subfolders are ``train``,
  ``valid`` (or ``val``, ``validation``) and ``test`` keeps its own split (``valid`` may be
  missing: it is then drawn from ``train``), each laid out as above. Pillow decodes the images:
  a set whose every image is grey (greyscale, or colour with equal channels) has 1 channel,
  any other set 3 (RGB; grey images repeated, alpha dropped); EXIF rotations are applied.
  Images are ordered by file name, the folder breaking ties, so numbered files keep their order.
- **An .npy array** of shape (N, H, W), (N, H, W, C) or (N, C, H, W), C = 1 or 3 (the channel
  axis is the one of size 1 or 3; a shape where both ends could be is refused).
- **An .npz archive** with ``images`` as above and optional ``labels``: N integers or strings,
  numbered in sorted order.

Values are scaled to [0, 1]: unsigned integers by their type's maximum (uint8 / 255), booleans as
0 and 1, floats already in [0, 1] kept, other floats and signed integers min-max scaled over the
whole array (a spectrogram in dB becomes [0, 1]; ``scaled_from`` in the record says from what).

The split is drawn once from ``data.split_seed`` (stratified by class where labelled) and
recorded: :func:`record` is what raygan.tune writes into the experiment (``data_split.json``):
the members of each split (file paths relative to the folder, or array indices), the classes, the
resize and a fingerprint of the data read. Loading with a record reads exactly its members and
refuses data that changed since. No Ray and no network here.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import zipfile
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from raygan.data import Dataset, resize_images
from raygan.errors import DataError

RECORD_FORMAT = "raygan-data-split/1"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "valid", "test")
SPLIT_FOLDERS = {"train": "train", "valid": "valid", "val": "valid", "validation": "valid", "test": "test"}
CHANNELS = (1, 3)
DECODE_THREADS = 8  # at most; Pillow decodes outside the GIL
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")  # 16-bit greyscale PNGs open in one of these
GREY_MODES = ("1", "L", "LA")


def load(
    path: str | Path,
    resize: int | None = None,
    shares: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    recorded: Mapping[str, Any] | None = None,
) -> Dataset:
    """Read a user's data set and split it (or take the split ``recorded``).

    Args:
        path: a folder of images, an .npy or an .npz file.
        resize: the side every image is resized to (:func:`raygan.data.resize_images`), or None.
        shares: train, valid and test shares (a folder with split subfolders keeps its own).
        seed: seeds the split.
        recorded: a record of an earlier split of the same data (:func:`read_record`); its
            members, resize and channels are used, and the data must be what it was.

    Returns:
        The :class:`~raygan.data.Dataset`, named by the absolute path, with its ``split_record``.

    Raises:
        DataError: a missing, empty, unreadable or malformed data set, too few images to split,
            or data that no longer match ``recorded``.
    """
    path = Path(path).expanduser().absolute()
    if recorded is not None:
        _check_record(recorded, path)
        resize = recorded["resize"]
    if path.is_dir():
        reader: _Reader = _FolderReader(path)
    elif path.is_file() and path.suffix.lower() in (".npy", ".npz"):
        reader = _ArrayReader(path)
    elif not path.exists():
        raise DataError(f"the data set {str(path)!r} does not exist")
    else:
        raise DataError(f"{str(path)!r} is neither a folder of images nor an .npy/.npz file")
    if recorded is None:
        members = reader.split(list(shares), seed)
    else:
        members = reader.members(recorded)
    channels = None if recorded is None else recorded["channels"]
    arrays, labels, digest, channels = reader.read(members, channels, resize)
    if recorded is not None and digest != recorded["fingerprint"]:
        raise DataError(
            f"the data in {str(path)!r} differ from those the experiment recorded in its data_split.json; "
            "restore them, or start a new experiment"
        )
    rec = {
        "format": RECORD_FORMAT,
        "source": str(path),
        "kind": reader.kind,
        "resize": resize,
        "channels": channels,
        "classes": reader.classes,
        "shares": None if recorded is None else recorded.get("shares"),
        "seed": None if recorded is None else recorded.get("seed"),
        "scaled_from": reader.scaled_from,
        "fingerprint": digest,
        "members": {split: _plain(members[split]) for split in SPLITS},
    }
    if recorded is None:  # what the split was drawn with; nothing where the folder gave all three
        drawn = not reader.own_split or reader.drew_valid
        rec.update(shares=list(shares) if drawn else None, seed=seed if drawn else None)
    labelled = reader.classes is not None
    return Dataset(
        str(path),
        arrays["train"],
        arrays["valid"],
        arrays["test"],
        bounded=True,
        train_labels=labels["train"] if labelled else None,
        valid_labels=labels["valid"] if labelled else None,
        test_labels=labels["test"] if labelled else None,
        class_names=tuple(reader.classes) if labelled else None,
        split_record=rec,
    )


def record(dataset: Dataset) -> str | None:
    """The dataset's split record as the JSON text of ``data_split.json``, or None for a built-in set."""
    if dataset.split_record is None:
        return None
    return json.dumps(dataset.split_record, indent=1) + "\n"


def read_record(text: str, where: str) -> dict[str, Any]:
    """Parse a ``data_split.json``.

    Raises:
        DataError: it is not a raygan data split record (``where`` names the file in the message).
    """
    try:
        rec = json.loads(text)
    except ValueError:
        rec = None
    fields = ("source", "kind", "resize", "channels", "classes", "fingerprint", "members")
    if not isinstance(rec, dict) or rec.get("format") != RECORD_FORMAT or any(k not in rec for k in fields):
        raise DataError(f"{where} is not a raygan data split record ({RECORD_FORMAT}); it is damaged")
    if not isinstance(rec["members"], dict) or any(not isinstance(rec["members"].get(s), list) for s in SPLITS):
        raise DataError(f"{where} is damaged: it does not list the members of the train, valid and test splits")
    return rec


def split_indices(labels: np.ndarray | None, n: int, shares: Sequence[float], seed: int) -> dict[str, np.ndarray]:
    """Indices 0..n-1 split by ``shares`` with ``seed``: per class where labelled, each split in index order.

    Each class (or the whole set) gives ``round(size * share)`` of its members to valid and to
    test, drawn by one seeded permutation, and the rest to train.
    """
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if labels is None else [np.flatnonzero(labels == c) for c in np.unique(labels)]
    parts: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    for group in groups:
        order = rng.permutation(group)
        n_valid, n_test = round(len(group) * shares[1]), round(len(group) * shares[2])
        parts["valid"].append(order[:n_valid])
        parts["test"].append(order[n_valid : n_valid + n_test])
        parts["train"].append(order[n_valid + n_test :])
    return {split: np.sort(np.concatenate(p)).astype(np.int64) for split, p in parts.items()}


# --------------------------------------------------------------------------------------------


def _plain(values: Sequence[Any]) -> list[Any]:
    return [v if isinstance(v, str) else int(v) for v in values]


def _check_record(rec: Mapping[str, Any], path: Path) -> None:
    if Path(rec["source"]) != path:
        raise DataError(f"the recorded split is of {rec['source']!r}, not of {str(path)!r}; start a new experiment for other data")


def _check_splits(members: Mapping[str, Sequence[Any]], where: str, total: int, shares: Sequence[float] | None) -> None:
    if all(len(members[s]) for s in SPLITS):
        return
    empty = ", ".join(s for s in SPLITS if not len(members[s]))
    how = f" with shares {'/'.join(f'{x:g}' for x in shares)}" if shares is not None else ""
    raise DataError(f"{where} holds {total} images, too few for non-empty train, valid and test splits{how} (empty: {empty}); add images or change data.split")


def _fingerprint(images: Sequence[np.ndarray], labels: Sequence[np.ndarray | None]) -> str:
    """sha256 of the data as read, before any resize: each array's shape and values, then the labels."""
    h = hashlib.sha256()
    for array in images:
        h.update(repr(array.shape).encode())
        h.update(np.ascontiguousarray(array).tobytes())
    for y in labels:
        h.update(b"-" if y is None else np.ascontiguousarray(y).tobytes())
    return h.hexdigest()


class _Reader:
    """What both forms provide: the split (new or recorded) and the arrays of its members."""

    kind: str
    classes: list[str] | None
    own_split: bool = False  # a folder with train/, valid/ and test/ subfolders
    drew_valid: bool = False  # ... without valid/: valid was drawn from train
    scaled_from: list[float] | None = None

    def split(self, shares: list[float], seed: int) -> dict[str, list[Any]]:
        raise NotImplementedError

    def members(self, recorded: Mapping[str, Any]) -> dict[str, list[Any]]:
        raise NotImplementedError

    def read(self, members: Mapping[str, Sequence[Any]], channels: int | None, resize: int | None) -> tuple[dict, dict, str, int]:
        """(final (N, C, H, W) arrays per split, labels per split, fingerprint, channels)."""
        raise NotImplementedError


# ---- a folder of images ----------------------------------------------------------------------


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _images_below(directory: Path) -> list[Path]:
    """Every PNG/JPEG file at any depth below ``directory``, hidden files and folders skipped."""
    found = []
    for top, dirs, files in os.walk(directory, followlinks=True):
        dirs[:] = sorted(d for d in dirs if _visible(d))
        found += [Path(top, f) for f in files if _visible(f) and f.lower().endswith(IMAGE_SUFFIXES)]
    return found


def _subfolders(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_dir() and _visible(p.name))


def _loose_images(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.is_file() and _visible(p.name) and p.suffix.lower() in IMAGE_SUFFIXES]


def _by_name(paths: Sequence[Path], root: Path) -> list[str]:
    """Paths relative to ``root`` (POSIX), ordered by file name, the folders breaking ties."""
    return sorted((p.relative_to(root).as_posix() for p in paths), key=lambda rel: (rel.rsplit("/", 1)[-1], rel))


class _FolderReader(_Reader):
    kind = "folder"

    def __init__(self, root: Path) -> None:
        self.root = root
        subfolders = _subfolders(root)
        names = {p.name.lower() for p in subfolders}
        self.own_split = "train" in names and "test" in names
        if self.own_split:
            extra = sorted(p.name for p in subfolders if p.name.lower() not in SPLIT_FOLDERS)
            if extra or _loose_images(root):
                what = f"the folders {', '.join(repr(e) for e in extra)}" if extra else "loose images"
                raise DataError(f"{str(root)!r} holds split folders (train, test) and {what} beside them; move them into a split")
            self.layouts = {SPLIT_FOLDERS[p.name.lower()]: self._layout(p) for p in subfolders}
        else:
            self.layouts = {None: self._layout(root)}
        kinds = {classes is None for classes, _ in self.layouts.values()}
        if len(kinds) > 1:
            raise DataError(f"the splits of {str(root)!r} differ: some have class subfolders and some do not; lay them out alike")
        if self.own_split:
            self._check_split_classes()
        classes = sorted({c for found, _ in self.layouts.values() for c in (found or [])})
        self.classes = classes if len(classes) >= 2 else None  # one subfolder holds no class information
        self.label_of = {c: i for i, c in enumerate(classes)}

    def _layout(self, directory: Path) -> tuple[list[str] | None, list[str]]:
        """(class names or None, image paths relative to the root ordered by name) of one folder."""
        subfolders, loose = _subfolders(directory), _loose_images(directory)
        if not subfolders:
            if not loose:
                raise DataError(f"{str(directory)!r} holds no PNG or JPEG images")
            return None, _by_name(loose, self.root)
        if loose:
            raise DataError(
                f"{str(directory)!r} holds images both loose and in subfolders; put every image in a class subfolder, or none"
            )
        images = []
        for folder in subfolders:
            found = _images_below(folder)
            if not found:
                raise DataError(f"the class folder {str(folder)!r} holds no PNG or JPEG images; remove it or add some")
            images += found
        return [p.name for p in subfolders], _by_name(images, self.root)

    def _check_split_classes(self) -> None:
        train = set(self.layouts["train"][0] or [])
        for split, (classes, _) in self.layouts.items():
            missing = sorted(set(classes or []) - train)
            if missing:
                raise DataError(f"the {split} split of {str(self.root)!r} has classes that train lacks ({', '.join(missing)}); "
                                "the classifier and a conditional model learn classes from train")

    def _label(self, rel: str) -> int | None:
        if self.classes is None:
            return None
        parts = rel.split("/")
        return self.label_of[parts[1] if self.own_split else parts[0]]

    def split(self, shares: list[float], seed: int) -> dict[str, list[str]]:
        if not self.own_split:
            files = self.layouts[None][1]
            idx = split_indices(self._labels(files), len(files), shares, seed)
            members = {s: [files[i] for i in idx[s]] for s in SPLITS}
            _check_splits(members, repr(str(self.root)), len(files), shares)
            return members
        members = {s: self.layouts[s][1] for s in SPLITS if s in self.layouts}
        if "valid" not in members:  # drawn from train at valid's share of train + valid
            self.drew_valid = True
            files = members["train"]
            share = shares[1] / (shares[0] + shares[1])
            idx = split_indices(self._labels(files), len(files), (1 - share, share, 0.0), seed)
            members["train"], members["valid"] = [files[i] for i in idx["train"]], [files[i] for i in idx["valid"]]
        _check_splits(members, repr(str(self.root)), sum(len(m) for m in members.values()), None)
        return members

    def _labels(self, files: Sequence[str]) -> np.ndarray | None:
        return None if self.classes is None else np.array([self._label(f) for f in files], np.int64)

    def members(self, recorded: Mapping[str, Any]) -> dict[str, list[str]]:
        if recorded["kind"] != self.kind or recorded["classes"] != self.classes:
            raise DataError(f"the folder {str(self.root)!r} no longer has the classes the experiment recorded; restore it")
        members = {s: list(recorded["members"][s]) for s in SPLITS}
        for split in SPLITS:
            for rel in members[split]:
                if not isinstance(rel, str) or not (self.root / rel).is_file():
                    raise DataError(f"the experiment's {split} split lists {rel!r}, which {str(self.root)!r} no longer holds; restore it")
        return members

    def read(self, members: Mapping[str, Sequence[str]], channels: int | None, resize: int | None) -> tuple[dict, dict, str, int]:
        order = [rel for s in SPLITS for rel in members[s]]
        with ThreadPoolExecutor(max_workers=min(DECODE_THREADS, os.cpu_count() or 1)) as pool:
            decoded = list(pool.map(lambda rel: _decode(self.root / rel), order))
        if channels is None:
            channels = 1 if all(d.ndim == 2 for d in decoded) else 3
        decoded = [_channels(image, channels) for image in decoded]
        labels = {split: self._labels(members[split]) for split in SPLITS}
        digest = _fingerprint(decoded, [labels[s] for s in SPLITS])
        if resize is None:
            sizes = {}
            for rel, image in zip(order, decoded):
                sizes.setdefault(image.shape[1:], rel)
            if len(sizes) > 1:
                (a, rel_a), (b, rel_b) = list(sizes.items())[:2]
                raise DataError(
                    f"the images in {str(self.root)!r} differ in size ({rel_a!r} is {a[1]}x{a[0]}, {rel_b!r} is {b[1]}x{b[0]}); "
                    "set data.resize (--resize) to one side for all, such as 32"
                )
        images, start = {}, 0
        for split in SPLITS:
            chunk = decoded[start : start + len(members[split])]
            start += len(chunk)
            images[split] = _resized_stack(chunk, resize)
        return images, labels, digest, channels


def _resized_stack(images: list[np.ndarray], resize: int | None) -> np.ndarray:
    """(C, H, W) images, of one size unless ``resize`` is set, -> (N, C, H', W') float32."""
    if resize is None:
        return np.stack(images)
    out: list[np.ndarray | None] = [None] * len(images)
    by_size: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        by_size.setdefault(image.shape, []).append(i)
    for indices in by_size.values():
        for i, image in zip(indices, resize_images(np.stack([images[i] for i in indices]), resize)):
            out[i] = image
    return np.stack(out)


def _channels(image: np.ndarray, channels: int) -> np.ndarray:
    """(H, W) grey or (H, W, 3) RGB float32 -> (C, H, W), grey repeated to 3 channels for an RGB set."""
    if image.ndim == 2:
        image = image[None]
        return np.repeat(image, 3, axis=0) if channels == 3 else image
    if channels == 1:  # a colour image in a recorded grey set: the data changed
        raise DataError("a colour image appeared in a set recorded as greyscale; restore the data")
    return image.transpose(2, 0, 1)


def _decode(path: Path) -> np.ndarray:
    """One image as float32 in [0, 1]: (H, W) when grey, (H, W, 3) when colour."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened)
            mode = image.mode
            if mode == "F":
                raise DataError(f"{str(path)!r} holds 32-bit float pixels; save it as an 8- or 16-bit PNG, or pass the array as .npy")
            if mode in SIXTEEN_BIT_MODES:
                return np.clip(np.asarray(image, dtype=np.float32) / 65535.0, 0.0, 1.0)
            if mode in GREY_MODES:
                return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
            rgb = np.asarray(image.convert("RGB"))
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot decode the image {str(path)!r} ({e.__class__.__name__}); remove or replace it") from None
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        rgb = rgb[..., 0]  # grey stored as colour
    return rgb.astype(np.float32) / 255.0


# ---- an .npy or .npz array -------------------------------------------------------------------


class _ArrayReader(_Reader):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.kind = path.suffix.lower().lstrip(".")
        raw, raw_labels = self._load()
        self.images = _layout(raw, path)  # (N, C, H, W), still in the file's dtype
        self.classes, self.labels = _label_indices(raw_labels, len(self.images), path)
        self.values, self.scaled_from = _unit_scale(self.images, path)

    def _load(self) -> tuple[np.ndarray, np.ndarray | None]:
        where = repr(str(self.path))
        try:
            loaded = np.load(self.path, allow_pickle=False)
            if isinstance(loaded, np.ndarray):
                if self.kind == "npz":
                    raise DataError(f"{where} is an .npy array under an .npz name; rename it to .npy")
                return loaded, None
            with loaded:
                if "images" not in loaded.files:
                    held = ", ".join(loaded.files) or "nothing"
                    raise DataError(f"{where} holds no array named 'images' (it holds {held}); save it with numpy.savez(path, images=..., labels=...)")
                return loaded["images"], loaded["labels"] if "labels" in loaded.files else None
        except DataError:
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as e:
            raise DataError(f"cannot read {where} as a numpy array file ({e.__class__.__name__}); save it with numpy.save or numpy.savez") from None

    def split(self, shares: list[float], seed: int) -> dict[str, list[int]]:
        idx = split_indices(self.labels, len(self.images), shares, seed)
        members = {s: idx[s].tolist() for s in SPLITS}
        _check_splits(members, repr(str(self.path)), len(self.images), shares)
        return members

    def members(self, recorded: Mapping[str, Any]) -> dict[str, list[int]]:
        if recorded["kind"] != self.kind or recorded["classes"] != self.classes:
            raise DataError(f"{str(self.path)!r} no longer has the labels the experiment recorded; restore it")
        members = {s: list(recorded["members"][s]) for s in SPLITS}
        n = len(self.images)
        for split in SPLITS:
            if any(not isinstance(i, int) or not 0 <= i < n for i in members[split]):
                raise DataError(f"the experiment's {split} split lists images that {str(self.path)!r} no longer holds; restore it")
        return members

    def read(self, members: Mapping[str, Sequence[int]], channels: int | None, resize: int | None) -> tuple[dict, dict, str, int]:
        if channels is not None and channels != self.values.shape[1]:
            raise DataError(f"{str(self.path)!r} no longer has the {channels} channels the experiment recorded; restore it")
        images = {s: self.values[np.asarray(members[s], np.int64)] for s in SPLITS}
        labels = {s: None if self.labels is None else self.labels[np.asarray(members[s], np.int64)] for s in SPLITS}
        digest = _fingerprint([images[s] for s in SPLITS], [labels[s] for s in SPLITS])
        if resize is not None:
            images = {s: resize_images(images[s], resize) for s in SPLITS}
        return images, labels, digest, int(self.values.shape[1])


def _layout(array: np.ndarray, path: Path) -> np.ndarray:
    """(N, H, W), (N, H, W, C) or (N, C, H, W) -> (N, C, H, W), C in 1 or 3."""
    want = "(N, H, W), (N, H, W, C) or (N, C, H, W) with C = 1 or 3"
    where = repr(str(path))
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4:
        first, last = array.shape[1] in CHANNELS, array.shape[3] in CHANNELS
        if first and last:
            raise DataError(f"{where} holds an array of shape {array.shape} whose channel axis is unclear; save it as (N, C, H, W)")
        if not (first or last):
            raise DataError(f"{where} holds an array of shape {array.shape}, with no axis of 1 or 3 channels; expected {want}")
        if last:
            array = array.transpose(0, 3, 1, 2)
    else:
        raise DataError(f"{where} holds an array of shape {array.shape}; expected {want}")
    if len(array) == 0 or min(array.shape[2:]) < 1:
        raise DataError(f"{where} holds no images (shape {array.shape})")
    return array


def _unit_scale(images: np.ndarray, path: Path) -> tuple[np.ndarray, list[float] | None]:
    """The images as float32 in [0, 1], and the [low, high] min-max scaled from (None: by type)."""
    where = repr(str(path))
    kind = images.dtype.kind
    if kind == "b":
        return images.astype(np.float32), None
    if kind == "u":
        out = images.astype(np.float32)
        out /= np.float32(np.iinfo(images.dtype).max)
        return out, None
    if kind not in "if":
        raise DataError(f"{where} holds {images.dtype} values, not numbers; save the images as integers or floats")
    if not np.isfinite(images).all():
        raise DataError(f"{where} holds NaN or infinite values; replace them")
    low, high = float(images.min()), float(images.max())
    if kind == "f" and low >= 0 and high <= 1:
        return images.astype(np.float32), None
    if high == low:
        raise DataError(f"{where} holds one value everywhere ({low:g}); it has nothing to learn")
    out = ((images - low) / (high - low)).astype(np.float32)  # in the array's own precision, then float32
    np.clip(out, 0.0, 1.0, out=out)
    return out, [low, high]


def _label_indices(labels: np.ndarray | None, n: int, path: Path) -> tuple[list[str] | None, np.ndarray | None]:
    """Labels (N,) integers or strings -> (class names in sorted order, int64 indices); None where there
    are none or only one class (which says nothing about the images)."""
    if labels is None:
        return None, None
    where = repr(str(path))
    if labels.shape != (n,) or labels.dtype.kind not in "iuUSb":
        raise DataError(f"the labels in {where} must be {n} integers or strings, one per image, got {labels.dtype} of shape {labels.shape}")
    values, indices = np.unique(labels, return_inverse=True)
    if len(values) < 2:
        return None, None
    names = [v.decode() if isinstance(v, bytes) else str(v) for v in values.tolist()]
    return names, indices.reshape(-1).astype(np.int64)
