"""Bad input to the three CLIs: one sentence on stderr, exit code 2, no traceback, nothing damaged.

raygan.tune must refuse bad input before it starts Ray (fast, and no cluster left behind): its
tests replace ``_init_ray`` with a tripwire. A few cases run as a user runs them, in a
subprocess, to show what reaches the terminal. The last tests are about safety: no checkpoint
or samples file can run code when raygan reads it.
"""

from __future__ import annotations

import ast
import io
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from raygan import evaluate, sample
from raygan import tune as raygan_tune
from raygan.config import ModelConfig, TrainConfig, load_config, to_dict
from raygan.errors import CheckpointError
from raygan.models import GENERATOR_FORMAT, Generator, load_generator, save_generator

REPO = Path(__file__).resolve().parents[1]


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes: to show that nothing was written or damaged."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A storage path holding an earlier experiment's results, and a tripwire on starting Ray."""

    def no_ray(config):
        raise AssertionError("raygan.tune started Ray before refusing bad input")

    monkeypatch.setattr(raygan_tune, "_init_ray", no_ray)
    storage = tmp_path / "results"
    (storage / "earlier" / "best").mkdir(parents=True)
    (storage / "earlier" / "best" / "summary.json").write_text('{"parzen_test_ll": 225.1}\n')
    (storage / "earlier" / "best" / "generator.pt").write_bytes(b"an earlier generator")
    # The earlier experiment was a Fashion-MNIST run: its saved settings, and Tune's state file.
    earlier = load_config(overrides={"data": {"name": "fashion-mnist"}, "tune": {"name": "earlier", "storage_path": str(storage)}})
    (storage / "earlier" / "experiment.yaml").write_text(yaml.safe_dump(to_dict(earlier)))
    (storage / "earlier" / "tuner.pkl").write_bytes(b"Tune's state")
    empty = tmp_path / "empty"
    empty.mkdir()
    configs = tmp_path / "configs"
    configs.mkdir()
    for name, text in {
        "unparsable.yaml": "train:\n  k: [1, 2\n",
        "tabs.yaml": "train:\n\tk: 2\n",
        "unknown-key.yaml": "tune:\n  num_trails: 3\n",
        "unknown-section.yaml": "trian:\n  k: 2\n",
        "wrong-type.yaml": 'train:\n  k: "three"\n',
        "wrong-type-list.yaml": "model:\n  g_hidden: 1200\n",
        "not-a-mapping.yaml": "- data\n- model\n",
        "out-of-range.yaml": "train:\n  momentum: 1.5\n",
        "infinite.yaml": "train:\n  lr_d: .inf\n",
        "other-search.yaml": "search:\n  k: [1, 3]\n",
        "conditional.yaml": "model:\n  arch: mlp\n  conditional: true\n",
    }.items():
        (configs / name).write_text(text)
    (configs / "binary.yaml").write_bytes(b"\xff\xfe\x00garbage")
    return storage, empty, configs


