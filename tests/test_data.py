"""Dataset loading: digits, CIFAR-10 python batches (restricted unpickling) and image folders."""

from __future__ import annotations

import json
import io
import os
import pickle
import struct
import time

import numpy as np
import pytest
import torch
from PIL import Image

from nas2deploy.data import Dataset, load_dataset, parse_dataset_spec
from nas2deploy.data.datasets import _stratified_split
from nas2deploy.errors import UsageError

# ---------------------------------------------------------------------------------------------
# digits


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits", input_size=16, seed=0)


@pytest.mark.parametrize("size", [8, 16, 32])
def test_digits_shapes(size):
    ds = load_dataset("digits", input_size=size)
    for x, y in ((ds.x_train, ds.y_train), (ds.x_val, ds.y_val), (ds.x_test, ds.y_test)):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert tuple(x.shape[1:]) == (1, size, size)
        assert len(x) == len(y)
    assert (ds.num_classes, ds.channels, ds.input_size) == (10, 1, size)
    assert ds.class_names == [str(i) for i in range(10)]
    assert len(ds.mean) == len(ds.std) == 1


def test_digits_splits_disjoint_complete_and_stratified(digits):
    sizes = [len(digits.y_train), len(digits.y_val), len(digits.y_test)]
    assert sum(sizes) == 1797
    assert abs(sizes[0] / 1797 - 0.70) < 0.02 and abs(sizes[1] / 1797 - 0.15) < 0.02
    # disjoint: no image appears in two splits (digits has no exact duplicates across the split)
    rows = {}
    for split in ("train", "val", "test"):
        x = getattr(digits, f"x_{split}").reshape(len(getattr(digits, f"y_{split}")), -1)
        rows[split] = {tuple(r) for r in x.numpy().round(4).tolist()}
    assert not rows["train"] & rows["val"] and not rows["train"] & rows["test"]
    assert not rows["val"] & rows["test"]
    for y in (digits.y_train, digits.y_val, digits.y_test):
        counts = torch.bincount(y, minlength=10)
        assert (counts > 0).all()
        frac = counts.float() / counts.sum()
        assert (frac - 0.1).abs().max() < 0.03  # digits is balanced, so every split is too


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_stratified_split_partitions_indices(seed):
    labels = np.repeat(np.arange(5), [3, 4, 10, 50, 7])
    parts = _stratified_split(labels, (0.70, 0.15, 0.15), seed)
    joined = np.concatenate(parts)
    assert len(joined) == len(labels) and set(joined.tolist()) == set(range(len(labels)))
    for p in parts:
        assert set(labels[p].tolist()) == set(range(5))  # every class in every split
    again = _stratified_split(labels, (0.70, 0.15, 0.15), seed)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def test_digits_deterministic_per_seed(digits):
    again = load_dataset("digits", input_size=16, seed=0)
    assert torch.equal(again.x_train, digits.x_train) and torch.equal(again.y_val, digits.y_val)
    other = load_dataset("digits", input_size=16, seed=1)
    assert len(other.y_train) == len(digits.y_train)
    assert not torch.equal(other.x_train, digits.x_train)


def test_digits_normalised_on_train(digits):
    assert abs(float(digits.x_train.mean())) < 1e-4
    assert abs(float(digits.x_train.std()) - 1) < 1e-3
    assert abs(float(digits.x_val.mean())) < 0.1  # same statistics, applied to the other splits
    # un-normalising gives back pixels in [0, 1]
    raw = digits.x_test * digits.std[0] + digits.mean[0]
    assert raw.min() >= -1e-4 and raw.max() <= 1 + 1e-4


def test_digits_describe_is_json(digits):
    d = json.loads(json.dumps(digits.describe()))
    assert d["name"] == "digits"
    assert d["sizes"] == {"train": len(digits.y_train), "val": len(digits.y_val),
                          "test": len(digits.y_test)}
    assert d["input_shape"] == [1, 16, 16] and d["num_classes"] == 10
    assert d["mean"] == digits.mean and d["std"] == digits.std and d["split_seed"] == 0


def test_digits_is_fast():
    load_dataset("digits")  # warm
    t = time.perf_counter()
    load_dataset("digits", input_size=32)
    assert time.perf_counter() - t < 0.5


