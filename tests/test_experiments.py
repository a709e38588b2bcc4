"""The paper-reproduction scripts in experiments/, each run through its main() at a tiny scale.

The fast tests train for a few iterations without Ray; the population runs (Ray, tens of
seconds) are marked slow. Besides "it runs and writes a PNG", they check the numbers the
write-up relies on: the mode-coverage metric on real and collapsed points, the nearest
neighbour search, interpolation end points, and that the population's compute matches the
single run's in Algorithm 1 iterations.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import figure1_toy
import figure2_samples
import figure3_interpolation
import figure_pbt
import mode_collapse
import refine_classes
import table1

from raygan.config import ModelConfig
from raygan.data import load_dataset, mixture_centres, mixture_std
from raygan.models import Generator, generate, save_generator

try:
    import matplotlib
except ImportError:
    matplotlib = None
# Figures 1, PBT and mode collapse draw with matplotlib, which raygan does not install.
needs_matplotlib = pytest.mark.skipif(matplotlib is None, reason="needs matplotlib (pip install matplotlib)")

TINY = ModelConfig(arch="mlp", noise_dim=8, g_hidden=(16,), d_hidden=(8,), d_pieces=2)


def _png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size < 300_000


# ---- Figure 1 -----------------------------------------------------------------------------------


@needs_matplotlib
def test_figure1_draws_the_densities_and_d_at_each_stage(tmp_path):
    out, results = tmp_path / "f1.png", tmp_path / "f1.json"
    assert figure1_toy.main(["--stages", "0", "20", "--samples", "500", "--out", str(out), "--results", str(results)]) == 0
    _png(out)
    r = json.loads(results.read_text())
    assert [s["iteration"] for s in r["snapshots"]] == [0, 20]
    grid = np.array(r["grid"])
    assert np.trapezoid(r["p_data"], grid) == pytest.approx(1.0, abs=1e-3)  # the data density, whole on the grid
    for s in r["snapshots"]:
        d = np.array(s["d"])
        assert ((d > 0) & (d < 1)).all()  # D is a probability
        assert np.trapezoid(s["p_g"], grid) == pytest.approx(1.0, abs=0.05)  # G's KDE too (its mass starts near 0)
    assert r["compute"]["total_cpu_s"] > 0
    assert figure1_toy.main(["--render-only", "--out", str(out), "--results", str(results)]) == 0


# ---- Figures 2 and 3 ----------------------------------------------------------------------------


def test_nearest_training_example_is_exact():
    train = np.random.default_rng(0).random((25, 1, 4, 4), dtype=np.float32)
    samples = torch.from_numpy(train[[3, 17]] + 0.01)
    index, dist = figure2_samples.nearest(samples, train)
    assert index.tolist() == [3, 17]
    assert dist == pytest.approx([0.04, 0.04], abs=1e-5)  # 16 pixels off by 0.01 each: sqrt(16 * 1e-4)


@pytest.fixture(scope="module")
def tiny_generator(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "generator.pt"
    torch.manual_seed(0)
    save_generator(path, Generator(TINY, (1, 28, 28)))
    return path


def test_figure2_pairs_fair_samples_with_their_neighbours(tiny_generator, tmp_path):
    out, results = tmp_path / "f2.png", tmp_path / "f2.json"
    argv = ["--checkpoint", str(tiny_generator), "--num", "6", "--pairs-per-row", "3", "--out", str(out), "--results", str(results)]
    assert figure2_samples.main(argv) == 0
    _png(out)
    r = json.loads(results.read_text())["blocks"][0]
    assert len(r["nearest_index"]) == 6 and all(d > 0 for d in r["nearest_l2"])
    # Fair samples: the first six of the seed, the same ones raygan.models.generate gives.
    train = load_dataset("mnist5k").train
    from raygan.models import load_generator

    expected = generate(load_generator(tiny_generator), 6, seed=0)
    assert r["nearest_index"] == figure2_samples.nearest(expected, train)[0].tolist()


def test_figure3_rows_run_from_one_z_to_the_other(tiny_generator, tmp_path):
    from raygan.models import load_generator
    from raygan.priors import sample_noise

    g = load_generator(tiny_generator)
    images = figure3_interpolation.interpolate(g, rows=2, steps=5, seed=7)
    gen = torch.Generator().manual_seed(7)
    z0, z1 = sample_noise(g.config.prior, 2, g.config.noise_dim, gen), sample_noise(g.config.prior, 2, g.config.noise_dim, gen)
    with torch.no_grad():
        torch.testing.assert_close(images.view(2, 5, 1, 28, 28)[:, 0], g(z0))
        torch.testing.assert_close(images.view(2, 5, 1, 28, 28)[:, -1], g(z1))
    out = tmp_path / "f3.png"
    assert figure3_interpolation.main(["--checkpoint", str(tiny_generator), "--rows", "2", "--steps", "4", "--out", str(out)]) == 0
    _png(out)


# ---- Mode collapse ------------------------------------------------------------------------------


def test_mode_coverage_metric():
    centres, std = mixture_centres("ring-8"), mixture_std("ring-8")
    real = load_dataset("ring-8").test.reshape(-1, 2).astype(np.float64)
    r = mode_collapse.coverage(real, centres, std, 0.01)
    assert r["modes_covered"] == 8
    assert r["high_quality_share"] == pytest.approx(1 - math.exp(-4.5), abs=0.005)  # P(chi_2 <= 3)
    one_mode = np.repeat(centres[:1], 100, axis=0)
    assert mode_collapse.coverage(one_mode, centres, std, 0.01)["modes_covered"] == 1
    between = np.zeros((100, 2))  # the "Helvetica" point: the ring's centre, near no mode
    r = mode_collapse.coverage(between, centres, std, 0.01)
    assert (r["high_quality_share"], r["modes_covered"], r["modes_reached"]) == (0.0, 0, 1)
    assert r["median_distance_to_nearest_centre"] == pytest.approx(2.0)
    angles = np.linspace(0, 2 * np.pi, 800, endpoint=False)  # spread round a smaller ring: every mode reached, none hit
    r = mode_collapse.coverage(1.5 * np.stack([np.cos(angles), np.sin(angles)], 1), centres, std, 0.01)
    assert (r["high_quality_share"], r["modes_covered"], r["modes_reached"]) == (0.0, 0, 8)


@needs_matplotlib
def test_mode_collapse_default_run(tmp_path):
    out = tmp_path / "mc.png"
    argv = ["--iterations", "16", "--evals", "2", "--samples", "400", "--rank-valid", "200", "--no-population", "--out-dir", str(tmp_path), "--out", str(out)]
    assert mode_collapse.main(argv) == 0
    _png(out)
    r = json.loads((tmp_path / "mode_collapse.json").read_text())
    assert set(r["runs"]) == {"real data", "default, last iterate", "default, best on validation"}
    assert r["runs"]["real data"]["modes_covered"] == 8
    assert mode_collapse.main(argv + ["--render-only"]) == 0


# ---- Table 1 and the PBT figure -----------------------------------------------------------------


def _record(tmp_path: Path) -> dict:
    row = {"parzen_valid_ll": -10.0, "parzen_test_ll": -11.0, "parzen_test_se": 1.5, "sigma": 0.2,
           "compute": {"cpu_s": {"train": 5.0, "eval": 1.0}, "total_cpu_s": 6.0, "wall_s": 7.0}}
    curves = {f"abc_0000{i}": [{"step": s, "iteration": 10 * s, "parzen_valid_ll": -20.0 + s + i, "sigma": 0.2} for s in (1, 2, 3, 4)]
              for i in range(2)}
    exploits = [{"target_tag": "0_lr_d=0.1", "donor_tag": "1_lr_d=0.2", "target_step": 2, "donor_step": 2, "new_config": {}}]
    return {
        "dataset": "mnist5k", "splits": {"train": 4000, "valid": 500, "test": 500},
        "budget": {"trials": 2, "steps": 4, "iterations_per_step": 10, "iterations": 80},
        "rows": {
            "default": {**row, "iterations": 80, "best_iteration": 40, "last_iterate": dict(row),
                        "curve": [{"iteration": 10 * s, "parzen_valid_ll": -25.0 + s} for s in range(1, 9)]},
            "population": {**row, "iterations": 80, "best_trial": "abc_00001", "best_step": 4, "curves": curves, "exploits": exploits,
                           "compute": {"cpu_s": {"trials": 5.0, "ray": 3.0}, "total_cpu_s": 8.0, "wall_s": 9.0}},
            "reference": {**row, "iterations": 0},
        },
    }


def test_table1_renders_every_row_with_its_compute(tmp_path):
    md = table1.render([_record(tmp_path)])
    assert md.count("\n") == 5  # header, rule, (a), (a'), (b), (c)
    assert "-11.0 ± 1.5" in md and "2 x 40" in md and "8.0 (5.0 + 3.0)" in md


@needs_matplotlib
def test_figure_pbt_marks_the_exploits(tmp_path):
    record = _record(tmp_path)
    arrows = figure_pbt.exploit_arrows(record["rows"]["population"])
    assert arrows == [{"x0": 20, "y0": -17.0, "x1": 30, "y1": -17.0, "target": 0, "donor": 1}]
    out = tmp_path / "pbt.png"
    drawn = figure_pbt.render(record, out)
    _png(out)
    assert drawn["exploits"] == 1
    assert drawn["population_best"] == [-18.0, -17.0, -16.0, -15.0]  # best of the two trials, cumulative


def test_figure_pbt_finds_the_restore_after_an_asynchronous_exploit():
    """Trial 0 reports step 3 before the copy takes effect; Tune then restores trial 1's step-2 checkpoint."""
    rows0 = [{"step": 1, "iteration": 10, "parzen_valid_ll": -50.0}, {"step": 2, "iteration": 20, "parzen_valid_ll": -50.0},
             {"step": 3, "iteration": 30, "parzen_valid_ll": -50.0}, {"step": 3, "iteration": 30, "parzen_valid_ll": -9.0},
             {"step": 4, "iteration": 40, "parzen_valid_ll": -8.0}]
    rows1 = [{"step": s, "iteration": 10 * s, "parzen_valid_ll": -10.0 - s} for s in (1, 2, 3, 4)]
    pop = {"curves": {"x_00000": rows0, "x_00001": rows1},
           "exploits": [{"target_tag": "0_a", "donor_tag": "1_b", "target_step": 2, "donor_step": 2}]}
    assert [len(seg) for seg in figure_pbt.segments(rows0)] == [3, 2]
    assert figure_pbt.exploit_arrows(pop) == [{"x0": 20, "y0": -12.0, "x1": 30, "y1": -9.0, "target": 0, "donor": 1}]


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc (Linux)")
def test_process_tree_cpu_counts_a_child_and_its_grandchild():
    import subprocess

    import common

    burn = "import time; t = time.process_time(); exec('while time.process_time() - t < 0.6: pass')"
    # A child that starts a grandchild (as Ray's raylet starts the workers), each burning 0.6 CPU-s,
    # the grandchild under a name the classes know.
    name = "'ray::Parzen' + 'Evaluator'"  # whole only in the grandchild's command line
    code = f"import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', {burn!r}, {name}]); {burn}; p.wait()"
    with common.ProcessTreeCpu(interval_s=0.05) as tree:
        subprocess.run([sys.executable, "-c", code], check=True)
    seconds = tree.by_class()
    assert seconds is not None and seconds.get("ray", 0) >= 0.5, seconds
    assert seconds.get("evaluator", 0) >= 0.5, seconds


