"""Conditional generation p(x | c) (the paper's Section 7): the class reaches G and D, Algorithm 1
pairs real images with their labels and draws fake labels from the training labels, the class
count travels with the generator file, and bad labels are refused in one sentence. No Ray."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from raygan import quality
from raygan.algorithm import GANTrainer
from raygan.config import ConfigError, ModelConfig, TrainConfig, to_dict
from raygan.data import Dataset
from raygan.errors import CheckpointError
from raygan.mixture import GeneratorMixture
from raygan.models import (
    Discriminator,
    Generator,
    LabelError,
    class_grid_labels,
    generate,
    generator_state,
    load_generator,
    save_generator,
)
from raygan.sample import main as sample_main

SHAPE = (1, 8, 8)  # the smallest image the conv pair takes
K = 3
MODELS = {
    "mlp": ModelConfig(arch="mlp", noise_dim=4, g_hidden=(16,), d_hidden=(16,), d_pieces=2, init="torch", conditional=True),
    "conv": ModelConfig(arch="conv", noise_dim=4, conv_width=4, conditional=True),
}


def seeded(cls, model: ModelConfig, *args, **kwargs):
    torch.manual_seed(0)
    return cls(model, SHAPE, *args, **kwargs).eval()


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_the_label_reaches_the_generator(arch):
    g = seeded(Generator, MODELS[arch], True, num_classes=K)
    z = torch.rand(5, 4)
    outputs = [g(z, torch.full((5,), c)) for c in range(K)]
    for a, b in ((0, 1), (1, 2), (0, 2)):
        assert (outputs[a] - outputs[b]).abs().amax() > 1e-4  # every class makes other images from the same z
    # G(z | c) is G's net on [z, one_hot(c)]: the class enters next to z and nowhere else.
    labels = torch.tensor([0, 2, 1, 1, 0])
    want = torch.sigmoid(g.net(torch.cat([z, F.one_hot(labels, K).float()], dim=1))).view(-1, *SHAPE)
    assert_close(g(z, labels), want, rtol=0, atol=0)


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_the_label_reaches_the_discriminator(arch):
    d = seeded(Discriminator, MODELS[arch], num_classes=K)
    x = torch.rand(5, *SHAPE)
    logits = [d(x, torch.full((5,), c)) for c in range(K)]
    for a, b in ((0, 1), (1, 2), (0, 2)):
        assert (logits[a] - logits[b]).abs().amax() > 1e-5
    # D(x | c) joins the one-hot class to x before its first weights: flat (mlp) or K planes (conv).
    labels = torch.tensor([2, 0, 1, 2, 1])
    c = F.one_hot(labels, K).float()
    if arch == "mlp":
        joined = torch.cat([x.flatten(1), c], dim=1)
        want = d.net[2:](joined).view(-1)
    else:
        joined = torch.cat([x, c[:, :, None, None].expand(-1, -1, *SHAPE[1:])], dim=1)
        want = d.net[1:](joined).view(-1)
    assert_close(d(x, labels), want, rtol=0, atol=0)


def test_unconditional_networks_are_unchanged_by_the_option():
    plain = ModelConfig(arch="conv", noise_dim=4, conv_width=4)
    g = seeded(Generator, plain, True, num_classes=10)  # a class count without model.conditional is ignored
    assert g.num_classes is None and g.net[0].in_features == 4
    with pytest.raises(ConfigError, match="labelled data set"):
        Generator(MODELS["conv"], SHAPE)


def test_a_conditional_checkpoint_round_trips_with_its_class_count(tmp_path):
    g = seeded(Generator, MODELS["conv"], True, num_classes=7)
    save_generator(tmp_path / "g.pt", g)
    back = load_generator(tmp_path / "g.pt")
    assert back.num_classes == 7 and back.config.conditional
    labels = torch.tensor([6, 0, 3, 3])
    assert_close(generate(back, 4, seed=5, labels=labels), generate(g, 4, seed=5, labels=labels), rtol=0, atol=0)
    state = generator_state(g)
    del state["num_classes"]  # a conditional file without its class count is damaged, not guessed
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="damaged"):
        load_generator(tmp_path / "bad.pt")


def test_an_unconditional_checkpoint_still_loads(tmp_path):
    g = seeded(Generator, ModelConfig(arch="mlp", noise_dim=4, g_hidden=(8,)), True)
    state = generator_state(g)
    assert set(state) == {"format", "model", "data_shape", "bounded", "state_dict"}  # the file format is unchanged
    del state["model"]["conditional"]  # as written before the option existed
    torch.save(state, tmp_path / "old.pt")
    back = load_generator(tmp_path / "old.pt")
    assert back.num_classes is None
    assert_close(generate(back, 6, seed=1), generate(g, 6, seed=1), rtol=0, atol=0)


def test_default_labels_spread_evenly_in_one_row_per_class():
    labels = class_grid_labels(1000, 10)
    assert_close(torch.bincount(labels), torch.full((10,), 100))
    assert_close(labels[:100].view(10, 10), torch.arange(10)[:, None].expand(10, 10))
    assert_close(torch.bincount(class_grid_labels(10, 3), minlength=3), torch.tensor([4, 3, 3]))


def test_generate_uses_the_given_labels_and_defaults_to_the_grid():
    g = seeded(Generator, MODELS["mlp"], True, num_classes=K)
    by_default = generate(g, 9, seed=2)
    assert_close(by_default, generate(g, 9, seed=2, labels=class_grid_labels(9, K)), rtol=0, atol=0)
    assert (by_default - generate(g, 9, seed=2, labels=[1] * 9)).abs().amax() > 1e-4


@pytest.mark.parametrize(
    "labels, message",
    [([0, 1, 3], "class 3 is not one of this generator's 3 classes"), ([0, -1, 2], "class -1"),
     ([0, 1], "3 integer class indices"), ([0.0, 1.0, 2.0], "integer class indices")],
)
def test_bad_labels_are_refused_in_one_sentence(labels, message):
    g = seeded(Generator, MODELS["mlp"], True, num_classes=K)
    with pytest.raises(LabelError, match=message):
        generate(g, 3, labels=labels)


def test_an_unconditional_generator_refuses_labels():
    g = seeded(Generator, ModelConfig(arch="mlp", noise_dim=4, g_hidden=(8,)), True)
    with pytest.raises(LabelError, match="unconditional"):
        generate(g, 2, labels=[0, 1])


# ---- Algorithm 1 ------------------------------------------------------------------------------


def labelled_data(shares=(0.5, 0.3, 0.2), n=1000):
    """Images whose every pixel is label / 10 (a minibatch shows whether it kept its labels), and the labels."""
    counts = [round(s * n) for s in shares]
    labels = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
    images = (labels.float() / 10)[:, None, None, None].expand(-1, *SHAPE).contiguous()
    return images, labels


def conditional_trainer(model: ModelConfig = MODELS["mlp"], seed: int = 0) -> GANTrainer:
    images, labels = labelled_data()
    return GANTrainer(model, TrainConfig(batch_size=50, seed=seed), images, labels=labels)


def test_real_images_keep_their_own_labels():
    trainer = conditional_trainer()
    with trainer._rng():
        x, c = trainer._minibatch(trainer._stream())
    assert_close(x[:, 0, 0, 0], c.float() / 10)


def test_fake_labels_follow_the_training_label_shares():
    trainer = conditional_trainer()
    with trainer._rng():
        gen = trainer._stream()
        drawn = torch.cat([trainer._fake_labels(gen) for _ in range(400)])  # 20,000 labels
    shares = torch.bincount(drawn, minlength=K).double() / len(drawn)
    # binomial standard error at 20,000 draws is at most 0.0036: 0.015 is over four of them
    assert_close(shares, torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64), rtol=0, atol=0.015)


def test_fake_labels_come_from_the_trainers_stream():
    a, b = conditional_trainer(seed=1), conditional_trainer(seed=1)
    draws = []
    for t in (a, b):
        with t._rng():
            draws.append(t._fake_labels(t._stream()))
    assert_close(draws[0], draws[1], rtol=0, atol=0)


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_a_conditional_run_resumes_bit_exactly(arch):
    trainer = conditional_trainer(MODELS[arch])
    trainer.run(3)
    state = copy.deepcopy(trainer.state_dict())  # state_dict() shares the live tensors
    want = trainer.run(2)
    resumed = conditional_trainer(MODELS[arch], seed=9)
    resumed.load_state_dict(state)
    got = resumed.run(2)
    assert (got.d_loss, got.g_loss, got.d_real, got.d_fake) == (want.d_loss, want.g_loss, want.d_real, want.d_fake)
    assert trainer.generator.num_classes == K and trainer.discriminator.num_classes == K


def test_a_conditional_trainer_needs_labels():
    images, _ = labelled_data()
    with pytest.raises(ConfigError, match="training labels"):
        GANTrainer(MODELS["mlp"], TrainConfig(), images)


# ---- measures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def blob_quality():
    """A classifier trained briefly on three classes of 8x8 blobs, with its per-class statistics."""
    rng = np.random.default_rng(0)

    def split(n):
        y = rng.integers(0, K, n)
        x = np.zeros((n, *SHAPE), np.float32)
        for i, c in enumerate(y):
            x[i, 0, 2 * c : 2 * c + 3, 1:7] = 1.0  # a bar whose height tells the class
        x += 0.1 * rng.random(x.shape, dtype=np.float32)
        return np.clip(x, 0, 1), y.astype(np.int64)

    (tr, ytr), (va, yva), (te, yte) = split(300), split(60), split(60)
    data = Dataset("blobs", tr, va, te, True, ytr, yva, yte)
    torch.manual_seed(0)
    classifier = quality.DomainClassifier(SHAPE, K).eval()
    return quality._with_statistics(classifier, data), data


def test_real_images_score_their_own_labels_exactly(blob_quality):
    model, data = blob_quality
    scores = model.score_conditional(data.train, data.train_labels)
    # the training images of a class against that class's training statistics: FD 0; the accuracy
    # is the classifier's own on those images (an untrained classifier: whatever it is, the same)
    assert_close(scores.label_accuracy, quality.accuracy(model.classifier, data.train, data.train_labels))
    assert_close(np.array(scores.per_class_fd), np.zeros(K), rtol=0, atol=1e-6)
    asked_wrong = model.score_conditional(data.train, (data.train_labels + 1) % K)  # each class against another's
    shifted = (data.train_labels + 1) % K
    assert_close(asked_wrong.label_accuracy, quality.accuracy(model.classifier, data.train, shifted))
    assert min(asked_wrong.per_class_fd) > 1e-3


def test_a_class_never_asked_for_has_no_fd(blob_quality):
    model, data = blob_quality
    keep = data.train_labels != 2
    scores = model.score_conditional(data.train[keep], data.train_labels[keep])
    assert np.isnan(scores.per_class_fd[2]) and scores.as_dict()["per_class_fd"][2] == "nan"
    with pytest.raises(ValueError, match="labels"):
        model.score_conditional(data.train[:3], [0, 1, 3])


def test_the_evaluator_adds_label_accuracy_for_labelled_samples(blob_quality):
    from raygan import keys
    from raygan.config import EvalConfig
    from raygan.evaluator import ParzenEvaluator

    model, data = blob_quality
    ev = ParzenEvaluator(data.valid, data.test, None, EvalConfig(sigmas=(0.1, 0.3), cpus=1.0), quality=model)
    want = model.score_conditional(data.train[:90], data.train_labels[:90])
    scores = ev.score_valid(data.train[:90], data.train_labels[:90])
    assert_close(scores[keys.LABEL_ACCURACY], want.label_accuracy)
    assert_close(scores[keys.CLASS_FD], float(np.mean(want.per_class_fd)))
    assert keys.LABEL_ACCURACY not in ev.score_valid(data.train[:90])
    test = ev.score_test(data.train[:90], data.train_labels[:90])["quality"]
    assert_close(test["label_accuracy"], want.label_accuracy)
    assert_close(test["per_class_fd"], list(want.per_class_fd))


# ---- the mixture and the CLI -------------------------------------------------------------------


def test_a_mixture_of_conditional_members_passes_each_sample_its_label():
    members = [seeded(Generator, MODELS["mlp"], True, num_classes=K) for _ in range(2)]
    with torch.no_grad():
        members[1].net[-1].bias.add_(5.0)  # the members tell apart by brightness
    mix = GeneratorMixture(members, [0.5, 0.5])
    labels = torch.tensor([0, 1, 2, 2, 1, 0, 1, 2])
    got = mix.sample(8, seed=3, labels=labels)
    comps, seeds = mix._draw(8, seed=3)
    for j, member in enumerate(members):
        where = (comps == j).nonzero().view(-1)
        if len(where):
            assert_close(got[where], generate(member, len(where), seed=seeds[j], labels=labels[where]), rtol=0, atol=0)
    plain = Generator(ModelConfig(arch="mlp", noise_dim=4, g_hidden=(16,)), SHAPE)
    with pytest.raises(ValueError, match="all unconditional or all conditional"):
        GeneratorMixture([members[0], plain], [0.5, 0.5])


@pytest.fixture
def conditional_file(tmp_path):
    g = seeded(Generator, MODELS["conv"], True, num_classes=K)
    save_generator(tmp_path / "g.pt", g)
    return tmp_path / "g.pt", g


def test_cli_draws_the_asked_classes(conditional_file, tmp_path):
    path, g = conditional_file
    out = tmp_path / "s.npy"
    assert sample_main(["--checkpoint", str(path), "--num", "6", "--label", "2", "--out", str(out)]) == 0
    assert_close(torch.from_numpy(np.load(out)), generate(g, 6, seed=0, labels=[2] * 6))
    assert sample_main(["--checkpoint", str(path), "--num", "6", "--labels", "2,0", "--out", str(out)]) == 0
    assert_close(torch.from_numpy(np.load(out)), generate(g, 6, seed=0, labels=[2, 2, 2, 0, 0, 0]))
    assert sample_main(["--checkpoint", str(path), "--num", "6", "--out", str(out)]) == 0  # one block per class
    assert_close(torch.from_numpy(np.load(out)), generate(g, 6, seed=0, labels=[0, 0, 1, 1, 2, 2]))
    assert sample_main(["--checkpoint", str(path), "--num", "9", "--out", str(tmp_path / "s.png")]) == 0


@pytest.mark.parametrize(
    "args, message",
    [(["--label", "3"], "class 3 is not one of this generator's 3 classes"),
     (["--labels", "0,x"], "comma-separated class numbers"), (["--labels", "0,-2"], "class -2")],
)
def test_cli_refuses_bad_labels_in_one_sentence(conditional_file, tmp_path, capsys, args, message):
    path, _ = conditional_file
    assert sample_main(["--checkpoint", str(path), "--out", str(tmp_path / "s.npy"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not (tmp_path / "s.npy").exists()


def test_cli_refuses_a_label_for_an_unconditional_generator(tmp_path, capsys):
    save_generator(tmp_path / "g.pt", seeded(Generator, ModelConfig(arch="mlp", noise_dim=4, g_hidden=(8,)), True))
    assert sample_main(["--checkpoint", str(tmp_path / "g.pt"), "--label", "1", "--out", str(tmp_path / "s.npy")]) == 2
    err = capsys.readouterr().err
    assert "unconditional" in err and err.count("\n") == 1


def test_conditional_is_a_documented_model_setting():
    assert to_dict(ModelConfig())["conditional"] is False
