"""A classifier named by the user (``eval.classifier``): one trained on labelled images reads data
without labels, FD in its features and classes/TVD against its reading of the training split;
``python -m raygan.quality`` writes such a file."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from raygan import quality
from raygan.errors import QualityError


@pytest.fixture(scope="module")
def classifier_file(mnist5k_labelled, mnist5k_quality, tmp_path_factory):
    path = tmp_path_factory.mktemp("named") / "digits.pt"
    quality.save(mnist5k_quality, mnist5k_labelled, path)
    return path


@pytest.fixture(scope="module")
def unlabelled(mnist5k_labelled):
    return dataclasses.replace(mnist5k_labelled, name="/data/digits-without-labels", train_labels=None,
                               valid_labels=None, test_labels=None)


def test_a_named_classifier_reads_unlabelled_data_against_its_reading_of_the_training_split(
        classifier_file, unlabelled, mnist5k_quality):
    model = quality.from_file(classifier_file, unlabelled)
    assert model.num_classes == 10 and model.class_means is None and model.accuracy == mnist5k_quality.accuracy
    features, probs = quality.read(model.classifier, unlabelled.train)
    mean, cov = quality.feature_statistics(features)
    np.testing.assert_allclose(model.feature_mean, mean)  # the training split's own statistics
    np.testing.assert_allclose(model.label_histogram, quality.class_histogram(probs.argmax(dim=1), 10))
    # 98 % accurate on mnist5k: what it reads in the training split is close to the true label shares.
    assert quality.total_variation(model.label_histogram, mnist5k_quality.label_histogram) < 0.02
    assert model.expected_classes() == 10
    real = model.reference(unlabelled.valid)
    assert real.classes_covered == 10 and real.tvd < 0.05 and real.fd < 30
    collapsed = model.score(np.repeat(unlabelled.valid[:1], 200, axis=0))  # one image, repeated
    assert collapsed.classes_covered == 1 and collapsed.tvd > 0.8 and collapsed.fd > 10 * real.fd
    both, conditional = model.score_with_labels(unlabelled.valid[:50], np.zeros(50, np.int64))
    assert conditional is None and both == model.score(unlabelled.valid[:50])  # no classes of this data to check labels against


def test_expected_classes_are_those_real_data_show(mnist5k_quality):
    model = quality.QualityModel(mnist5k_quality.classifier, 0.9, mnist5k_quality.feature_mean, mnist5k_quality.feature_cov,
                                 np.array([0.5, 0.3, 0.19, 0.01] + [0.0] * 6))
    assert model.expected_classes(0.02) == 3 and model.expected_classes(0.005) == 4


@pytest.mark.parametrize("damage, fragment", [
    ("missing", "does not exist"),
    ("bytes", "not a raygan classifier file"),
    ("other format", "not a raygan classifier file"),
    ("other shape", "reads images of shape (1, 28, 28)"),
])
def test_an_unusable_classifier_file_is_one_sentence(classifier_file, unlabelled, tmp_path, damage, fragment):
    path, data = tmp_path / "c.pt", unlabelled
    if damage == "bytes":
        path.write_bytes(b"\x00" * 100)
    elif damage == "other format":
        torch.save({"format": "something else"}, path)
    elif damage == "other shape":
        path = classifier_file
        data = dataclasses.replace(unlabelled, train=np.zeros((4, 3, 28, 28), np.float32),
                                   valid=np.zeros((4, 3, 28, 28), np.float32), test=np.zeros((4, 3, 28, 28), np.float32))
    with pytest.raises(QualityError) as err:
        quality.from_file(path, data)
    assert "\n" not in str(err.value) and fragment in str(err.value)


def test_the_cli_trains_a_labelled_folders_classifier_and_refuses_an_unlabelled_one(
        tmp_path, monkeypatch, capsys, shape_images, write_images):
    monkeypatch.setattr(quality, "TRAIN_IMAGES", 0)  # MIN_EPOCHS over 45 images: a second
    images, labels = shape_images(60, side=16, seed=3)
    write_images(tmp_path / "labelled", images, labels)
    write_images(tmp_path / "loose", images)
    out = tmp_path / "c.pt"
    assert quality.main(["--dataset", str(tmp_path / "labelled"), "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "3 classes" in capsys.readouterr().out
    state = torch.load(out, weights_only=True)
    assert state["format"] == quality.FORMAT and tuple(state["in_shape"]) == (3, 16, 16) and state["num_classes"] == 3
    from raygan.userdata import load

    model = quality.from_file(out, load(tmp_path / "loose"))
    assert model.num_classes == 3
    assert quality.main(["--dataset", str(tmp_path / "loose"), "--out", str(tmp_path / "d.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "no class labels" in err[0]
    assert not (tmp_path / "d.pt").exists()