@pytest.mark.parametrize("size", [7, 513, 0, 32.0, True])
def test_input_size_out_of_range(size):
    with pytest.raises(UsageError, match="input_size"):
        load_dataset("digits", input_size=size)


# ---------------------------------------------------------------------------------------------
# CIFAR-10 in the real on-disk format


def _cifar_batch(labels, *, red_first=False):
    n = len(labels)
    rng = np.random.default_rng(len(labels))
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    if red_first:
        data[0, :1024] = 255  # R plane
        data[0, 1024:] = 0  # G and B planes
    return {b"batch_label": b"training batch", b"labels": list(labels), b"data": data,
            b"filenames": [f"img_{i}.png".encode() for i in range(n)]}


def _read_pickle(path):  # our own test files, so a plain unpickler is fine here
    with open(path, "rb") as f:
        return pickle.load(f)


def _write_cifar(folder, per_batch=20, test=10, meta=True):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        labels = [(j + i) % 10 for j in range(per_batch)]
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(_cifar_batch(labels, red_first=(i == 1)), f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(_cifar_batch([j % 10 for j in range(test)]), f)
    if meta:
        names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
                 b"ship", b"truck"]
        with open(folder / "batches.meta", "wb") as f:
            pickle.dump({b"num_cases_per_batch": per_batch, b"label_names": names, b"num_vis": 3072}, f)
    return folder


def test_cifar_loads_real_format(tmp_path):
    d = _write_cifar(tmp_path / "cifar-10-batches-py")
    ds = load_dataset(f"cifar10:{d}", input_size=32, seed=0)
    assert ds.channels == 3 and ds.num_classes == 10 and ds.class_names[0] == "airplane"
    assert len(ds.y_train) + len(ds.y_val) == 100 and len(ds.y_val) == 10
    assert len(ds.y_test) == 10 and tuple(ds.x_test.shape) == (10, 3, 32, 32)
    assert set(ds.y_val.tolist()) == set(range(10))  # stratified: one of each class held out
    assert ds.name.startswith("cifar10:")
    # channel-plane order: the first image of data_batch_1 is pure red (label 1)
    raw = torch.from_numpy(_read_pickle(d / "data_batch_1")[b"data"]).float() / 255
    all_x = torch.cat([ds.x_train, ds.x_val])
    mean = torch.tensor(ds.mean).view(1, 3, 1, 1)
    std = torch.tensor(ds.std).view(1, 3, 1, 1)
    un = all_x * std + mean
    flat = un.reshape(len(un), -1)
    hit = [i for i in range(len(flat)) if torch.allclose(flat[i], raw[0], atol=1e-4)]
    assert len(hit) == 1
    img = un[hit[0]]
    assert torch.allclose(img[0], torch.ones(32, 32), atol=1e-4)
    assert img[1].abs().max() < 1e-4 and img[2].abs().max() < 1e-4
    assert float(img[0].mean()) > float(img[1].mean())


def test_cifar_parent_layout_resize_and_default_names(tmp_path):
    _write_cifar(tmp_path / "cifar-10-batches-py", meta=False)
    ds = load_dataset(f"cifar10:{tmp_path}", input_size=16, progress=None)
    assert tuple(ds.x_train.shape[1:]) == (3, 16, 16)
    assert ds.class_names == [str(i) for i in range(10)]
    assert abs(float(ds.x_train.mean())) < 1e-3


def test_cifar_progress_callback(tmp_path):
    d = _write_cifar(tmp_path / "c")
    calls = []

    class Bar:
        def update(self, n=1):
            calls.append(n)

        def close(self):
            calls.append("closed")

    load_dataset(f"cifar10:{d}", progress=lambda total, desc: Bar())
    assert calls == [1] * 6 + ["closed"]


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Innocent:  # any class at all is refused, not only dangerous callables
    pass


@pytest.mark.parametrize("payload", ["os.system", "class"])
def test_cifar_forbidden_global_refused_and_nothing_runs(tmp_path, payload):
    d = _write_cifar(tmp_path / "c")
    marker = tmp_path / "pwned"
    batch = _cifar_batch([j % 10 for j in range(20)])
    batch[b"filenames"] = _Evil(marker) if payload == "os.system" else Innocent()
    with open(d / "data_batch_3", "wb") as f:
        pickle.dump(batch, f)
    with pytest.raises(UsageError, match="refusing") as exc:
        load_dataset(f"cifar10:{d}")
    assert "data_batch_3" in str(exc.value)
    assert ("system" in str(exc.value)) if payload == "os.system" else ("Innocent" in str(exc.value))
    assert "\n" not in str(exc.value)
    assert not marker.exists()