def test_figure_pbt_finds_a_restore_that_goes_back_below_the_exploit_step():
    """As in a real run: trial 0 reports steps 1-4, copies trial 1's step-2 checkpoint at step 3, and restarts at step 2."""
    rows0 = [{"step": s, "iteration": 10 * s, "parzen_valid_ll": -50.0 + s} for s in (1, 2, 3, 4)]
    rows0 += [{"step": 2, "iteration": 20, "parzen_valid_ll": -11.0}, {"step": 3, "iteration": 30, "parzen_valid_ll": -10.0}]
    rows1 = [{"step": s, "iteration": 10 * s, "parzen_valid_ll": -10.0 - s} for s in (1, 2, 3, 4)]
    pop = {"curves": {"x_00000": rows0, "x_00001": rows1},
           "exploits": [{"target_tag": "0_a", "donor_tag": "1_b", "target_step": 3, "donor_step": 2}]}
    assert figure_pbt.exploit_arrows(pop) == [{"x0": 20, "y0": -12.0, "x1": 20, "y1": -11.0, "target": 0, "donor": 1}]


@needs_matplotlib
def test_figure_pbt_draws_a_finished_run(tmp_path):
    from raygan.config import load_config, to_dict

    import yaml

    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(to_dict(load_config())))
    header = "eval/parzen_valid_ll,eval/fd,eval/classes_covered,algorithm/iteration,training_iteration,trial_id,experiment_tag\n"
    for i in range(2):
        trial = tmp_path / f"GANTrainable_abcde_0000{i}_{i}_k=1"
        trial.mkdir()
        rows = "".join(f"{-40 + 10 * s + i},{200 - 20 * s},10,{250 * s},{s},abcde_0000{i},{i}_k=1\n" for s in (1, 2, 3, 4))
        (trial / "progress.csv").write_text(header + rows)
    (tmp_path / "pbt_global.txt").write_text(json.dumps(["0_k=1", "1_k=1", 3, 2, {}, {"k": 2, "lr_d": 0.001}]) + "\n")
    record = figure_pbt.run_record(tmp_path)
    assert record["dataset"] == "mnist5k" and len(record["population"]["curves"]) == 2
    assert record["population"]["exploits"][0]["new_config"] == {"k": 2, "lr_d": 0.001}
    out = tmp_path / "pbt.png"
    assert figure_pbt.main(["--run", str(tmp_path), "--out", str(out)]) == 0
    _png(out)
    with pytest.raises(SystemExit, match="not a raygan run directory"):
        figure_pbt.main(["--run", str(tmp_path / "missing"), "--out", str(out)])


