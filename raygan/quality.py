"""Sample quality read by a domain classifier: Fréchet distance, classes covered, TVD, confidence.

Parzen windows reward blur and barely see mode collapse (Theis et al. 2016). Where Inception
features make no sense (MNIST-like data), the usual answer is a small classifier trained on the
data set's own labelled training split (Lipizzaner, Schmiedlechner et al. 2018; Mustangs, Toutouh
et al. 2019), read three ways:

- ``fd``: the Fréchet distance between Gaussians fitted to the samples' and the training split's
  penultimate-layer features (Heusel et al. 2017, Eq. 6, with this classifier's features in place
  of Inception's): ``||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))``;
- ``classes_covered`` and ``tvd``: the histogram of predicted classes, the number of classes that
  receive at least ``min_share`` of the samples, and its total variation distance to the training
  split's label histogram (Lipizzaner's diversity measure);
- ``confidence``: the mean top-class probability (low for blur or for images of no class).

For a conditional generator (samples asked for by class), :meth:`QualityModel.score_conditional`
adds ``label_accuracy``, the share of samples the classifier assigns to the class they were asked
for, and ``per_class_fd``, each class's samples against that class's training features.

Every score should be read against real data's: :meth:`QualityModel.reference` scores held-out
images (the validation split) against the same training statistics.

A classifier trained elsewhere (``eval.classifier``: a file this module wrote, for images of the
data's shape) reads data without labels: :func:`from_file` takes its features for FD against the
training split's, and its reading of the training split stands in for the label histogram, so
classes covered and TVD compare the samples with what the same classifier sees in real data.
``python -m raygan.quality --dataset DATA --out FILE`` trains one on a labelled data set.

The classifier is trained once per data set, deterministically from a seed, on the training split
only, and cached on disk keyed by a hash of the training images and labels, the architecture, the
training recipe and the seed. A corrupt, foreign or mismatching cache file is retrained and
overwritten, never trusted. No Ray here.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from raygan.data import Dataset
from raygan.errors import QualityError, UserError
from raygan.files import atomic_torch_save

DEFAULT_CACHE_DIR = "~/.cache/raygan/classifiers"
CACHE_DIR_ENV = "RAYGAN_CACHE_DIR"  # overrides DEFAULT_CACHE_DIR: the directory holding the classifier files
FORMAT = "raygan-quality-classifier-v2"  # the cache file's format tag (v2: per-class feature statistics)
ARCH_VERSION = 1  # bump when DomainClassifier or the training recipe changes: old caches stop matching
DEFAULT_MIN_SHARE = 0.02  # a class is covered when it receives at least this share of the samples

# Training recipe (part of the cache key through ARCH_VERSION).
TRAIN_IMAGES = 160_000  # images seen in training on a small set: 40 epochs of mnist5k's 4,000
MIN_EPOCHS = 8  # on a large set: Fashion-MNIST needs about this many to pass 88 % test accuracy
BATCH_SIZE = 64
LEARNING_RATE = 2e-3  # Adam, decayed to 0 on a cosine over the run
WEIGHT_DECAY = 1e-4
MAX_SHIFT = 2  # augmentation: each training image shifted by up to this many pixels in x and y


class DomainClassifier(nn.Module):
    """A small CNN: two strided conv layers, a dense feature layer, a linear class layer.

    Strided convolutions instead of conv + max-pool: on the CPU a pooled design's full-resolution
    activations cost more than its convolutions, about 5x this design's CPU time per image.

    Args:
        in_shape: one image's (C, H, W), e.g. (1, 28, 28) or (3, 32, 32).
        num_classes: output logits.
        channels: the two conv layers' channels.
        feature_dim: F, the width of the penultimate (feature) layer that ``fd`` reads.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        channels: tuple[int, int] = (16, 32),
        feature_dim: int = 128,
    ) -> None:
        super().__init__()
        c, h, w = in_shape
        self.in_shape = tuple(in_shape)
        self.num_classes = num_classes
        self.conv = nn.Sequential(
            nn.Conv2d(c, channels[0], 5, stride=2, padding=2),  # (C0, ceil(H/2), ceil(W/2))
            nn.ReLU(),
            nn.Conv2d(channels[0], channels[1], 3, stride=2, padding=1),  # (C1, ceil(H/4), ceil(W/4))
            nn.ReLU(),
            nn.Flatten(),
        )
        quarter = ((h + 1) // 2 + 1) // 2, ((w + 1) // 2 + 1) // 2
        self.dense = nn.Sequential(nn.Linear(channels[1] * quarter[0] * quarter[1], feature_dim), nn.ReLU())
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) images in [0, 1] -> (N, F) penultimate-layer features (post-ReLU)."""
        return self.dense(self.conv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) images in [0, 1] -> (N, num_classes) logits."""
        return self.head(self.dropout(self.features(x)))


