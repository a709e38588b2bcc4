"""A user's own data (raygan.userdata): folders of images and .npy/.npz arrays read exactly, split
with a seed and recorded, resized where asked, and every malformed input refused in one sentence."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from raygan import userdata
from raygan.config import ConfigError, DataConfig, build
from raygan.data import load_data, resize_images
from raygan.errors import DataError
from raygan.userdata import load, read_record, record, split_indices


def one_sentence(err: pytest.ExceptionInfo, *fragments: str) -> str:
    message = str(err.value)
    assert "\n" not in message and ". " not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.fixture(scope="module")
def shapes60(shape_images):
    return shape_images(60, side=16, seed=1)


@pytest.fixture
def folder(tmp_path, shapes60, write_images):
    images, labels = shapes60
    write_images(tmp_path / "shapes", images, labels)
    return tmp_path / "shapes"


def _by_pixels(images: np.ndarray) -> dict[bytes, int]:
    return {np.ascontiguousarray(image).tobytes(): i for i, image in enumerate(images)}


# ---- folders ----------------------------------------------------------------------------------


def test_a_labelled_folder_is_read_exactly_split_by_class_and_recorded(folder, shapes60):
    images, labels = shapes60
    ds = load(folder, seed=5)
    assert ds.class_names == ("crosses", "discs", "squares")  # sorted subfolder names
    assert ds.shape == (3, 16, 16) and ds.bounded and ds.num_classes == 3
    # 60 images, 20 per class: round(20 * 0.1) = 2 per class to valid and to test.
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (48, 6, 6)
    for y in (ds.train_labels, ds.valid_labels, ds.test_labels):
        assert sorted(np.bincount(y).tolist()) == [len(y) // 3] * 3
    # Every image is the PNG's pixels / 255, with the label of its folder, and in exactly one split.
    source = _by_pixels(images.transpose(0, 3, 1, 2).astype(np.float32) / 255)
    names = {"discs": 0, "squares": 1, "crosses": 2}  # the conftest's class numbers
    seen = []
    for split, y in ((ds.train, ds.train_labels), (ds.valid, ds.valid_labels), (ds.test, ds.test_labels)):
        for image, label in zip(split, y):
            i = source[image.tobytes()]
            seen.append(i)
            assert names[ds.class_names[label]] == labels[i]
    assert sorted(seen) == list(range(60))
    rec = ds.split_record
    assert rec["kind"] == "folder" and rec["seed"] == 5 and rec["shares"] == [0.8, 0.1, 0.1] and rec["channels"] == 3
    assert rec["members"]["test"][0].split("/")[0] in ds.class_names  # relative paths, class folder first


def test_the_split_is_fixed_by_its_seed_and_a_record_reproduces_it(folder):
    a, b, c = load(folder, seed=0), load(folder, seed=0), load(folder, seed=1)
    assert np.array_equal(a.test, b.test) and a.split_record == b.split_record
    assert a.split_record["members"]["test"] != c.split_record["members"]["test"]
    again = load(folder, seed=99, recorded=read_record(record(c), "the record"))  # the record wins over the seed
    for split in ("train", "valid", "test"):
        assert np.array_equal(getattr(again, split), getattr(c, split))
        assert np.array_equal(getattr(again, f"{split}_labels"), getattr(c, f"{split}_labels"))
    assert again.split_record["fingerprint"] == c.split_record["fingerprint"]


def test_a_record_refuses_data_that_changed(folder):
    rec = read_record(record(load(folder)), "the record")
    victim = folder / rec["members"]["valid"][0]
    pixels = np.asarray(Image.open(victim)).copy()
    pixels[0, 0, 0] ^= 1
    Image.fromarray(pixels).save(victim)
    with pytest.raises(DataError) as err:
        load(folder, recorded=rec)
    one_sentence(err, "differ from those the experiment recorded")
    victim.unlink()
    with pytest.raises(DataError) as err:
        load(folder, recorded=rec)
    one_sentence(err, "no longer holds")
    with pytest.raises(DataError) as err:
        load(folder.parent, recorded=rec)
    one_sentence(err, "not of")


def test_a_data_source_loads_the_split_the_experiment_recorded(folder, tmp_path):
    """An evaluator replica gets a user's data back from a DataSource: the folder, and the record
    file of the experiment's split, which wins over the settings' split seed."""
    from raygan.data import DataSource, load_source

    recorded = load(folder, seed=1)
    split_file = tmp_path / "data_split.json"
    split_file.write_text(record(recorded))
    data = build(DataConfig, {"name": str(folder), "split_seed": 0}, "data")  # a seed that draws another split
    again = load_source(DataSource(data, split=str(split_file)))
    assert not np.array_equal(load_source(DataSource(data)).test, recorded.test)
    for split in ("train", "valid", "test"):
        assert np.array_equal(getattr(again, split), getattr(recorded, split))
        assert np.array_equal(getattr(again, f"{split}_labels"), getattr(recorded, f"{split}_labels"))
    with pytest.raises(DataError) as err:
        load_source(DataSource(data, split=str(tmp_path / "gone.json")))
    one_sentence(err, "gone.json", "missing")


def test_split_indices_are_stratified_and_in_order():
    labels = np.array([0] * 50 + [1] * 30)
    idx = split_indices(labels, 80, (0.6, 0.2, 0.2), seed=3)
    assert [len(idx[s]) for s in ("train", "valid", "test")] == [48, 16, 16]
    assert np.bincount(labels[idx["valid"]]).tolist() == [10, 6] == np.bincount(labels[idx["test"]]).tolist()
    assert sorted(np.concatenate(list(idx.values())).tolist()) == list(range(80))
    assert all(np.all(np.diff(v) > 0) for v in idx.values())
    unlabelled = split_indices(None, 10, (0.8, 0.1, 0.1), seed=3)
    assert [len(unlabelled[s]) for s in ("train", "valid", "test")] == [8, 1, 1]


def test_loose_images_or_a_single_subfolder_are_unlabelled(tmp_path, shapes60, write_images):
    images, labels = shapes60
    write_images(tmp_path / "loose", images[:20])
    write_images(tmp_path / "one" / "faces", images[:20])
    for root in (tmp_path / "loose", tmp_path / "one"):
        ds = load(root)
        assert not ds.labelled and ds.class_names is None and ds.num_classes is None
        assert len(ds.train) + len(ds.valid) + len(ds.test) == 20 and ds.split_record["classes"] is None


def test_images_are_ordered_by_file_name_across_class_folders(tmp_path, shapes60, write_images):
    """Numbered files keep their numbering's order whatever their class, so a converted data set
    holds its images in the original order."""
    images, labels = shapes60
    write_images(tmp_path / "f", images, labels)
    ds = load(tmp_path / "f", shares=(0.8, 0.1, 0.1))
    order = [int(rel.rsplit("/", 1)[1][:5]) for rel in ds.split_record["members"]["train"]]
    assert order == sorted(order)
    source = images.transpose(0, 3, 1, 2).astype(np.float32) / 255
    assert np.array_equal(ds.train, source[order])


def test_a_folder_with_its_own_split_keeps_it(tmp_path, shape_images, write_images):
    images, labels = shape_images(45, side=8, seed=2)
    for split, part in (("train", slice(0, 30)), ("val", slice(30, 36)), ("test", slice(36, 45))):
        write_images(tmp_path / "d" / split, images[part], labels[part], start=part.start)
    ds = load(tmp_path / "d", seed=7)
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (30, 6, 9)
    source = images.transpose(0, 3, 1, 2).astype(np.float32) / 255
    assert np.array_equal(ds.test, source[36:45]) and np.array_equal(ds.valid, source[30:36])
    assert ds.split_record["seed"] is None  # nothing was drawn
    # Without a valid folder, valid is drawn from train at valid's share of train + valid (0.1 / 0.9).
    (tmp_path / "d" / "val").rename(tmp_path / "spare")
    ds = load(tmp_path / "d", seed=7)
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (27, 3, 9)
    assert ds.split_record["seed"] == 7  # drawn, so its seed is recorded
    again = load(tmp_path / "d", recorded=read_record(record(ds), "the record"))
    assert np.array_equal(again.valid, ds.valid) and np.array_equal(again.train, ds.train)


def test_grey_images_make_one_channel_and_a_mixed_set_three(tmp_path, shape_images, write_images):
    grey, _ = shape_images(10, side=8, seed=3, grey=True)
    write_images(tmp_path / "L", grey)  # mode L PNGs
    write_images(tmp_path / "rgb-grey", np.repeat(grey[..., None], 3, axis=3))  # grey stored as RGB
    for root in ("L", "rgb-grey"):
        ds = load(tmp_path / root)
        assert ds.shape == (1, 8, 8), root
        everything = np.concatenate([ds.train, ds.valid, ds.test])
        assert sorted(x.tobytes() for x in everything) == sorted((g[None] / np.float32(255)).astype(np.float32).tobytes() for g in grey)
    colour, _ = shape_images(10, side=8, seed=4)
    write_images(tmp_path / "mixed", grey[:5])
    write_images(tmp_path / "mixed", colour[5:], start=5)
    ds = load(tmp_path / "mixed")
    assert ds.shape == (3, 8, 8)
    everything = np.concatenate([ds.train, ds.valid, ds.test])
    repeated = [x for x in everything if np.array_equal(x[0], x[1]) and np.array_equal(x[1], x[2])]
    assert len(repeated) == 5  # the grey ones, repeated to three channels


def test_sixteen_bit_and_jpeg_images_decode(tmp_path, shape_images):
    deep = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    (tmp_path / "16").mkdir()
    for i in range(10):
        Image.fromarray(deep).save(tmp_path / "16" / f"{i}.png")
    ds = load(tmp_path / "16")
    assert ds.shape == (1, 8, 8)
    np.testing.assert_allclose(ds.train[0, 0], deep / 65535, rtol=0, atol=1e-7)
    colour, _ = shape_images(10, side=16, seed=5)
    (tmp_path / "jpg").mkdir()
    for i, image in enumerate(colour):
        Image.fromarray(image).save(tmp_path / "jpg" / f"{i}.JPG", quality=95)
    ds = load(tmp_path / "jpg")
    assert ds.shape == (3, 16, 16)
    everything = np.concatenate([ds.train, ds.valid, ds.test])
    assert 0 < np.abs(np.sort(everything.reshape(10, -1), axis=0) - np.sort(colour.transpose(0, 3, 1, 2).reshape(10, -1) / 255, axis=0)).mean() < 0.05


# ---- resizing ---------------------------------------------------------------------------------


def test_resize_scales_the_shorter_side_and_crops_the_centre():
    # 8x32 -> 4x16, whose centre 4x4 is columns 12..20 of the input (the filter reads 8..24).
    wide = np.zeros((2, 1, 8, 32), np.float32)
    wide[0, ..., 8:24] = 1.0  # white in the middle
    wide[1, ..., :8] = 1.0  # white at the left edge only
    out = resize_images(wide, 4)
    assert out.shape == (2, 1, 4, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], 1.0, atol=1e-6)
    np.testing.assert_allclose(out[1], 0.0, atol=1e-6)
    checker = (np.indices((16, 16)).sum(axis=0) % 2).astype(np.float32)[None, None]
    half = resize_images(checker, 8)  # antialiased: a 2x shrink of a checkerboard is grey
    np.testing.assert_allclose(half[..., 1:-1, 1:-1], 0.5, atol=1e-6)  # inside: no border renormalisation
    flat = np.full((2, 3, 5, 5), 0.25, np.float32)
    np.testing.assert_allclose(resize_images(flat, 12), 0.25, atol=1e-6)  # upsampling keeps a constant
    assert resize_images(flat, 5) is flat


def test_mixed_sizes_need_resize_and_get_it(tmp_path, shape_images, write_images):
    small, _ = shape_images(6, side=16, seed=6)
    large, _ = shape_images(6, side=32, seed=7)
    write_images(tmp_path / "m", small)
    write_images(tmp_path / "m", large, start=6)
    with pytest.raises(DataError) as err:
        load(tmp_path / "m", shares=(0.5, 0.25, 0.25))
    one_sentence(err, "differ in size", "data.resize")
    ds = load(tmp_path / "m", resize=16, shares=(0.5, 0.25, 0.25))
    assert ds.shape == (3, 16, 16) and ds.split_record["resize"] == 16
    everything = np.concatenate([ds.train, ds.valid, ds.test])
    small_f = small.transpose(0, 3, 1, 2).astype(np.float32) / 255
    large_f = resize_images(large.transpose(0, 3, 1, 2).astype(np.float32) / 255, 16)
    want = sorted(x.tobytes() for x in np.concatenate([small_f, large_f]))
    assert sorted(x.tobytes() for x in everything) == want


def test_resize_applies_to_built_in_image_sets_and_not_to_points():
    ds = load_data(DataConfig(name="mnist5k", resize=32))
    assert ds.shape == (1, 32, 32) and len(ds.train_labels) == len(ds.train) == 4000
    assert 0 <= ds.train.min() and ds.train.max() <= 1
    with pytest.raises(ConfigError, match="set of points"):
        load_data(DataConfig(name="ring-8", resize=8))


# ---- arrays -----------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW"])
def test_npy_layouts_give_the_same_images(tmp_path, shape_images, layout):
    colour, _ = shape_images(20, side=8, seed=8)
    grey = colour[..., 0]
    array = {"NHW": grey, "NHWC": colour, "NCHW": colour.transpose(0, 3, 1, 2)}[layout]
    path = tmp_path / "x.npy"
    np.save(path, array)
    ds = load(path, seed=1)
    want = grey[:, None] if layout == "NHW" else colour.transpose(0, 3, 1, 2)
    idx = split_indices(None, 20, (0.8, 0.1, 0.1), seed=1)
    np.testing.assert_array_equal(ds.test, want[idx["test"]].astype(np.float32) / 255)
    assert ds.split_record["members"]["test"] == idx["test"].tolist() and ds.split_record["kind"] == "npy"


def test_values_are_scaled_to_the_unit_interval(tmp_path):
    rng = np.random.default_rng(0)
    cases = {
        "u16": (rng.integers(0, 65536, (10, 4, 4), dtype=np.uint16), lambda a: a / 65535),
        "bool": (rng.random((10, 4, 4)) > 0.5, lambda a: a.astype(np.float64)),
        "unit float": (rng.random((10, 4, 4)).astype(np.float32), lambda a: a),
        "dB": (rng.uniform(-80, 0, (10, 4, 4)), lambda a: (a - a.min()) / (a.max() - a.min())),
        "signed": (rng.integers(-5, 6, (10, 4, 4)), lambda a: (a - a.min()) / (a.max() - a.min())),
    }
    for name, (array, want) in cases.items():
        np.save(tmp_path / "x.npy", array)
        ds = load(tmp_path / "x.npy", seed=0)
        order = np.concatenate([ds.split_record["members"][s] for s in ("train", "valid", "test")])
        got = np.concatenate([ds.train, ds.valid, ds.test])[:, 0]
        np.testing.assert_allclose(got, want(array)[order], rtol=0, atol=1e-6, err_msg=name)
        assert 0 <= got.min() and got.max() <= 1
        scaled = ds.split_record["scaled_from"]
        assert (scaled is not None) == (name in ("dB", "signed")), name
        if scaled:
            assert scaled == [float(array.min()), float(array.max())]


def test_an_npz_with_labels_gets_classes_in_sorted_order(tmp_path, shape_images):
    images, labels = shape_images(30, side=8, seed=9)
    np.savez(tmp_path / "ints.npz", images=images, labels=np.array([3, 7, 12])[labels])
    np.savez(tmp_path / "names.npz", images=images, labels=np.array(["cat", "dog", "emu"])[labels])
    for name, classes in (("ints", ("3", "7", "12")), ("names", ("cat", "dog", "emu"))):
        ds = load(tmp_path / f"{name}.npz")
        assert ds.class_names == classes and ds.num_classes == 3 and ds.split_record["kind"] == "npz"
        idx = ds.split_record["members"]
        np.testing.assert_array_equal(ds.train_labels, labels[idx["train"]])
        np.testing.assert_array_equal(ds.valid, images[idx["valid"]].transpose(0, 3, 1, 2).astype(np.float32) / 255)
    np.savez(tmp_path / "unlabelled.npz", images=images)
    assert not load(tmp_path / "unlabelled.npz").labelled


# ---- bad input: one sentence each ------------------------------------------------------------


def _bad_inputs(root, shape_images, write_images):
    colour, labels = shape_images(12, side=8, seed=10)
    cases = {}

    def case(name, fragment):
        cases[name] = (root / name, fragment)
        return root / name

    case("empty", "holds no PNG or JPEG images").mkdir()
    write_images(case("mixed sizes", "differ in size"), colour[:6])
    write_images(root / "mixed sizes", shape_images(6, side=16)[0], start=6)
    write_images(case("corrupt", "cannot decode"), colour[:6])
    (root / "corrupt" / "00002.png").write_bytes((root / "corrupt" / "00002.png").read_bytes()[:60])
    write_images(case("not an image", "cannot decode"), colour[:6])
    (root / "not an image" / "00003.png").write_text("a text file named like a PNG")
    write_images(case("empty class", "holds no PNG or JPEG images"), colour, labels)
    (root / "empty class" / "ghosts").mkdir()
    write_images(case("loose and classes", "both loose and in subfolders"), colour, labels)
    write_images(root / "loose and classes", colour[:2], start=20)
    write_images(case("too few", "too few"), colour[:2])
    write_images(case("splits and more", "beside them"), colour, labels)
    for split in ("train", "test"):
        write_images(root / "splits and more" / split, colour[:3])
    for split, y in (("train", [0, 1, 0]), ("test", [2, 2, 2])):
        write_images(case("test class not in train", "train lacks") / split, colour[:3], np.array(y))
    for name, array, fragment in [
        ("1-d.npy", np.zeros(10, np.uint8), "expected (N, H, W)"),
        ("2-d.npy", np.zeros((10, 64), np.uint8), "expected (N, H, W)"),
        ("5-d.npy", np.zeros((10, 1, 8, 8, 1), np.uint8), "expected (N, H, W)"),
        ("ambiguous.npy", np.zeros((10, 3, 8, 3), np.uint8), "channel axis is unclear"),
        ("five channels.npy", np.zeros((10, 5, 8, 8), np.uint8), "no axis of 1 or 3 channels"),
        ("no images.npy", np.zeros((0, 8, 8), np.uint8), "holds no images"),
        ("nan.npy", np.full((10, 8, 8), np.nan), "NaN"),
        ("constant.npy", np.full((10, 8, 8), 7.5), "one value everywhere"),
        ("strings.npy", np.full((10, 8, 8), "a"), "not numbers"),
    ]:
        np.save(case(name, fragment), array)
    np.save(case("objects.npy", "cannot read"), np.array([object()] * 10, dtype=object), allow_pickle=True)
    np.savez(case("no images key.npz", "no array named 'images'"), pictures=np.zeros((10, 8, 8)))
    np.savez(case("short labels.npz", "one per image"), images=np.zeros((10, 8, 8)), labels=np.zeros(9, int))
    np.savez(case("float labels.npz", "integers or strings"), images=np.zeros((10, 8, 8)), labels=np.zeros(10))
    case("garbage.npz", "cannot read").write_bytes(b"PK\x03\x04 not really a zip")
    case("notes.txt", "neither a folder of images nor an .npy/.npz file").write_text("hello")
    cases["missing"] = (root / "missing", "does not exist")
    return cases


def test_every_malformed_data_set_is_one_sentence(tmp_path, shape_images, write_images):
    cases = _bad_inputs(tmp_path, shape_images, write_images)
    for name, (path, fragment) in cases.items():
        with pytest.raises(DataError) as err:
            load(path, shares=(0.5, 0.25, 0.25) if name != "too few" else (0.8, 0.1, 0.1))
        one_sentence(err, fragment)


def test_a_record_must_be_one(tmp_path):
    for text in ("not json", json.dumps({"format": "other"}), json.dumps({"format": userdata.RECORD_FORMAT})):
        with pytest.raises(DataError) as err:
            read_record(text, "data_split.json")
        one_sentence(err, "data_split.json")


# ---- the settings -----------------------------------------------------------------------------


def test_a_path_is_kept_absolute_and_a_built_in_name_stays_built_in(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mnist5k").mkdir()
    assert DataConfig(name="mnist5k").name == "mnist5k"  # the built-in set, though a folder has its name
    assert DataConfig(name="./mnist5k").name == str(tmp_path / "mnist5k")
    assert DataConfig(name="faces.npz").name == str(tmp_path / "faces.npz")  # need not exist yet
    assert DataConfig(name="~/x").name.endswith("/x") and "~" not in DataConfig(name="~/x").name
    (tmp_path / "faces").mkdir()
    assert DataConfig(name="faces").name == str(tmp_path / "faces")  # an existing folder
    with pytest.raises(ConfigError, match="unknown dataset 'fasces'.*or the path of a folder"):
        DataConfig(name="fasces")


@pytest.mark.parametrize("values, fragment", [
    ({"split": [0.8, 0.1, 0.2]}, "summing to 1"),
    ({"split": [0.9, 0.1, 0.0]}, "three positive shares"),
    ({"split": [0.5, 0.5]}, "list of 3 values"),
    ({"resize": 0}, "data.resize must be at least 1"),
    ({"split_seed": -1}, "data.split_seed"),
])
def test_bad_data_settings_are_refused(values, fragment):
    with pytest.raises(ConfigError, match=fragment):
        build(DataConfig, values, "data")


def test_the_split_and_resize_flow_through_load_data(tmp_path, shape_images, write_images):
    images, labels = shape_images(40, side=16, seed=11)
    write_images(tmp_path / "f", images, labels)
    ds = load_data(DataConfig(name=str(tmp_path / "f"), resize=8, split=(0.5, 0.25, 0.25), split_seed=4))
    assert ds.shape == (3, 8, 8) and len(ds.valid) == len(ds.test) and len(ds.train) == 40 - 2 * len(ds.valid)
    assert ds.split_record["seed"] == 4 and ds.split_record["resize"] == 8
    torch.testing.assert_close(torch.from_numpy(ds.valid), torch.from_numpy(resize_images(
        load(tmp_path / "f", shares=(0.5, 0.25, 0.25), seed=4).valid, 8)))
