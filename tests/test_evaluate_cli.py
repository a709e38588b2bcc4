"""python -m raygan.evaluate: the Parzen protocol and the quality measures on a samples file or a
generator, --json, one-sentence errors."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from raygan import parzen
from raygan.config import ModelConfig
from raygan.data import load_dataset
from raygan.evaluate import evaluate_samples, main
from raygan.models import Generator, generate, save_generator

NUMBER = r"-?\d+\.\d+"


@pytest.fixture(scope="module")
def mnist5k():
    return load_dataset("mnist5k")


@pytest.fixture(autouse=True)
def _session_classifier(mnist5k_quality, quality_cache_dir, monkeypatch):
    """The CLI finds the session's mnist5k classifier, never trains into ~/.cache."""
    monkeypatch.setenv("RAYGAN_CACHE_DIR", str(quality_cache_dir))


@pytest.fixture(scope="module")
def samples_file(mnist5k, tmp_path_factory):
    path = tmp_path_factory.mktemp("samples") / "train500.npy"
    np.save(path, mnist5k.train[:500])
    return path


def errors_of(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def test_cli_prints_sigma_valid_test_and_reference(samples_file, mnist5k, capsys):
    assert main(["--dataset", "mnist5k", "--samples", str(samples_file), "--num-samples", "300"]) == 0
    out = capsys.readouterr().out
    want = parzen.evaluate(mnist5k.train[:300], mnist5k.valid, mnist5k.test)
    row = re.search(rf"train500\.npy\s+300\s+({NUMBER})\s+({NUMBER})\s+({NUMBER}) ± ({NUMBER})", out)
    assert row, out
    got = [float(x) for x in row.groups()]
    assert got == pytest.approx([want.sigma, want.valid_ll, want.test_ll, want.test_se], abs=0.01)
    ref = re.search(rf"held-out data \(train\)\s+300\s+({NUMBER})\s+({NUMBER})\s+({NUMBER}) ± ({NUMBER})", out)
    assert ref, out


def test_evaluate_samples_matches_parzen(samples_file, mnist5k):
    report = evaluate_samples("mnist5k", samples=samples_file, num_samples=200, seed=1)
    assert report.model == parzen.evaluate(mnist5k.train[:200], mnist5k.valid, mnist5k.test)
    assert report.reference == parzen.reference(mnist5k.train, mnist5k.valid, mnist5k.test, 200, seed=1)
    assert (report.num_samples, report.num_reference) == (200, 200)


def test_flat_samples_score_like_images(samples_file, mnist5k, tmp_path):
    flat = tmp_path / "flat.npy"
    np.save(flat, mnist5k.train[:200].reshape(200, 784).astype(np.float64))
    a = evaluate_samples("mnist5k", samples=flat, num_samples=200)
    b = evaluate_samples("mnist5k", samples=samples_file, num_samples=200)
    assert a.model == b.model


def test_checkpoint_is_sampled_and_scored(mnist5k, tmp_path, capsys):
    torch.manual_seed(0)
    g = Generator(ModelConfig(arch="mlp", noise_dim=8, g_hidden=(16,)), (1, 28, 28))
    path = tmp_path / "generator.pt"
    save_generator(path, g)
    report = evaluate_samples("mnist5k", checkpoint=path, num_samples=100, seed=4)
    centres = generate(g.eval(), 100, seed=4).numpy()
    assert report.model == parzen.evaluate(centres, mnist5k.valid, mnist5k.test)
    assert main(["--checkpoint", str(path), "--num-samples", "100"]) == 0
    assert "generator.pt" in capsys.readouterr().out

    other = tmp_path / "points.pt"
    save_generator(other, Generator(ModelConfig(arch="mlp", noise_dim=8, g_hidden=(16,)), (1, 8, 8)))
    assert main(["--checkpoint", str(other)]) == 2
    assert "generates (1, 8, 8) samples" in errors_of(capsys)[0]


def bad_files(tmp_path):
    files = {
        "missing": tmp_path / "nope.npy",
        "random bytes": tmp_path / "random.npy",
        "text": tmp_path / "text.npy",
        "wrong shape": tmp_path / "shape.npy",
        "out of range": tmp_path / "range.npy",
        "nan": tmp_path / "nan.npy",
        "npz": tmp_path / "two.npz",
        "empty": tmp_path / "empty.npy",
        "strings": tmp_path / "strings.npy",
    }
    files["random bytes"].write_bytes(np.random.default_rng(0).bytes(4000))
    files["text"].write_text("0.1, 0.2, 0.3\n")
    np.save(files["wrong shape"], np.zeros((5, 10), np.float32))
    np.save(files["out of range"], np.full((5, 784), 255.0, np.float32))
    nan = np.zeros((5, 784), np.float32)
    nan[2, 3] = np.nan
    np.save(files["nan"], nan)
    np.savez(files["npz"], a=np.zeros((5, 784)), b=np.zeros((5, 784)))
    np.save(files["empty"], np.zeros((0, 784), np.float32))
    np.save(files["strings"], np.array([["a"] * 784] * 3))
    return files


def test_bad_samples_are_one_sentence_and_exit_2(tmp_path, capsys):
    for what, path in bad_files(tmp_path).items():
        assert main(["--samples", str(path)]) == 2, what
        err = errors_of(capsys)
        assert len(err) == 1 and err[0].startswith("error: "), (what, err)
        assert "Traceback" not in err[0]


def test_bad_arguments_exit_2(samples_file, tmp_path, capsys):
    assert main(["--samples", str(samples_file), "--num-samples", "0"]) == 2
    assert main(["--samples", str(samples_file), "--chunk-size", "0"]) == 2
    garbage = tmp_path / "generator.pt"
    garbage.write_bytes(b"\x00\x01 not a checkpoint" * 20)
    assert main(["--checkpoint", str(garbage)]) == 2
    assert main(["--checkpoint", str(tmp_path / "missing.pt")]) == 2
    errors = errors_of(capsys)
    assert len(errors) == 4 and all(e.startswith("error: ") for e in errors)
    with pytest.raises(SystemExit) as exit_:  # argparse: neither --samples nor --checkpoint
        main(["--dataset", "mnist5k"])
    assert exit_.value.code == 2


def test_subprocess_bad_file_has_no_traceback(tmp_path):
    bad = tmp_path / "random.npy"
    bad.write_bytes(np.random.default_rng(1).bytes(1000))
    proc = subprocess.run(
        [sys.executable, "-m", "raygan.evaluate", "--dataset", "mnist5k", "--samples", str(bad)],
        capture_output=True,
        check=False,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def assert_scores_equal(got: dict, want) -> None:
    assert got["classes_covered"] == want.classes_covered
    assert got["histogram"] == list(want.histogram)
    for key in ("fd", "tvd", "confidence"):
        assert got[key] == pytest.approx(getattr(want, key), rel=1e-9, abs=1e-12), key


def test_json_has_parzen_and_quality_keys(samples_file, mnist5k, mnist5k_quality, capsys):
    assert main(["--samples", str(samples_file), "--num-samples", "300", "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)  # stdout is exactly one JSON object
    assert captured.err == ""  # the classifier was loaded, not trained
    keys = {"parzen_test_ll", "parzen_test_se", "sigma", "parzen_valid_ll", "num_samples", "quality", "reference"}
    assert keys <= set(out)
    want = parzen.evaluate(mnist5k.train[:300], mnist5k.valid, mnist5k.test)
    assert (out["sigma"], out["parzen_valid_ll"], out["parzen_test_ll"], out["parzen_test_se"]) == (
        want.sigma, want.valid_ll, want.test_ll, want.test_se
    )
    assert out["num_samples"] == 300
    assert set(out["reference"]) >= {"parzen_test_ll", "parzen_test_se", "sigma", "parzen_valid_ll", "num_samples"}
    q = out["quality"]
    assert {"fd", "classes_covered", "tvd", "confidence", "reference"} <= set(q)
    assert_scores_equal(q, mnist5k_quality.score(mnist5k.train[:300]))
    assert_scores_equal(q["reference"], mnist5k_quality.reference(mnist5k.valid))


def test_text_report_prints_quality_beside_parzen(samples_file, mnist5k, mnist5k_quality, capsys):
    assert main(["--samples", str(samples_file), "--num-samples", "300"]) == 0
    out = capsys.readouterr().out
    want = mnist5k_quality.score(mnist5k.train[:300])
    row = re.search(rf"train500\.npy\s+300\s+({NUMBER})\s+(\d+)/10\s+({NUMBER})\s+({NUMBER})", out)
    assert row, out
    assert float(row.group(1)) == pytest.approx(want.fd, abs=0.01)
    assert int(row.group(2)) == want.classes_covered
    assert float(row.group(3)) == pytest.approx(want.tvd, abs=0.001)
    ref = mnist5k_quality.reference(mnist5k.valid)
    row = re.search(rf"held-out data \(valid\)\s+({NUMBER})\s+10/10\s+({NUMBER})", out)
    assert row and float(row.group(1)) == pytest.approx(ref.fd, abs=0.01), out


def test_no_quality_flag_skips_it(samples_file, capsys):
    assert main(["--samples", str(samples_file), "--num-samples", "100", "--json", "--no-quality"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["quality"] is None and captured.err == ""


def test_unlabelled_data_set_keeps_parzen_and_says_why_once(tmp_path, capsys):
    points = tmp_path / "ring.npy"
    np.save(points, load_dataset("ring-8").train[:200])
    assert main(["--dataset", "ring-8", "--samples", str(points), "--num-samples", "200", "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["quality"] is None and math.isfinite(out["parzen_test_ll"])
    assert captured.err.count("no class labels") == 1 and len(captured.err.strip().splitlines()) == 1
    assert main(["--dataset", "ring-8", "--samples", str(points), "--num-samples", "200"]) == 0
    assert capsys.readouterr().out.count("no class labels") == 1
    # Asked for explicitly: one sentence and exit 2.
    assert main(["--dataset", "ring-8", "--samples", str(points), "--num-samples", "200", "--quality"]) == 2
    err = errors_of(capsys)
    assert len(err) == 1 and err[0].startswith("error: ") and "no class labels" in err[0]


@pytest.mark.slow
def test_corrupt_classifier_cache_is_retrained_not_a_crash(
    samples_file, mnist5k_labelled, quality_cache_dir, tmp_path, capsys
):
    from raygan import quality

    cached = quality.cache_path(mnist5k_labelled, quality_cache_dir)
    (tmp_path / cached.name).write_bytes(cached.read_bytes()[:1000])
    assert main(["--samples", str(samples_file), "--num-samples", "100", "--cache-dir", str(tmp_path), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["quality"]["classes_covered"] == 10
    err = captured.err.strip().splitlines()
    assert len(err) == 2 and "unusable" in err[0] and "accuracy" in err[1], err


def test_a_checkpoint_in_a_run_is_scored_on_the_runs_data_and_its_recorded_split(tmp_path, capsys, shape_images, write_images):
    """No --dataset: a generator file inside a run is scored on that run's data, split as the run
    recorded it (data_split.json), not on mnist5k and not on a fresh draw."""
    import shutil

    import yaml

    from raygan.config import ExperimentConfig, build, to_dict
    from raygan.userdata import load, record

    images, _ = shape_images(60, side=8, seed=0)
    write_images(tmp_path / "shapes", images)  # unlabelled: Parzen only
    data = load(tmp_path / "shapes", seed=3)
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    config = build(ExperimentConfig, {"data": {"name": str(tmp_path / "shapes"), "split_seed": 3}})
    (run / "experiment.yaml").write_text(yaml.safe_dump(to_dict(config)))
    (run / "data_split.json").write_text(record(data))
    torch.manual_seed(0)
    g = Generator(ModelConfig(arch="mlp", noise_dim=4, g_hidden=(8,)), (3, 8, 8))
    save_generator(run / "best" / "generator.pt", g)

    assert main(["--checkpoint", str(run / "best" / "generator.pt"), "--num-samples", "50", "--json"]) == 0
    captured = capsys.readouterr()
    got = json.loads(captured.out)
    want = parzen.evaluate(generate(g, 50, seed=0), data.valid, data.test)
    assert got["dataset"] == str(tmp_path / "shapes") and got["quality"] is None and "no class labels" in captured.err
    assert got["parzen_test_ll"] == pytest.approx(want.test_ll, abs=1e-3)
    # The same file outside the run, --dataset the folder: a fresh split with the default seed.
    shutil.copy(run / "best" / "generator.pt", tmp_path / "loose.pt")
    assert main(["--checkpoint", str(tmp_path / "loose.pt"), "--dataset", str(tmp_path / "shapes"), "--num-samples", "50", "--json"]) == 0
    fresh = json.loads(capsys.readouterr().out)
    other = load(tmp_path / "shapes", seed=0)
    assert fresh["parzen_test_ll"] == pytest.approx(parzen.evaluate(generate(g, 50, seed=0), other.valid, other.test).test_ll, abs=1e-3)
    assert fresh["parzen_test_ll"] != pytest.approx(got["parzen_test_ll"], abs=1e-3)
    # A run whose settings this version cannot read: named data still score; unnamed, one sentence.
    (tmp_path / "newer" / "best").mkdir(parents=True)
    (tmp_path / "newer" / "experiment.yaml").write_text("tune:\n  a_setting_of_a_later_version: 1\n")
    shutil.copy(run / "best" / "generator.pt", tmp_path / "newer" / "best" / "generator.pt")
    newer = str(tmp_path / "newer" / "best" / "generator.pt")
    assert main(["--checkpoint", newer, "--dataset", str(tmp_path / "shapes"), "--num-samples", "50", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["parzen_test_ll"] == pytest.approx(fresh["parzen_test_ll"], abs=1e-6)
    assert main(["--checkpoint", newer, "--num-samples", "50"]) == 2
    assert "cannot read the run's settings" in errors_of(capsys)[-1]
    # --run with other data, or a directory that is no run: one sentence.
    assert main(["--run", str(run), "--dataset", "mnist5k", "--checkpoint", str(tmp_path / "loose.pt")]) == 2
    assert "is not the data of the run" in errors_of(capsys)[-1]
    assert main(["--run", str(tmp_path), "--checkpoint", str(tmp_path / "loose.pt")]) == 2
    assert "not a raygan run directory" in errors_of(capsys)[-1]