@dataclass(frozen=True)
class QualityScores:
    """The classifier's reading of one set of samples."""

    fd: float  # Fréchet distance of the samples' features to the training split's
    classes_covered: int  # classes receiving at least min_share of the samples
    tvd: float  # total variation distance, predicted-class histogram vs training label histogram
    confidence: float  # mean top-class probability
    histogram: tuple[float, ...]  # predicted-class shares, one per class

    def as_dict(self) -> dict:
        """The scores as plain JSON-ready values (``histogram`` as a list)."""
        d = asdict(self)
        d["histogram"] = list(self.histogram)
        return d


@dataclass(frozen=True)
class ConditionalScores:
    """The classifier's reading of samples asked for by class."""

    label_accuracy: float  # share of samples classified as the class they were asked for
    per_class_fd: tuple[float, ...]  # per class: FD of its samples' features to its training features (NaN: none asked)

    def as_dict(self) -> dict:
        """Plain JSON-ready values (``per_class_fd`` as a list, NaN as the string "nan")."""
        return {"label_accuracy": self.label_accuracy,
                "per_class_fd": [fd if math.isfinite(fd) else "nan" for fd in self.per_class_fd]}


class QualityModel:
    """A trained :class:`DomainClassifier` with the training split's cached statistics.

    Attributes:
        classifier: the classifier, in eval mode.
        num_classes: its classes.
        accuracy: its held-out accuracy (the test split), measured when it was trained.
        feature_mean: (F,) float64 mean of the training split's features.
        feature_cov: (F, F) float64 covariance of the training split's features.
        label_histogram: (num_classes,) float64 shares of the training labels.
        class_means: (num_classes, F) float64 feature means of each class's training images, or None.
        class_covs: (num_classes, F, F) float64 feature covariances per class, or None.
    """

    def __init__(
        self,
        classifier: DomainClassifier,
        accuracy: float,
        feature_mean: np.ndarray,
        feature_cov: np.ndarray,
        label_histogram: np.ndarray,
        class_means: np.ndarray | None = None,
        class_covs: np.ndarray | None = None,
    ) -> None:
        self.classifier = zero_subnormal_weights(classifier).eval()
        self.num_classes = classifier.num_classes
        self.accuracy = float(accuracy)
        self.feature_mean = feature_mean
        self.feature_cov = feature_cov
        self.label_histogram = label_histogram
        self.class_means = class_means
        self.class_covs = class_covs

    @property
    def device(self) -> torch.device:
        return next(self.classifier.parameters()).device

    def expected_classes(self, min_share: float = DEFAULT_MIN_SHARE) -> int:
        """The classes the training split itself covers (at least ``min_share`` of it): what a
        generator of that data can be asked to cover (all of a balanced labelled set's)."""
        return int((self.label_histogram >= min_share).sum())

    def to(self, device: str | torch.device) -> QualityModel:
        """Move the classifier to ``device`` (in place); returns self."""
        self.classifier.to(device)
        return self

    def score(
        self, samples: np.ndarray | torch.Tensor, min_share: float = DEFAULT_MIN_SHARE, batch_size: int = 1000
    ) -> QualityScores:
        """Score samples against the training split.

        Args:
            samples: (N, C, H, W) images in [0, 1], numpy or torch on any device; computed on the
                classifier's device.
            min_share: a class is covered when it receives at least this share of the samples.
            batch_size: images per forward pass (bounds memory).

        Returns:
            The :class:`QualityScores`.
        """
        return self._scores(*read(self.classifier, samples, batch_size), min_share)

    def score_with_labels(
        self, samples: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor | None,
        min_share: float = DEFAULT_MIN_SHARE, batch_size: int = 1000,
    ) -> tuple[QualityScores, ConditionalScores | None]:
        """:meth:`score` and, where ``labels`` (the classes the samples were asked for) are given,
        :meth:`score_conditional`, from one pass of the classifier over the samples."""
        features, probs = read(self.classifier, samples, batch_size)
        # A classifier of other data (from_file) has no classes of this data to check labels against.
        conditional = None if labels is None or self.class_means is None else self._conditional(features, probs, labels)
        return self._scores(features, probs, min_share), conditional

    def _scores(self, features: torch.Tensor, probs: torch.Tensor, min_share: float) -> QualityScores:
        predictions = probs.argmax(dim=1).cpu().numpy()
        histogram = class_histogram(predictions, self.num_classes)
        mu, cov = feature_statistics(features)
        return QualityScores(
            fd=frechet_distance(mu, cov, self.feature_mean, self.feature_cov),
            classes_covered=int((histogram >= min_share).sum()),
            tvd=total_variation(histogram, self.label_histogram),
            confidence=float(probs.max(dim=1).values.double().mean()),
            histogram=tuple(float(h) for h in histogram),
        )

    def score_conditional(
        self, samples: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, batch_size: int = 1000
    ) -> ConditionalScores:
        """Score samples asked for by class: label accuracy and per-class FD.

        Args:
            samples: (N, C, H, W) images in [0, 1].
            labels: (N,) the class each sample was asked for.
            batch_size: images per forward pass.

        Raises:
            ValueError: labels not aligned with the samples, or outside the classes; a model
                without per-class statistics.
        """
        return self._conditional(*read(self.classifier, samples, batch_size), labels)

    def _conditional(self, features: torch.Tensor, probs: torch.Tensor, labels: np.ndarray | torch.Tensor) -> ConditionalScores:
        y = np.asarray(torch.as_tensor(labels).cpu(), dtype=np.int64).ravel()
        if len(y) != len(features) or (len(y) and (y.min() < 0 or y.max() >= self.num_classes)):
            raise ValueError(f"need {len(features)} labels in [0, {self.num_classes}), got {len(y)}")
        if self.class_means is None or self.class_covs is None:
            raise ValueError("this quality model has no per-class feature statistics")
        accuracy = float((probs.argmax(dim=1).cpu().numpy() == y).mean())
        per_class = []
        for c in range(self.num_classes):
            mine = features[torch.from_numpy(y == c).to(features.device)]
            if len(mine) == 0:
                per_class.append(math.nan)
                continue
            mu, cov = feature_statistics(mine)
            per_class.append(frechet_distance(mu, cov, self.class_means[c], self.class_covs[c]))
        return ConditionalScores(label_accuracy=accuracy, per_class_fd=tuple(per_class))

    def reference(self, images: np.ndarray | torch.Tensor, min_share: float = DEFAULT_MIN_SHARE) -> QualityScores:
        """What real data scores: held-out images (the validation split) against the training statistics.

        The same as :meth:`score`; named so that every model's scores are printed beside it.
        """
        return self.score(images, min_share=min_share)