TUNE_CASES = {
    "empty fashion-mnist directory": ["--dataset", "fashion-mnist", "--data-root", "{empty}"],
    "empty mnist directory": ["--dataset", "mnist", "--data-root", "{empty}"],
    "empty cifar10 directory": ["--dataset", "cifar10", "--data-root", "{empty}"],
    "no trials": ["--num-trials", "0"],
    "negative trials": ["--num-trials", "-3"],
    "negative cpus": ["--cpus-per-trial", "-1"],
    "negative gpus": ["--gpus-per-trial", "-0.5"],
    "negative iterations": ["--max-iterations", "-5"],
    "zero time budget": ["--time-budget-s", "0"],
    "NaN time budget": ["--time-budget-s", "nan"],
    "absurd population": ["--num-trials", "1000000000000000000000"],
    "conditional on unlabelled data": ["--dataset", "ring-8", "--config", "{configs}/conditional.yaml"],
    "a name with a slash": ["--name", "../elsewhere"],
    "missing config": ["--config", "{configs}/missing.yaml"],
    "unparsable config": ["--config", "{configs}/unparsable.yaml"],
    "config with tabs": ["--config", "{configs}/tabs.yaml"],
    "binary config": ["--config", "{configs}/binary.yaml"],
    "config is a directory": ["--config", "{configs}"],
    "unknown key": ["--config", "{configs}/unknown-key.yaml"],
    "unknown section": ["--config", "{configs}/unknown-section.yaml"],
    "wrong type": ["--config", "{configs}/wrong-type.yaml"],
    "wrong type (a number for a list)": ["--config", "{configs}/wrong-type-list.yaml"],
    "not a mapping": ["--config", "{configs}/not-a-mapping.yaml"],
    "out of range": ["--config", "{configs}/out-of-range.yaml"],
    "infinite": ["--config", "{configs}/infinite.yaml"],
    "the experiment exists": ["--name", "earlier"],
    "nothing to resume": ["--name", "never-run", "--resume"],
    "resume on other data": ["--name", "earlier", "--resume", "--dataset", "mnist5k"],
    "resume with another search": ["--name", "earlier", "--resume", "--config", "{configs}/other-search.yaml"],
    "resume with more trials": ["--name", "earlier", "--resume", "--num-trials", "8"],
    "storage path is a file": ["--storage-path", "{storage}/earlier/best/summary.json"],
}


@pytest.mark.parametrize("argv", TUNE_CASES.values(), ids=TUNE_CASES.keys())
def test_tune_refuses_bad_input_before_starting_ray(workspace, capsys, argv):
    storage, empty, configs = workspace
    before = _snapshot(storage.parent)
    argv = [a.format(storage=storage, empty=empty, configs=configs) for a in argv]
    if "--storage-path" not in argv:
        argv += ["--storage-path", str(storage)]
    assert raygan_tune.main(argv) == 2
    _one_error_line(capsys.readouterr().err)
    assert _snapshot(storage.parent) == before  # nothing written, nothing damaged


@pytest.mark.parametrize("argv", [["--num-trials", "abc"], ["--max-iterations", "1.5"], ["--no-such-flag"], ["--resume", "yes"],
                                  ["--dataset", "imagenet"], ["--scheduler", "hyperband"]])
def test_tune_argument_errors_are_usage_and_one_error_line(workspace, capsys, argv):
    with pytest.raises(SystemExit) as exit_:
        raygan_tune.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m raygan.tune") and "Traceback" not in err
    assert [line for line in err.splitlines() if "error:" in line] == [err.strip().splitlines()[-1]]