@needs_matplotlib
@pytest.mark.slow
@pytest.mark.ray
def test_table1_population_matches_the_single_runs_compute(ray_local, tmp_path):
    argv = ["--subset", "300", "--iterations", "64", "--trials", "2", "--steps", "4", "--g-hidden", "32", "--d-hidden", "16",
            "--num-samples", "200", "--out-dir", str(tmp_path), "--verbose", "0"]
    assert table1.main(argv) == 0
    r = json.loads((tmp_path / "mnist5k.json").read_text())
    assert set(r["rows"]) == {"default", "population", "reference"}
    assert r["rows"]["default"]["iterations"] == r["budget"]["population_iterations"] == 64
    curves = r["rows"]["population"]["curves"]
    assert len(curves) == 2 and all(rows[-1]["iteration"] == 32 for rows in curves.values())
    for key in ("default", "population", "reference"):
        assert math.isfinite(r["rows"][key]["parzen_test_ll"])
    assert r["rows"]["population"]["compute"]["cpu_s"].get("trials", 0) > 0  # the trials' processes were measured
    assert (tmp_path / "table1.md").read_text().count("mnist5k (300/300/300)") == 4
    out = tmp_path / "pbt.png"
    assert figure_pbt.main(["--results", str(tmp_path / "mnist5k.json"), "--out", str(out)]) == 0
    _png(out)


