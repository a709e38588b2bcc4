"""python -m raygan.sample: samples from a generator file, and one-sentence errors for bad input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from raygan.config import ModelConfig
from raygan.models import Generator, generate, save_generator
from raygan.sample import main


@pytest.fixture
def generator_file(tmp_path):
    torch.manual_seed(0)
    g = Generator(ModelConfig(arch="mlp", noise_dim=8, g_hidden=(16,)), (1, 28, 28))
    path = tmp_path / "generator.pt"
    save_generator(path, g)
    return path, g


def test_npy_holds_the_generators_samples(generator_file, tmp_path):
    path, g = generator_file
    out = tmp_path / "s.npy"
    assert main(["--checkpoint", str(path), "--num", "7", "--out", str(out), "--seed", "3"]) == 0
    samples = np.load(out)
    assert samples.shape == (7, 1, 28, 28) and samples.dtype == np.float32
    assert samples.min() >= 0 and samples.max() <= 1
    np.testing.assert_array_equal(samples, generate(g.eval(), 7, seed=3).numpy())


def test_png_grid(generator_file, tmp_path):
    path, _ = generator_file
    out = tmp_path / "grid.png"
    assert main(["--checkpoint", str(path), "--num", "16", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("content", [b"", b"\x00\xffrandom bytes" * 50, b"just some text\n"])
def test_not_a_checkpoint_is_one_sentence_and_exit_2(tmp_path, capsys, content):
    bad = tmp_path / "generator.pt"
    bad.write_bytes(content)
    out = tmp_path / "out.npy"
    out.write_bytes(b"keep me")
    assert main(["--checkpoint", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert out.read_bytes() == b"keep me"  # nothing already written is damaged


def test_missing_checkpoint_and_bad_arguments(generator_file, tmp_path, capsys):
    path, _ = generator_file
    assert main(["--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "a.npy")]) == 2
    assert main(["--checkpoint", str(path), "--num", "0", "--out", str(tmp_path / "a.npy")]) == 2
    assert main(["--checkpoint", str(path), "--out", str(tmp_path / "a.jpg")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(e.startswith("error: ") for e in errors)


def test_as_a_user_runs_it(tmp_path):
    bad = tmp_path / "random.pt"
    bad.write_bytes(np.random.default_rng(0).bytes(1000))
    run = subprocess.run(
        [sys.executable, "-m", "raygan.sample", "--checkpoint", str(bad), "--out", str(tmp_path / "x.png")],
        capture_output=True, text=True,
    )
    assert run.returncode == 2
    assert "Traceback" not in run.stderr and run.stderr.count("\n") == 1


def test_a_mixture_file_samples_like_the_mixture(tmp_path):
    from raygan.mixture import GeneratorMixture

    torch.manual_seed(1)
    members = [Generator(ModelConfig(arch="mlp", noise_dim=8, g_hidden=(16,), prior=p), (1, 28, 28)) for p in ("uniform", "gaussian")]
    mixture = GeneratorMixture(members, [0.3, 0.7], names=["a", "b"])
    path = tmp_path / "mixture.pt"
    mixture.save(path)
    out = tmp_path / "m.npy"
    assert main(["--checkpoint", str(path), "--num", "9", "--out", str(out), "--seed", "5"]) == 0
    np.testing.assert_array_equal(np.load(out), mixture.sample(9, seed=5).numpy())
    assert main(["--checkpoint", str(path), "--num", "16", "--out", str(tmp_path / "m.png")]) == 0
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_tampered_mixture_file_is_one_sentence_and_exit_2(tmp_path, capsys):
    from raygan.mixture import GeneratorMixture

    members = [Generator(ModelConfig(arch="mlp", noise_dim=8, g_hidden=(16,)), (1, 28, 28)) for _ in range(2)]
    state = GeneratorMixture(members, [0.5, 0.5]).state()
    state["weights"] = torch.tensor([0.9, 0.9], dtype=torch.float64)
    torch.save(state, tmp_path / "mixture.pt")
    assert main(["--checkpoint", str(tmp_path / "mixture.pt"), "--out", str(tmp_path / "x.npy")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "mixture" in err
    assert not (tmp_path / "x.npy").exists()