def test_cifar_missing_file_named(tmp_path):
    d = _write_cifar(tmp_path / "c")
    (d / "data_batch_4").unlink()
    with pytest.raises(UsageError, match="data_batch_4"):
        load_dataset(f"cifar10:{d}")


def test_cifar_no_batches_at_all(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no CIFAR-10 batch files"):
        load_dataset(f"cifar10:{tmp_path / 'empty'}")


def test_cifar_truncated_file(tmp_path):
    d = _write_cifar(tmp_path / "c")
    raw = (d / "test_batch").read_bytes()
    (d / "test_batch").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UsageError, match="test_batch.*(corrupt|truncated)"):
        load_dataset(f"cifar10:{d}")


@pytest.mark.parametrize("breakage, message", [
    (lambda b: b.__setitem__(b"data", b[b"data"][:, :100]), "N×3072"),
    (lambda b: b.__setitem__(b"data", b[b"data"].astype(np.float32)), "uint8"),
    (lambda b: b.__setitem__(b"labels", b[b"labels"][:-1]), "labels"),
    (lambda b: b.__setitem__(b"labels", [12] * len(b[b"labels"])), "outside 0..9"),
    (lambda b: b.pop(b"data"), "no 'data'"),
])
def test_cifar_malformed_batch(tmp_path, breakage, message):
    d = _write_cifar(tmp_path / "c")
    batch = _cifar_batch([j % 10 for j in range(20)])
    breakage(batch)
    with open(d / "data_batch_2", "wb") as f:
        pickle.dump(batch, f)
    with pytest.raises(UsageError, match=message) as exc:
        load_dataset(f"cifar10:{d}")
    assert "data_batch_2" in str(exc.value)


class _Py2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle wrote for the original files: str as SHORT_BINSTRING/BINSTRING
    (no ``_codecs``), numpy's old ``numpy.core.multiarray`` module path, protocol 2."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_str8(self, obj):
        obj = obj.encode("latin-1") if isinstance(obj, str) else obj
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(head + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_str8
    dispatch[str] = _save_str8


def _py2_dump(obj, f):
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    f.write(buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))


def test_cifar_python2_pickles_as_distributed(tmp_path):
    d = _write_cifar(tmp_path / "c")
    for name in ("data_batch_1", "test_batch", "batches.meta"):
        obj = _read_pickle(d / name)
        with open(d / name, "wb") as f:
            _py2_dump(obj, f)
    assert b"_codecs" not in (d / "test_batch").read_bytes()
    assert b"numpy.core.multiarray" in (d / "test_batch").read_bytes()
    ds = load_dataset(f"cifar10:{d}")
    assert len(ds.y_test) == 10 and ds.class_names[-1] == "truck"


def test_cifar_pickle_protocol_5(tmp_path):
    d = _write_cifar(tmp_path / "c")
    batch = _cifar_batch([j % 10 for j in range(20)])
    with open(d / "data_batch_2", "wb") as f:
        pickle.dump(batch, f, protocol=5)  # numpy arrays go through _frombuffer at protocol 5
    assert len(load_dataset(f"cifar10:{d}").y_val) == 10


def test_cifar_str_keys_and_protocol_2(tmp_path):
    d = _write_cifar(tmp_path / "c")
    batch = {k.decode(): v for k, v in _cifar_batch([j % 10 for j in range(20)]).items()}
    with open(d / "data_batch_5", "wb") as f:
        pickle.dump(batch, f, protocol=2)  # as re-pickled by Python 3 at an old protocol
    ds = load_dataset(f"cifar10:{d}")
    assert len(ds.y_train) + len(ds.y_val) == 100


# ---------------------------------------------------------------------------------------------
# image folders