@needs_matplotlib
@pytest.mark.slow
@pytest.mark.ray
def test_mode_collapse_population(ray_local, tmp_path):
    argv = ["--iterations", "64", "--trials", "2", "--steps", "2", "--samples", "300", "--rank-valid", "200",
            "--out-dir", str(tmp_path), "--out", str(tmp_path / "mc.png"), "--verbose", "0"]
    assert mode_collapse.main(argv) == 0
    r = json.loads((tmp_path / "mode_collapse.json").read_text())
    assert r["runs"]["population best"]["iterations"] == 64
    _png(tmp_path / "mc.png")


def test_recipes_independent_classifier_and_a_short_run(tmp_path, capsys):
    import recipes

    assert recipes.coverage(np.repeat(np.arange(10), 10)) == (10, 10, 0.0)
    assert recipes.coverage(np.zeros(50, dtype=np.int64)) == (1, 1, pytest.approx(0.9))  # one class: TVD 0.9
    data = load_dataset("mnist5k")
    knn = recipes.KNN(data.train, data.train_labels)
    assert (knn.predict(data.test) == data.test_labels).mean() > 0.9  # a competent reader of digits
    # the copy ratio: training images copied sit at distance 0; real held-out images are its unit
    copies, ratio = knn.predict_and_copy_ratio(data.train[:300], data.valid)
    assert ratio < 1e-6 and (copies == data.train_labels[:300]).mean() > 0.95
    assert knn.predict_and_copy_ratio(data.valid, data.valid)[1] == pytest.approx(1.0)
    noisy = np.clip(data.valid + np.random.default_rng(0).normal(0, 0.3, data.valid.shape), 0, 1).astype(np.float32)
    assert knn.predict_and_copy_ratio(noisy, data.valid)[1] > 1.3  # further from every training digit
    argv = ["--recipes", "default-beta1-0", "--iterations", "4", "--threads", "1", "--out", str(tmp_path)]
    assert recipes.main(argv) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1].split("|")
    assert row[1].strip() == "default-beta1-0" and row[2].strip() == "4"
    _png(tmp_path / "default-beta1-0.png")


def test_refine_classes_weighting_by_the_exact_ratio_gives_the_datas_classes():
    """Samples weighted by the exact ratio p_data/p_g have the data's class shares (TVD 0); a ratio
    blind to the classes keeps G's; the table's exact column is log(p_data(y) / p_g(y))."""
    rng = np.random.default_rng(0)
    predicted = rng.choice(3, size=20_000, p=[0.5, 0.3, 0.2])
    shares = np.bincount(predicted, minlength=3) / len(predicted)
    data_shares = np.array([0.2, 0.3, 0.5])
    within = rng.normal(0, 0.5, len(predicted))  # a per-sample part that averages out within each class
    exact = np.log(data_shares / shares)[predicted] + within - np.log(np.exp(within).mean())
    rows, tvd = refine_classes.class_table(shares, data_shares, exact, predicted)
    assert tvd < 0.01
    assert rows[0].startswith(f"| 0 | {100 * shares[0]:.1f} | {np.log(0.2 / shares[0]):+.2f} |")
    _, blind = refine_classes.class_table(shares, data_shares, within, predicted)
    assert abs(blind - 0.5 * np.abs(shares - data_shares).sum()) < 0.02