def test_a_resume_names_what_it_would_change(workspace, capsys):
    storage, _, _ = workspace
    assert raygan_tune.main(["--name", "earlier", "--resume", "--dataset", "mnist5k", "--storage-path", str(storage)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "data.name: 'fashion-mnist' -> 'mnist5k'" in line


def test_a_bare_resume_continues_the_saved_experiment(workspace):
    storage, _, _ = workspace
    config = raygan_tune.config_from_args(["--name", "earlier", "--resume", "--storage-path", str(storage)])
    assert config.data.name == "fashion-mnist" and config.tune.resume  # the saved settings, not the defaults
    path, _, quality = raygan_tune.preflight(config, dataset=object())  # accepted: nothing differs
    assert quality is None  # this stand-in data set has no labels
    assert path == str(storage / "earlier")


def test_an_experiment_saved_before_later_settings_resumes_as_it_ran(workspace):
    """An experiment.yaml written before model.d_extra_convs, train.r1 and train.g_average existed
    describes trials whose D had no extra convolutions and no penalty, and whose answer was G's last
    iterate: a bare resume rebuilds that D (whose checkpoints it can load) and trains on as the run
    began, not at today's defaults."""
    storage, _, _ = workspace
    saved = storage / "earlier" / "experiment.yaml"
    values = yaml.safe_load(saved.read_text())
    del values["model"]["d_extra_convs"], values["train"]["r1"], values["train"]["g_average"]
    saved.write_text(yaml.safe_dump(values))
    config = raygan_tune.config_from_args(["--name", "earlier", "--resume", "--storage-path", str(storage)])
    assert config.model.d_extra_convs == 0 and ModelConfig().d_extra_convs == 1
    assert config.train.r1 == 0.0 and TrainConfig().r1 == 4.0
    assert config.train.g_average == 0.0 and TrainConfig().g_average == 0.999
    raygan_tune.preflight(config, dataset=object())  # accepted: nothing differs from what was saved


# ---- raygan.sample and raygan.evaluate: files that are not what they claim ---------------------


@pytest.fixture
def bad_files(tmp_path):
    """Files a user might pass by mistake as a generator checkpoint."""
    rng = np.random.default_rng(0)
    files = {
        "random bytes": rng.bytes(4096),
        "a text file": b"epoch 1: loss 0.69\nepoch 2: loss 0.68\n",
        "an empty file": b"",
        "a zip that is not torch's": _zip_bytes(),
        "a truncated generator": _generator_bytes()[:700],
        "a trainer checkpoint": _torch_bytes({"generator": {}, "discriminator": {}, "iteration": 3}),
        "a bare state_dict": _torch_bytes(Generator(ModelConfig(arch="mlp", noise_dim=4, g_hidden=(8,)), (1, 1, 1)).state_dict()),
        "a tensor": _torch_bytes(torch.zeros(3)),
    }
    paths = {}
    for i, (name, content) in enumerate(files.items()):
        paths[name] = tmp_path / f"bad{i}.pt"
        paths[name].write_bytes(content)
    paths["a missing file"] = tmp_path / "missing.pt"
    paths["a directory"] = tmp_path
    return paths


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _generator_bytes() -> bytes:
    buffer = io.BytesIO()
    g = Generator(ModelConfig(arch="mlp", noise_dim=4, g_hidden=(64,)), (1, 1, 1), bounded=False)
    from raygan.models import generator_state

    torch.save(generator_state(g), buffer)
    return buffer.getvalue()


def _zip_bytes() -> bytes:
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("archive/data.pkl", b"not a pickle")
    return buffer.getvalue()


BAD_CHECKPOINTS = ["random bytes", "a text file", "an empty file", "a zip that is not torch's", "a truncated generator",
                   "a trainer checkpoint", "a bare state_dict", "a tensor", "a missing file", "a directory"]


@pytest.mark.parametrize("which", BAD_CHECKPOINTS)
def test_sample_refuses_what_is_not_a_generator(bad_files, tmp_path, capsys, which):
    out = tmp_path / "grid.npy"
    out.write_bytes(b"earlier samples")
    assert sample.main(["--checkpoint", str(bad_files[which]), "--out", str(out)]) == 2
    _one_error_line(capsys.readouterr().err)
    assert out.read_bytes() == b"earlier samples"


@pytest.mark.parametrize("which", BAD_CHECKPOINTS)
def test_evaluate_refuses_what_is_not_a_generator(bad_files, capsys, which):
    assert evaluate.main(["--dataset", "toy-1d", "--checkpoint", str(bad_files[which]), "--num-samples", "50"]) == 2
    _one_error_line(capsys.readouterr().err)


def test_evaluate_refuses_a_generator_for_another_data_set(tmp_path, capsys):
    path = tmp_path / "generator.pt"
    save_generator(path, Generator(ModelConfig(arch="mlp", noise_dim=4, g_hidden=(8,)), (1, 28, 28)))
    assert evaluate.main(["--dataset", "toy-1d", "--checkpoint", str(path), "--num-samples", "50"]) == 2
    assert "toy-1d" in _one_error_line(capsys.readouterr().err)


SAMPLE_FILES = {
    "wrong width": lambda: np.zeros((50, 3), np.float32),
    "wrong image shape": lambda: np.zeros((50, 1, 2, 2), np.float32),
    "three dimensions": lambda: np.zeros((50, 1, 1), np.float32),
    "one dimension": lambda: np.zeros(50, np.float32),
    "no samples": lambda: np.zeros((0, 1), np.float32),
    "strings": lambda: np.array([["a"]] * 50),
    "NaN": lambda: np.full((50, 1), np.nan, np.float32),
}


@pytest.mark.parametrize("which", SAMPLE_FILES, ids=SAMPLE_FILES)
def test_evaluate_refuses_samples_of_the_wrong_shape_or_kind(tmp_path, capsys, which):
    path = tmp_path / "samples.npy"
    np.save(path, SAMPLE_FILES[which]())
    assert evaluate.main(["--dataset", "toy-1d", "--samples", str(path), "--num-samples", "50"]) == 2
    _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("content", ["text", "npz", "missing", "random"])
def test_evaluate_refuses_a_samples_file_that_is_not_an_array(tmp_path, capsys, content):
    path = tmp_path / "samples.npy"
    if content == "text":
        path.write_text("0.1, 0.2, 0.3\n")
    elif content == "npz":
        with open(path, "wb") as f:
            np.savez(f, a=np.zeros((5, 1)), b=np.zeros((5, 1)))
    elif content == "random":
        path.write_bytes(np.random.default_rng(1).bytes(2000))
    assert evaluate.main(["--dataset", "toy-1d", "--samples", str(path)]) == 2
    _one_error_line(capsys.readouterr().err)


# ---- as a user runs them ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["raygan.tune", "--config", "{configs}/wrong-type.yaml"],
        ["raygan.tune", "--dataset", "fashion-mnist", "--data-root", "{empty}"],
        ["raygan.tune", "--num-trials", "abc"],
        ["raygan.sample", "--checkpoint", "{configs}/tabs.yaml", "--out", "{empty}/x.png"],
        ["raygan.evaluate", "--dataset", "toy-1d", "--samples", "{configs}/tabs.yaml"],
    ],
    ids=["tune: wrong type", "tune: no data files", "tune: argparse", "sample: text file", "evaluate: text file"],
)
def test_as_a_user_runs_it_there_is_no_traceback(workspace, argv):
    storage, empty, configs = workspace
    argv = [a.format(empty=empty, configs=configs) for a in argv]
    before = _snapshot(storage.parent)
    run = subprocess.run([sys.executable, "-m", *argv, *(["--storage-path", str(storage)] if argv[0] == "raygan.tune" else [])],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr and run.stdout == ""
    assert run.stderr.strip().splitlines()[-1].split(": ", 1)[0] in ("error", "python -m raygan.tune")
    if argv[-1] != "abc":
        _one_error_line(run.stderr)
    assert _snapshot(storage.parent) == before


# ---- safety: nothing read from a file runs code ----------------------------------------------


def test_every_torch_load_in_raygan_uses_weights_only_and_nothing_unpickles():
    """Read the source: every torch.load passes weights_only=True, every np.load allow_pickle=False,
    and nothing calls pickle's loaders (Ray's own pickling of actors and tasks is not ours to check)."""
    loads = 0
    for path in sorted((REPO / "raygan").glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
            keywords = {k.arg: k.value for k in node.keywords}
            where = f"{path.name}:{node.lineno}"
            if (owner, node.func.attr) == ("torch", "load"):
                loads += 1
                flag = keywords.get("weights_only")
                assert isinstance(flag, ast.Constant) and flag.value is True, f"{where}: torch.load without weights_only=True"
            if (owner, node.func.attr) == ("np", "load"):
                flag = keywords.get("allow_pickle")
                assert isinstance(flag, ast.Constant) and flag.value is False, f"{where}: np.load without allow_pickle=False"
            assert not (owner in ("pickle", "cloudpickle", "dill", "joblib") and node.func.attr in ("load", "loads")), where
    assert loads >= 2  # load_generator and the trainer checkpoint, at least


class RunsCode:
    """Unpickling this runs code: it writes a marker file. A checkpoint built with it is refused."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


@pytest.fixture
def booby_trapped(tmp_path):
    """A generator checkpoint and a samples file that run code when unpickled the unsafe way."""
    marker = tmp_path / "marker"
    checkpoint = tmp_path / "generator.pt"
    state = {"format": GENERATOR_FORMAT, "model": {"noise_dim": 4}, "data_shape": [1, 1, 1], "bounded": False,
             "state_dict": {}, "extra": RunsCode(marker)}
    torch.save(state, checkpoint)
    samples = tmp_path / "samples.npy"
    np.save(samples, np.array([RunsCode(marker)] * 10, dtype=object), allow_pickle=True)
    # The traps are live: the unsafe ways of loading do run the code.
    torch.load(checkpoint, weights_only=False)
    assert marker.read_text() == "code ran"
    marker.unlink()
    np.load(samples, allow_pickle=True)
    assert marker.exists()
    marker.unlink()
    return checkpoint, samples, marker


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(booby_trapped, tmp_path, capsys):
    checkpoint, samples, marker = booby_trapped
    with pytest.raises(CheckpointError):
        load_generator(checkpoint)
    assert sample.main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "x.npy")]) == 2
    assert evaluate.main(["--dataset", "toy-1d", "--checkpoint", str(checkpoint)]) == 2
    assert evaluate.main(["--dataset", "toy-1d", "--samples", str(samples)]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(e.startswith("error: ") for e in errors)
    assert not marker.exists()


def test_a_trainer_checkpoint_that_would_run_code_is_refused_without_running_it(booby_trapped, tmp_path):
    """GANTrainable.load_checkpoint (PBT's exploit, fault recovery, --resume) reads trainer.pt
    with weights_only=True as well: a planted object fails to load instead of running."""
    import types

    from raygan.files import TRAINER_FILE
    from raygan.trainable import GANTrainable

    _, _, marker = booby_trapped
    checkpoint_dir = tmp_path / "checkpoint_000003"
    checkpoint_dir.mkdir()
    torch.save({"generator": {}, "iteration": 1, "rng": {"cpu": RunsCode(marker)}}, checkpoint_dir / TRAINER_FILE)
    trial = types.SimpleNamespace(device=torch.device("cpu"))  # the file is read before anything of the trial is touched
    with pytest.raises(pickle.UnpicklingError):
        GANTrainable.load_checkpoint(trial, str(checkpoint_dir))
    assert not marker.exists()


# ---- resources a local Ray does not have -----------------------------------------------------


@pytest.mark.ray
@pytest.mark.parametrize(
    "changes",
    [{"gpus_per_trial": 1.0}, {"cpus_per_trial": 64.0}],
    ids=["a GPU on a machine without one", "more CPUs than the machine has"],
)
def test_tune_refuses_a_trial_the_local_ray_can_never_start(ray_local, tmp_path, changes, tiny_dataset, tiny_experiment):
    """Nothing joins a local Ray later: such a trial would stay PENDING until the time budget ran
    out (7 minutes by default) and end in 'no trial was scored'."""
    from raygan.errors import UserError

    if changes.get("gpus_per_trial") and ray_local.cluster_resources().get("GPU", 0) >= 1:
        pytest.skip("this machine has a GPU")
    config = tiny_experiment(tmp_path, **changes)
    start = time.monotonic()
    with pytest.raises(UserError, match="this machine"):
        raygan_tune.run_experiment(config, dataset=tiny_dataset(), verbose=0)
    assert time.monotonic() - start < 30
    assert not (tmp_path / config.tune.name).exists()


# ---- your own data and your own model: refused before Ray, nothing written ---------------------


@pytest.fixture
def your_data(workspace, shape_images, write_images):
    """Data sets and settings a user might get wrong, beside a good small folder to pair them with."""
    storage, _, configs = workspace
    root = storage.parent / "yours"
    images, labels = shape_images(30, side=8, seed=0)
    write_images(root / "good", images, labels)
    (root / "empty").mkdir()
    write_images(root / "mixed", images[:6])
    write_images(root / "mixed", shape_images(6, side=16, seed=1)[0], start=6)
    write_images(root / "corrupt", images[:10])
    (root / "corrupt" / "00004.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    write_images(root / "loose", images)
    write_images(root / "six", shape_images(30, side=6, seed=2)[0])
    np.save(root / "flat.npy", np.zeros((30, 64), np.uint8))
    for name, text in {
        "missing-module.yaml": "model:\n  arch: no_such_module_xyz:pair\n",
        "missing-factory.yaml": "model:\n  arch: tests.plugin_gan:nope\n",
        "one-net.yaml": "model:\n  arch: tests.plugin_gan:one_net\n",
        "tanh.yaml": "model:\n  arch: conv\nsearch:\n  arch: [conv, tests.plugin_gan:tanh_generator]\n",
        "once-differentiable.yaml": "model:\n  arch: tests.plugin_gan:once_differentiable_d\n",
        "no-classifier-file.yaml": f"eval:\n  classifier: {root / 'nowhere.pt'}\n",
        "fd-without-labels.yaml": "eval:\n  rank_by: fd\n",
        "conditional.yaml": "model:\n  arch: mlp\n  conditional: true\n",
    }.items():
        (configs / name).write_text(text)
    return root


YOUR_DATA_CASES = {
    "an empty folder": (["--dataset", "{yours}/empty"], "holds no PNG or JPEG images"),
    "mixed image sizes without data.resize": (["--dataset", "{yours}/mixed"], "differ in size"),
    "a corrupt image": (["--dataset", "{yours}/corrupt"], "cannot decode"),
    "an array of the wrong rank": (["--dataset", "{yours}/flat.npy"], "expected (N, H, W)"),
    "a data set that does not exist": (["--dataset", "{yours}/nothing-here"], "does not exist"),
    "a factory whose module does not exist": (["--dataset", "{yours}/good", "--config", "{configs}/missing-module.yaml"], "cannot import"),
    "a factory that does not exist": (["--dataset", "{yours}/good", "--config", "{configs}/missing-factory.yaml"], "has no 'nope'"),
    "a factory that returns one net": (["--dataset", "{yours}/good", "--config", "{configs}/one-net.yaml"], "must return a pair (G, D)"),
    "a searched factory whose G leaves [0, 1]": (["--dataset", "{yours}/good", "--config", "{configs}/tanh.yaml"], "lie in [0, 1]"),
    "a factory whose D the R1 penalty cannot train": (["--dataset", "{yours}/good", "--config", "{configs}/once-differentiable.yaml"],
                                                      "set train.r1: 0"),
    "a conv pair on images it cannot halve": (["--dataset", "{yours}/six"], "set data.resize"),
    "a classifier file that does not exist": (["--dataset", "{yours}/loose", "--config", "{configs}/no-classifier-file.yaml"], "does not exist"),
    "ranking by fd on unlabelled data": (["--dataset", "{yours}/loose", "--config", "{configs}/fd-without-labels.yaml"], "eval.classifier"),
    "conditional on an unlabelled folder": (["--dataset", "{yours}/loose", "--config", "{configs}/conditional.yaml"], "needs class labels"),
}


@pytest.mark.parametrize("argv, fragment", YOUR_DATA_CASES.values(), ids=YOUR_DATA_CASES.keys())
def test_tune_refuses_bad_data_and_models_in_one_sentence_writing_nothing(workspace, your_data, capsys, argv, fragment):
    storage, _, configs = workspace
    before = _snapshot(storage.parent)
    argv = [a.format(yours=your_data, configs=configs) for a in argv] + ["--storage-path", str(storage), "--name", "mine"]
    assert raygan_tune.main(argv) == 2
    assert fragment in _one_error_line(capsys.readouterr().err)
    assert _snapshot(storage.parent) == before  # no experiment directory, the data untouched


def test_a_missing_factory_as_a_user_runs_it_is_one_line(workspace, your_data):
    storage, _, configs = workspace
    run = subprocess.run([sys.executable, "-m", "raygan.tune", "--dataset", str(your_data / "good"), "--config",
                          str(configs / "missing-module.yaml"), "--storage-path", str(storage), "--name", "mine"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stdout == "" and "Traceback" not in run.stderr
    assert "no_such_module_xyz" in _one_error_line(run.stderr)
    assert not (storage / "mine").exists()