def _write_image(path, color, size=(12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _write_folder(root, per_class=4):
    colours = {"cat": (255, 0, 0), "dog": (0, 255, 0), "ant": (0, 0, 255)}
    for name, colour in colours.items():
        for i in range(per_class):
            ext = ".png" if i % 2 == 0 else ".jpg"
            _write_image(root / name / f"{i}{ext}", colour)
    return root


def test_folder_loads(tmp_path):
    root = _write_folder(tmp_path / "imgs", per_class=6)
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "README.md").write_text("top-level files are ignored")
    _write_image(root / "dog" / "extra.BMP", (0, 255, 0), size=(40, 30))
    ds = load_dataset(f"folder:{root}", input_size=8, seed=3)
    assert ds.class_names == ["ant", "cat", "dog"] and ds.num_classes == 3 and ds.channels == 3
    assert len(ds.y_train) + len(ds.y_val) + len(ds.y_test) == 19
    for x, y in ((ds.x_train, ds.y_train), (ds.x_val, ds.y_val), (ds.x_test, ds.y_test)):
        assert tuple(x.shape[1:]) == (3, 8, 8)
        assert set(y.tolist()) == {0, 1, 2}
    # RGB order survives: un-normalised "cat" images are red
    mean = torch.tensor(ds.mean).view(1, 3, 1, 1)
    std = torch.tensor(ds.std).view(1, 3, 1, 1)
    raw = ds.x_train * std + mean
    cats = raw[ds.y_train == 1].mean(dim=(0, 2, 3))
    ants = raw[ds.y_train == 0].mean(dim=(0, 2, 3))
    assert cats[0] > 0.9 and cats[1] < 0.1 and cats[2] < 0.1
    assert ants[2] > 0.9 and ants[0] < 0.1
    assert ds.describe()["input_shape"] == [3, 8, 8]


def test_folder_grayscale_converted_to_rgb_and_progress(tmp_path):
    root = _write_folder(tmp_path / "imgs", per_class=3)
    Image.new("L", (9, 9), 128).save(root / "ant" / "grey.png")
    seen = {}

    class Bar:
        def update(self, n=1):
            seen["n"] = seen.get("n", 0) + n

        def close(self):
            seen["closed"] = True

    def progress(total, desc):
        seen["total"] = total
        return Bar()

    ds = load_dataset(f"folder:{root}", input_size=8, progress=progress)
    assert ds.channels == 3
    assert seen == {"total": 10, "n": 10, "closed": True}


def test_folder_empty_class(tmp_path):
    root = _write_folder(tmp_path / "imgs")
    (root / "emu").mkdir()
    (root / "emu" / "readme.txt").write_text("no images here")
    with pytest.raises(UsageError, match="emu.*no images"):
        load_dataset(f"folder:{root}")


def test_folder_too_few_images(tmp_path):
    root = _write_folder(tmp_path / "imgs")
    for p in list((root / "dog").iterdir())[:2]:
        p.unlink()
    with pytest.raises(UsageError, match="'dog' has 2 image.*at least 3"):
        load_dataset(f"folder:{root}")


def test_folder_corrupt_image_named(tmp_path):
    root = _write_folder(tmp_path / "imgs")
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(UsageError, match="broken.png") as exc:
        load_dataset(f"folder:{root}")
    assert "\n" not in str(exc.value)


def test_folder_empty_tree_and_single_class(tmp_path):
    (tmp_path / "none").mkdir()
    with pytest.raises(UsageError, match="no class subfolders"):
        load_dataset(f"folder:{tmp_path / 'none'}")
    for i in range(4):
        _write_image(tmp_path / "one" / "only" / f"{i}.png", (1, 2, 3))
    with pytest.raises(UsageError, match="at least 2"):
        load_dataset(f"folder:{tmp_path / 'one'}")


# ---------------------------------------------------------------------------------------------
# spec parsing


def test_parse_spec_ok(tmp_path):
    assert parse_dataset_spec("digits") == ("digits", None)
    assert parse_dataset_spec(" Digits ") == ("digits", None)
    assert parse_dataset_spec(f"cifar10:{tmp_path}") == ("cifar10", tmp_path)
    assert parse_dataset_spec(f"folder:{tmp_path}") == ("folder", tmp_path)


@pytest.mark.parametrize("spec, message", [
    ("foo:bar", "unknown dataset kind 'foo'.*digits, cifar10:DIR, folder:DIR"),
    ("", "empty dataset spec"),
    ("cifar10:", "needs a directory"),
    ("cifar10", "needs a directory"),
    ("folder:  ", "needs a directory"),
    ("digits:/tmp", "takes no directory"),
])
def test_parse_spec_errors(spec, message):
    with pytest.raises(UsageError, match=message) as exc:
        parse_dataset_spec(spec)
    assert "\n" not in str(exc.value)


def test_parse_spec_missing_or_not_dir(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        parse_dataset_spec(f"cifar10:{tmp_path / 'nope'}")
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(UsageError, match="not a directory"):
        parse_dataset_spec(f"folder:{f}")


# ---------------------------------------------------------------------------------------------
# hostile files: each image is decoded only in the format its extension names

_EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n"
        b"newpath 0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n")


@pytest.fixture
def eps_spy(monkeypatch):
    """Records every time Pillow's EPS plugin opens a file or would start Ghostscript."""
    from PIL import EpsImagePlugin

    calls = []
    original = EpsImagePlugin.EpsImageFile._open

    def spy_open(self):
        calls.append("open")
        return original(self)

    def no_ghostscript(*args, **kwargs):
        calls.append("ghostscript")
        raise OSError("Ghostscript must not run")

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", spy_open)
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", no_ghostscript)
    return calls


def test_folder_postscript_named_png_never_reaches_the_eps_plugin(tmp_path, eps_spy):
    root = _write_folder(tmp_path / "imgs")
    (root / "cat" / "evil.png").write_bytes(_EPS)
    with pytest.raises(UsageError, match=r"evil\.png.*not a PNG") as exc:
        load_dataset(f"folder:{root}", input_size=8)
    assert "\n" not in str(exc.value) and exc.value.exit_code == 2
    assert eps_spy == []


def test_folder_content_must_match_the_extension(tmp_path, eps_spy):
    root = _write_folder(tmp_path / "imgs")
    buf = io.BytesIO()
    Image.new("RGB", (9, 9), (1, 2, 3)).save(buf, format="JPEG")
    (root / "dog" / "photo.png").write_bytes(buf.getvalue())
    with pytest.raises(UsageError, match=r"photo\.png.*not a PNG"):
        load_dataset(f"folder:{root}", input_size=8)
    (root / "dog" / "photo.png").unlink()
    buf = io.BytesIO()
    Image.new("RGB", (9, 9), (1, 2, 3)).save(buf, format="PNG")
    (root / "ant" / "shot.jpeg").write_bytes(buf.getvalue())
    with pytest.raises(UsageError, match=r"shot\.jpeg.*not a JPEG"):
        load_dataset(f"folder:{root}", input_size=8)
    assert eps_spy == []


def test_folder_every_accepted_extension_loads(tmp_path, eps_spy):
    root = _write_folder(tmp_path / "imgs")
    for ext in (".gif", ".webp", ".jpeg", ".bmp", ".PNG"):
        _write_image(root / "cat" / f"more{ext}", (255, 0, 0))
    ds = load_dataset(f"folder:{root}", input_size=8)
    assert len(ds.y_train) + len(ds.y_val) + len(ds.y_test) == 17
    assert eps_spy == []


# ---------------------------------------------------------------------------------------------
# sizes without decoding, and the memory a dataset needs, before loading it


def test_dataset_info_sizes_match_the_loader(tmp_path, monkeypatch):
    from nas2deploy.data import dataset_info

    cifar = _write_cifar(tmp_path / "cifar")
    folder = _write_folder(tmp_path / "imgs", per_class=5)
    loaded = {spec: load_dataset(spec, input_size=8).describe()["sizes"]
              for spec in ("digits", f"cifar10:{cifar}", f"folder:{folder}")}

    def no_decoding(*args, **kwargs):
        raise AssertionError("dataset_info decoded an image")

    monkeypatch.setattr(Image, "open", no_decoding)
    for spec, sizes in loaded.items():
        info = dataset_info(spec)
        assert info.sizes == sizes, spec
    assert dataset_info("digits").image_size == (8, 8)
    assert dataset_info("digits").channels == 1 and dataset_info("digits").num_classes == 10
    info = dataset_info(f"cifar10:{cifar}")
    assert (info.channels, info.image_size, info.num_classes) == (3, (32, 32), 10)
    info = dataset_info(f"folder:{folder}")
    assert (info.channels, info.num_classes) == (3, 3)


def test_memory_estimate_covers_what_the_loader_holds(tmp_path):
    from nas2deploy.data import estimate_memory

    cifar = _write_cifar(tmp_path / "cifar")
    folder = _write_folder(tmp_path / "imgs", per_class=5)
    for spec, size in (("digits", 16), (f"cifar10:{cifar}", 40), (f"folder:{folder}", 24)):
        ds = load_dataset(spec, input_size=size)
        held = sum(t.numel() * t.element_size() for t in (ds.x_train, ds.x_val, ds.x_test))
        est = estimate_memory(spec, input_size=size)
        assert held <= est <= 4 * held + (64 << 20), spec
        # the pipeline's search split copies the train images once more
        assert estimate_memory(spec, input_size=size, train_copies=2) >= \
            held + ds.x_train.numel() * 4, spec


def test_memory_guard_refuses_before_reading(tmp_path, monkeypatch):
    from nas2deploy import data
    from nas2deploy.data import cifar as cifar_mod
    from nas2deploy.data import sizes as sizes_mod

    cifar = _write_cifar(tmp_path / "cifar")
    folder = _write_folder(tmp_path / "imgs", per_class=5)
    monkeypatch.setattr(sizes_mod, "available_memory", lambda: 1 << 20)

    def nothing_read(*args, **kwargs):
        raise AssertionError("the dataset was read before its memory was checked")

    monkeypatch.setattr(cifar_mod, "_unpickle", nothing_read)
    monkeypatch.setattr(Image, "open", nothing_read)
    for spec in ("digits", f"cifar10:{cifar}", f"folder:{folder}"):
        for check in (lambda: data.load_dataset(spec, input_size=512),
                      lambda: data.check_dataset(spec, input_size=512)):
            with pytest.raises(UsageError, match=r"needs ~[\d.]+ GiB, [\d.]+ GiB available") as exc:
                check()
            assert "\n" not in str(exc.value) and "input-size" in str(exc.value)


def test_memory_guard_lets_a_dataset_that_fits_through(tmp_path, monkeypatch):
    from nas2deploy import data
    from nas2deploy.data import sizes as sizes_mod

    cifar = _write_cifar(tmp_path / "cifar")
    need = data.estimate_memory(f"cifar10:{cifar}", input_size=64)
    monkeypatch.setattr(sizes_mod, "available_memory", lambda: need + 1)
    assert data.check_dataset(f"cifar10:{cifar}", input_size=64).sizes["test"] == 10
    monkeypatch.setattr(sizes_mod, "available_memory", lambda: None)  # unknown: not refused
    assert data.load_dataset(f"cifar10:{cifar}", input_size=64).input_size == 64


def test_available_memory_reads_this_machine():
    from nas2deploy.data import available_memory

    avail = available_memory()
    assert avail is None or avail > 0


def test_batch_larger_than_the_test_split(tmp_path):
    from nas2deploy.data import check_dataset

    cifar = _write_cifar(tmp_path / "cifar", test=10)
    assert check_dataset(f"cifar10:{cifar}", input_size=32, batch=10).sizes["test"] == 10
    with pytest.raises(UsageError, match=r"--batch 11 .*test split.*\(10 images\)"):
        check_dataset(f"cifar10:{cifar}", input_size=32, batch=11)
    with pytest.raises(UsageError, match=r"--batch 270 .*test split.*\(269 images\)"):
        check_dataset("digits", input_size=32, batch=270)


def test_available_memory_counts_a_cgroup_limit_on_any_ancestor(tmp_path):
    """A container's limit (cgroup v1 here) is what the OOM killer enforces, not MemAvailable."""
    from nas2deploy.data.memory import _cgroup_walk

    parent, child = tmp_path / "a", tmp_path / "a" / "b"
    child.mkdir(parents=True)
    (parent / "memory.limit_in_bytes").write_text("1000000\n")
    (parent / "memory.usage_in_bytes").write_text("400000\n")
    (parent / "memory.stat").write_text("cache 1\ntotal_inactive_file 100000\n")
    (child / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # no limit of its own
    (child / "memory.usage_in_bytes").write_text("5\n")
    assert _cgroup_walk(tmp_path, "/a/b", "memory.limit_in_bytes", "memory.usage_in_bytes",
                        "total_inactive_file") == [700000]