@torch.no_grad()
def read(
    classifier: DomainClassifier, samples: np.ndarray | torch.Tensor, batch_size: int = 1000
) -> tuple[torch.Tensor, torch.Tensor]:
    """The classifier's features (N, F) and class probabilities (N, K) of (N, C, H, W) images, on its device."""
    x = torch.as_tensor(samples)
    if x.ndim != 4 or tuple(x.shape[1:]) != classifier.in_shape or len(x) == 0:
        raise ValueError(f"samples must be (N, *{classifier.in_shape}) with N >= 1, got {tuple(x.shape)}")
    device = next(classifier.parameters()).device
    features, probs = [], []
    for start in range(0, len(x), batch_size):
        f = classifier.features(x[start : start + batch_size].to(device, torch.float32))
        features.append(f)
        probs.append(torch.softmax(classifier.head(f), dim=1))
    return torch.cat(features), torch.cat(probs)


def feature_statistics(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and unbiased covariance (F, F) of (N, F) features, in float64 (zero covariance for N = 1)."""
    f = torch.as_tensor(features).to(torch.float64)
    mu = f.mean(dim=0)
    centred = f - mu
    cov = centred.T @ centred / max(len(f) - 1, 1)
    return mu.cpu().numpy(), cov.cpu().numpy()


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al. 2017, Eq. 6).

    ``||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))``, in float64. The trace of the matrix root
    is taken as ``tr((S1^(1/2) S2 S1^(1/2))^(1/2))`` (the same eigenvalues, Dowson & Landau 1982):
    two symmetric eigen-decompositions, with no complex parts to discard and no eps offset needed
    for singular covariances (e.g. of one image repeated).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = _symmetric(sigma1), _symmetric(sigma2)
    root1 = _psd_sqrt(s1)
    inner = np.linalg.eigvalsh(_symmetric(root1 @ s2 @ root1))
    trace_root = np.sqrt(np.clip(inner, 0.0, None)).sum()
    diff = mu1 - mu2
    fd = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_root
    return float(max(fd, 0.0))  # rounding can leave -1e-13 for equal Gaussians


def class_histogram(predictions: np.ndarray | torch.Tensor, num_classes: int) -> np.ndarray:
    """Shares of each class among integer predictions: a float64 (num_classes,) array summing to 1."""
    p = np.asarray(torch.as_tensor(predictions).cpu(), dtype=np.int64).ravel()
    if len(p) == 0:
        raise ValueError("no predictions to count")
    return np.bincount(p, minlength=num_classes)[:num_classes].astype(np.float64) / len(p)


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """Total variation distance between two distributions on the same classes: 0.5 * sum |p - q|."""
    return float(0.5 * np.abs(np.asarray(p, np.float64) - np.asarray(q, np.float64)).sum())


def resolve_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """Where classifier files live: the argument, else ``$RAYGAN_CACHE_DIR``, else ``~/.cache/raygan/classifiers``."""
    chosen = cache_dir if cache_dir is not None else os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR
    return Path(chosen).expanduser()


def cache_key(dataset: Dataset, seed: int) -> str:
    """A hash of what the classifier depends on: training images and labels, architecture and recipe, seed."""
    h = hashlib.sha256()
    h.update(f"{FORMAT}|{ARCH_VERSION}|{seed}|{dataset.train.shape}|{dataset.num_classes}|".encode())
    h.update(np.ascontiguousarray(dataset.train).tobytes())
    h.update(np.ascontiguousarray(dataset.train_labels).tobytes())
    return h.hexdigest()


def cache_path(dataset: Dataset, cache_dir: str | Path | None = None, seed: int = 0) -> Path:
    """The classifier file for ``dataset``: ``<cache dir>/<name>-<key prefix>.pt`` (a user's data: its
    folder's or file's name, in safe characters)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(dataset.name).name) or "data"
    return resolve_cache_dir(cache_dir) / f"{name}-{cache_key(dataset, seed)[:16]}.pt"


