"""raygan.quality: the domain classifier's accuracy, its readings of real and collapsed samples,
the Fréchet distance against closed forms, and the on-disk cache (loaded, or retrained when bad)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from torch.testing import assert_close

from raygan import data, quality
from raygan.data import load_dataset
from raygan.errors import QualityError

FASHION_DIR = Path(data.DEBIAN_FASHION_MNIST_DIR)


def one_sentence(message: str) -> bool:
    return "\n" not in message and message.count(". ") == 0


def seeded_classifier(shape: tuple[int, int, int]) -> quality.DomainClassifier:
    torch.manual_seed(0)
    return quality.DomainClassifier(shape, 10)


# ------------------------------------------------------------------------ the classifier


def test_heldout_accuracy_on_mnist5k(mnist5k_quality, mnist5k_labelled):
    assert 0.97 <= mnist5k_quality.accuracy <= 1.0
    recomputed = quality.accuracy(mnist5k_quality.classifier, mnist5k_labelled.test, mnist5k_labelled.test_labels)
    assert_close(recomputed, mnist5k_quality.accuracy)


def test_classifier_shapes_for_mnist_and_cifar_images():
    for shape in ((1, 28, 28), (3, 32, 32)):
        net = seeded_classifier(shape)
        x = torch.rand(5, *shape)
        assert net(x).shape == (5, 10)
        assert net.features(x).shape == (5, 128)
        assert_close(net.head(net.features(x)), net.eval()(x))  # eval: dropout off, logits = head(features)


def test_validation_split_covers_every_class_and_matches_training_labels(mnist5k_quality, mnist5k_labelled):
    ref = mnist5k_quality.reference(mnist5k_labelled.valid)
    assert ref.classes_covered == 10
    assert 0.0 <= ref.tvd < 0.03
    assert 0.9 < ref.confidence <= 1.0
    assert_close(sum(ref.histogram), 1.0)
    # Another held-out split (test) lands near the reference FD: real data of the same size.
    other = mnist5k_quality.score(mnist5k_labelled.test)
    assert 0.5 * ref.fd < other.fd < 2.0 * ref.fd
    assert other.classes_covered == 10 and other.tvd < 0.03


def test_copies_of_one_image_are_one_class_and_far_away(mnist5k_quality, mnist5k_labelled):
    image = mnist5k_labelled.train[:1]
    copies = np.repeat(image, 1000, axis=0)
    scores = mnist5k_quality.score(copies)
    ref = mnist5k_quality.reference(mnist5k_labelled.valid)
    assert scores.classes_covered == 1
    # Uniform training labels (400 per digit) against all mass on one class: TVD = 0.9 exactly.
    assert_close(scores.tvd, 0.9)
    assert scores.histogram[int(mnist5k_labelled.train_labels[0])] == 1.0
    assert scores.fd > 20 * ref.fd
    # Closed form: the copies' covariance is 0, so FD = ||f - mu||^2 + tr(S_train).
    with torch.no_grad():
        f = mnist5k_quality.classifier.features(torch.from_numpy(image)).double().numpy()[0]
    want = ((f - mnist5k_quality.feature_mean) ** 2).sum() + np.trace(mnist5k_quality.feature_cov)
    assert_close(scores.fd, float(want), rtol=1e-6, atol=1e-6)


def test_score_takes_numpy_or_torch_and_min_share(mnist5k_quality, mnist5k_labelled):
    x = mnist5k_labelled.valid[:300]
    a = mnist5k_quality.score(x, batch_size=128)
    b = mnist5k_quality.score(torch.from_numpy(x))
    assert_close(a.fd, b.fd, rtol=1e-9, atol=1e-9)
    assert (a.classes_covered, a.tvd, a.histogram) == (b.classes_covered, b.tvd, b.histogram)
    assert mnist5k_quality.score(x, min_share=0.5).classes_covered == 0
    assert set(a.as_dict()) == {"fd", "classes_covered", "tvd", "confidence", "histogram"}
    with pytest.raises(ValueError):
        mnist5k_quality.score(np.zeros((4, 1, 8, 8), np.float32))


# ------------------------------------------------------------------------ the maths


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=64), rng.normal(size=64)
    a, b = rng.uniform(0.01, 3.0, size=64), rng.uniform(0.0, 3.0, size=64)
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    got = quality.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert_close(got, float(want), rtol=0, atol=1e-6)
    # A common rotation changes nothing: the distance is of the Gaussians, not of the axes.
    q, _ = np.linalg.qr(rng.normal(size=(64, 64)))
    rotated = quality.frechet_distance(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T)
    assert_close(rotated, float(want), rtol=0, atol=1e-6)


def test_frechet_distance_of_sampled_feature_sets_matches_scipy_sqrtm():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, 16)) @ rng.normal(size=(16, 16))
    y = rng.normal(size=(2000, 16)) @ rng.normal(size=(16, 16)) + 0.5
    (mu1, s1), (mu2, s2) = quality.feature_statistics(x), quality.feature_statistics(y)
    assert_close(s1, np.cov(x, rowvar=False))
    root = scipy.linalg.sqrtm(s1 @ s2).real
    want = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * root)
    assert_close(quality.frechet_distance(mu1, s1, mu2, s2), float(want), rtol=1e-9, atol=1e-6)
    assert_close(quality.frechet_distance(mu1, s1, mu1, s1), 0.0, rtol=0, atol=1e-6)
    assert_close(quality.frechet_distance(mu1, s1, mu2, s2), quality.frechet_distance(mu2, s2, mu1, s1))


def test_histogram_and_total_variation():
    h = quality.class_histogram(np.array([0, 0, 1, 3]), 4)
    assert_close(h, np.array([0.5, 0.25, 0.0, 0.25]))
    assert_close(quality.total_variation(h, np.full(4, 0.25)), 0.25)
    assert_close(quality.total_variation(h, h), 0.0)
    assert_close(quality.total_variation([1, 0], [0, 1]), 1.0)


# ------------------------------------------------------------------------ the cache


def test_second_call_loads_the_cache(mnist5k_quality, mnist5k_labelled, quality_cache_dir):
    lines: list[str] = []
    again = quality.load_or_train(mnist5k_labelled, cache_dir=quality_cache_dir, log=lines.append)
    assert lines == []  # nothing trained, nothing refused
    for (name, a), b in zip(mnist5k_quality.classifier.state_dict().items(), again.classifier.state_dict().values()):
        assert torch.equal(a, b), name
    assert_close(again.feature_cov, mnist5k_quality.feature_cov, rtol=0, atol=0)
    assert again.accuracy == mnist5k_quality.accuracy and again.num_classes == 10
    assert_close(again.label_histogram, np.full(10, 0.1))


def test_environment_variable_chooses_the_cache(mnist5k_labelled, quality_cache_dir, monkeypatch):
    monkeypatch.setenv(quality.CACHE_DIR_ENV, str(quality_cache_dir))
    assert quality.cache_path(mnist5k_labelled).parent == quality_cache_dir
    monkeypatch.delenv(quality.CACHE_DIR_ENV)
    assert quality.cache_path(mnist5k_labelled).parent == Path(quality.DEFAULT_CACHE_DIR).expanduser()


@pytest.mark.slow  # retrains the classifier (30 s on 2 cores)
def test_corrupt_cache_is_retrained_and_overwritten(mnist5k_quality, mnist5k_labelled, quality_cache_dir, tmp_path):
    path = quality.cache_path(mnist5k_labelled, tmp_path)
    shutil.copy(quality.cache_path(mnist5k_labelled, quality_cache_dir), path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])  # truncated, as a crash or a full disk would leave it
    lines: list[str] = []
    retrained = quality.load_or_train(mnist5k_labelled, cache_dir=tmp_path, log=lines.append)
    assert len(lines) == 2 and "unusable" in lines[0] and "accuracy" in lines[1], lines
    # Training is deterministic from its seed: the retrained classifier is the one cached before.
    for a, b in zip(mnist5k_quality.classifier.state_dict().values(), retrained.classifier.state_dict().values()):
        assert_close(a, b)
    loaded = quality.load_or_train(mnist5k_labelled, cache_dir=tmp_path, log=lines.append)
    assert len(lines) == 2 and loaded.accuracy == retrained.accuracy


@pytest.mark.parametrize("damage", ["foreign dict", "other key", "bad shapes", "nan", "pickled object", "random bytes"])
def test_foreign_or_mismatching_cache_files_are_refused(
    mnist5k_quality, mnist5k_labelled, quality_cache_dir, tmp_path, damage
):
    key = quality.cache_key(mnist5k_labelled, 0)
    state = torch.load(quality.cache_path(mnist5k_labelled, quality_cache_dir), weights_only=True)
    path = tmp_path / "x.pt"
    if damage == "foreign dict":
        state = {"format": "something else"}
    elif damage == "other key":
        state["key"] = "0" * 64
    elif damage == "bad shapes":
        state["feature_cov"] = state["feature_cov"][:5]
    elif damage == "nan":
        state["feature_mean"] = state["feature_mean"].clone().fill_(math.nan)
    if damage == "pickled object":
        torch.save({"format": quality.FORMAT, "x": object()}, path)
    elif damage == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(3000))
    else:
        torch.save(state, path)
    with pytest.raises(Exception):  # noqa: B017 - any refusal; load_or_train then retrains
        quality._load(path, mnist5k_labelled, key)


def test_unlabelled_data_set_is_one_sentence(tmp_path):
    ring = load_dataset("ring-8")
    with pytest.raises(QualityError) as err:
        quality.load_or_train(ring, cache_dir=tmp_path)
    assert one_sentence(str(err.value)) and "ring-8" in str(err.value)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------ Fashion-MNIST


@pytest.mark.slow
@pytest.mark.skipif(not (FASHION_DIR / "train-labels-idx1-ubyte.gz").exists(), reason="no Fashion-MNIST files")
def test_heldout_accuracy_on_fashion_mnist(tmp_path):
    fashion = load_dataset("fashion-mnist")
    lines: list[str] = []
    model = quality.load_or_train(fashion, cache_dir=tmp_path, log=lines.append)
    assert 0.88 <= model.accuracy <= 1.0, lines
    ref = model.reference(fashion.valid)
    assert ref.classes_covered == 10 and ref.tvd < 0.05


def test_one_pass_with_labels_equals_the_two_separate_scores(mnist5k_labelled, mnist5k_quality):
    """The evaluator reads a conditional generator's samples once: the same numbers as two passes."""
    images, labels = mnist5k_labelled.valid[:300], mnist5k_labelled.valid_labels[:300]
    both, conditional = mnist5k_quality.score_with_labels(images, labels)
    assert both == mnist5k_quality.score(images)
    assert conditional == mnist5k_quality.score_conditional(images, labels)
    assert mnist5k_quality.score_with_labels(images, None)[1] is None


def test_subnormal_weights_are_zeroed_without_changing_what_the_classifier_reads(mnist5k_quality, mnist5k_labelled):
    """Weight decay leaves weights below float32's smallest normal number, which x86 multiplies
    ~10x slower; a loaded classifier holds none, and zeroing them changes no score."""
    import copy

    tiny = torch.finfo(torch.float32).tiny
    assert not any(((p != 0) & (p.abs() < tiny)).any() for p in mnist5k_quality.classifier.parameters())
    planted = copy.deepcopy(mnist5k_quality.classifier)
    with torch.no_grad():
        for p in planted.parameters():
            p.masked_fill_(p == 0, tiny / 4)  # subnormal where the weights are zero now
    assert any(((p != 0) & (p.abs() < tiny)).any() for p in planted.parameters())
    images = torch.from_numpy(mnist5k_labelled.valid[:300])
    before = planted(images)
    quality.zero_subnormal_weights(planted)
    assert not any(((p != 0) & (p.abs() < tiny)).any() for p in planted.parameters())
    torch.testing.assert_close(planted(images), before, rtol=0, atol=1e-6)