def load_or_train(
    dataset: Dataset, cache_dir: str | Path | None = None, seed: int = 0, log: Callable[[str], None] = print
) -> QualityModel:
    """The data set's domain classifier and training statistics: loaded from the cache, else trained and cached.

    Args:
        dataset: a labelled data set; the classifier is trained on its training split only.
        cache_dir: where classifier files live (None: ``$RAYGAN_CACHE_DIR``, else
            ``~/.cache/raygan/classifiers``).
        seed: seeds initialisation, shuffling and augmentation.
        log: called with one line when the classifier is trained (its held-out accuracy) or
            when a cache file is unusable.

    Returns:
        The :class:`QualityModel`, on the CPU.

    Raises:
        QualityError: the data set has no labels.
    """
    if not dataset.labelled:
        raise QualityError(
            f"{dataset.name} has no class labels, so no classifier can be trained on it for FD, classes and TVD; "
            "name one trained on labelled images of its shape with eval.classifier (python -m raygan.quality --out FILE)"
        )
    key = cache_key(dataset, seed)
    path = cache_path(dataset, cache_dir, seed)
    if path.exists():
        try:
            return _load(path, dataset, key)
        except Exception as e:  # noqa: BLE001 - any unreadable or mismatching file is retrained, never trusted
            log(f"quality: cached classifier {str(path)!r} is unusable ({e.__class__.__name__}); retraining it")
    start = time.perf_counter()
    model = train(dataset, seed)
    seconds = time.perf_counter() - start
    try:
        atomic_torch_save(_state(model, key), path)
        where = f"cached in {str(path)!r}"
    except OSError as e:  # an unwritable cache costs a retrain next time, not this evaluation
        where = f"not cached ({e.__class__.__name__} writing {str(path)!r})"
    log(
        f"quality: trained the {dataset.name} classifier in {seconds:.1f} s on {len(dataset.train)} training images; "
        f"held-out (test split) accuracy {model.accuracy:.2%}; {where}"
    )
    return model


def train(dataset: Dataset, seed: int = 0) -> QualityModel:
    """Train the classifier on ``dataset``'s training split (deterministic given ``seed``), then measure it.

    Adam on cross-entropy with a cosine-decayed learning rate, random shifts of up to
    ``MAX_SHIFT`` pixels; ``TRAIN_IMAGES`` images seen in all, and at least ``MIN_EPOCHS`` epochs.
    The validation split is not used; the test split only measures the accuracy.

    Training runs on one torch thread, restored afterwards: the weights are then bit-identical
    whatever the caller's thread count (the cache key does not hold it), and batches of 64 small
    images gain little from more threads while losing much to a busy machine (measured: 13 CPU-s
    on one thread, 214 CPU-s on two threads sharing two cores with other work).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(dataset, seed)
    finally:
        torch.set_num_threads(threads)


def _train(dataset: Dataset, seed: int) -> QualityModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        classifier = DomainClassifier(dataset.shape, dataset.num_classes)
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(dataset.train)
    y = torch.from_numpy(dataset.train_labels)
    epochs = max(MIN_EPOCHS, math.ceil(TRAIN_IMAGES / len(x)))
    steps = epochs * math.ceil(len(x) / BATCH_SIZE)
    opt = torch.optim.Adam(classifier.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    classifier.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # dropout draws from the global generator
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=gen)
            for start in range(0, len(x), BATCH_SIZE):
                idx = order[start : start + BATCH_SIZE]
                loss = F.cross_entropy(classifier(random_shift(x[idx], MAX_SHIFT, gen)), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                schedule.step()
    classifier.eval()
    return _with_statistics(classifier, dataset)


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by a whole number of pixels in [-max_shift, max_shift] in x and y, filling with 0."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy, dx = (torch.randint(0, 2 * max_shift + 1, (n,), generator=gen) for _ in range(2))
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]  # (N, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]  # (N, 1, 1, W)
    batch = torch.arange(n)[:, None, None, None]
    chans = torch.arange(x.shape[1])[None, :, None, None]
    return padded[batch, chans, rows, cols]


def accuracy(classifier: DomainClassifier, images: np.ndarray, labels: np.ndarray, batch_size: int = 1000) -> float:
    """The share of ``images`` the classifier labels correctly."""
    _, probs = read(classifier, images, batch_size)
    return float((probs.argmax(dim=1).cpu().numpy() == labels).mean())


def zero_subnormal_weights(net: nn.Module) -> nn.Module:
    """Set the weights below float32's smallest normal number (~1.2e-38) to zero, in place.

    Weight decay leaves unused weights subnormal (about 32,000 of the mnist5k classifier's), and
    x86 multiplies subnormals in microcode: its dense layer read 10,000 samples in 2.6 s, 0.24 s
    without them. Their part in any output is below 1e-37, far under float32's resolution.
    """
    tiny = torch.finfo(torch.float32).tiny
    with torch.no_grad():
        for p in net.parameters():
            if p.is_floating_point():
                p.masked_fill_(p.abs() < tiny, 0.0)
    return net


def _with_statistics(classifier: DomainClassifier, dataset: Dataset) -> QualityModel:
    zero_subnormal_weights(classifier)  # the statistics are those of the network QualityModel keeps
    features, _ = read(classifier, dataset.train)
    mean, cov = feature_statistics(features)
    label_histogram = class_histogram(dataset.train_labels, dataset.num_classes)
    test_accuracy = accuracy(classifier, dataset.test, dataset.test_labels)
    means, covs = class_feature_statistics(features, dataset.train_labels, dataset.num_classes)
    return QualityModel(classifier, test_accuracy, mean, cov, label_histogram, means, covs)


def class_feature_statistics(
    features: torch.Tensor, labels: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per class: feature mean (K, F) and covariance (K, F, F), float64, of (N, F) features with (N,) labels."""
    y = torch.as_tensor(np.asarray(labels), device=features.device)
    stats = [feature_statistics(features[y == c]) for c in range(num_classes)]
    return np.stack([m for m, _ in stats]), np.stack([c for _, c in stats])


def _state(model: QualityModel, key: str) -> dict:
    c = model.classifier
    return {
        "format": FORMAT,
        "key": key,
        "in_shape": list(c.in_shape),
        "num_classes": model.num_classes,
        "accuracy": model.accuracy,
        "classifier": {k: v.detach().cpu() for k, v in c.state_dict().items()},
        "feature_mean": torch.from_numpy(model.feature_mean),
        "feature_cov": torch.from_numpy(model.feature_cov),
        "label_histogram": torch.from_numpy(model.label_histogram),
        "class_means": torch.from_numpy(model.class_means),
        "class_covs": torch.from_numpy(model.class_covs),
    }


def _load(path: Path, dataset: Dataset, key: str) -> QualityModel:
    """Load a cache file, refusing (raising) anything that is not exactly this data set's classifier."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError("not a raygan classifier file")
    if state["key"] != key or tuple(state["in_shape"]) != dataset.shape or state["num_classes"] != dataset.num_classes:
        raise ValueError("made for other data")
    classifier = DomainClassifier(dataset.shape, dataset.num_classes)
    classifier.load_state_dict(state["classifier"])  # strict: every tensor and shape must match
    f = classifier.head.in_features
    names = ("feature_mean", "feature_cov", "label_histogram", "class_means", "class_covs")
    mean, cov, hist, class_means, class_covs = (state[k] for k in names)
    k = dataset.num_classes
    shapes = tuple(tuple(t.shape) for t in (mean, cov, hist, class_means, class_covs))
    if shapes != ((f,), (f, f), (k,), (k, f), (k, f, f)) or any(
        t.dtype != torch.float64 for t in (mean, cov, hist, class_means, class_covs)
    ):
        raise ValueError("statistics of the wrong shape or type")
    tensors = [mean, cov, hist, class_means, class_covs, *classifier.state_dict().values()]
    if not all(torch.isfinite(t).all() for t in tensors) or not 0.0 <= float(state["accuracy"]) <= 1.0:
        raise ValueError("non-finite values")
    return QualityModel(classifier, float(state["accuracy"]), mean.numpy(), cov.numpy(), hist.numpy(),
                        class_means.numpy(), class_covs.numpy())


def from_file(path: str | Path, dataset: Dataset) -> QualityModel:
    """A classifier file (written by this module, for any data of ``dataset``'s image shape) set to
    read ``dataset``: its features of the training split for FD, its predicted classes of the
    training split in place of the label histogram (classes covered and TVD compare the samples'
    predicted classes with real data's). No per-class statistics: conditional scores are skipped.

    Raises:
        QualityError: the file is missing, not a raygan classifier, damaged, or for another image shape.
    """
    path = Path(path).expanduser()
    where = repr(str(path))
    if not path.is_file():
        raise QualityError(f"the classifier file {where} (eval.classifier) does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - on arbitrary bytes the unpickler raises many kinds
        raise QualityError(f"{where} is not a raygan classifier file ({e.__class__.__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise QualityError(f"{where} is not a raygan classifier file (expected format {FORMAT}; python -m raygan.quality --out FILE writes one)")
    try:
        in_shape, num_classes = tuple(int(v) for v in state["in_shape"]), int(state["num_classes"])
        if in_shape != dataset.shape:
            raise QualityError(f"the classifier {where} reads images of shape {in_shape}, but {dataset.name} holds {dataset.shape}; "
                               "train one on images of that shape (python -m raygan.quality --resize)")
        classifier = DomainClassifier(in_shape, num_classes)
        classifier.load_state_dict(state["classifier"])
        accuracy = float(state["accuracy"])
    except QualityError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise QualityError(f"{where} holds a damaged classifier ({e.__class__.__name__})") from None
    if not all(torch.isfinite(t).all() for t in classifier.state_dict().values()):
        raise QualityError(f"{where} holds a damaged classifier (non-finite weights)")
    classifier.eval()
    features, probs = read(classifier, dataset.train)
    mean, cov = feature_statistics(features)
    seen = class_histogram(probs.argmax(dim=1), num_classes)
    return QualityModel(classifier, accuracy, mean, cov, seen)


def for_data(dataset: Dataset, classifier: str | Path | None = None, cache_dir: str | Path | None = None,
             log: Callable[[str], None] = print) -> QualityModel:
    """The quality model a run uses: the named classifier file read against ``dataset``
    (:func:`from_file`), else the data set's own, trained on its labels (:func:`load_or_train`).

    Raises:
        QualityError: no classifier is named and the data set has no labels, or the named one is unusable.
    """
    if classifier is not None:
        return from_file(classifier, dataset)
    return load_or_train(dataset, cache_dir=cache_dir, log=log)


def save(model: QualityModel, dataset: Dataset, path: str | Path, seed: int = 0) -> None:
    """Write ``model`` (trained on ``dataset``) to ``path`` in the cache's format, for ``eval.classifier``."""
    atomic_torch_save(_state(model, cache_key(dataset, seed)), path)


def _symmetric(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    return 0.5 * (a + a.T)


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    """The symmetric square root of a positive semi-definite matrix (negative rounding eigenvalues -> 0)."""
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m raygan.quality``: train (or take from the cache) a labelled data set's classifier
    and write it to a file, for ``eval.classifier`` on data without labels."""
    from raygan.config import DataConfig, build
    from raygan.data import load_data

    p = argparse.ArgumentParser(prog="python -m raygan.quality",
                                description="Train raygan's domain classifier on a labelled data set and save it, "
                                "to read the samples of a run on unlabelled images of the same shape (eval.classifier).")
    p.add_argument("--dataset", required=True, help="a labelled data set: a built-in name, or a folder with class subfolders, or an .npz with labels")
    p.add_argument("--data-root", default=None, help="where a built-in data set's files are (default: its usual place)")
    p.add_argument("--resize", type=int, default=None, help="resize the images to this side first (as data.resize)")
    p.add_argument("--out", required=True, help="the classifier file to write (.pt)")
    p.add_argument("--cache-dir", default=None, help="where classifiers are cached (default ~/.cache/raygan/classifiers)")
    args = p.parse_args(argv)
    try:
        data = load_data(build(DataConfig, {"name": args.dataset, "root": args.data_root, "resize": args.resize}, "data"))
        model = load_or_train(data, cache_dir=args.cache_dir, log=lambda line: print(line, file=sys.stderr))
        save(model, data, args.out)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write {args.out!r} ({e.__class__.__name__}: {e.strerror or e})", file=sys.stderr)
        return 2
    print(f"wrote the {data.name} classifier ({data.num_classes} classes, images {data.shape}, held-out accuracy "
          f"{model.accuracy:.1%}) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
