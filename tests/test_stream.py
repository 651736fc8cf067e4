"""Streamed datasets (nas2deploy.data.stream) and the folder cache (nas2deploy.data.cache), on
real small files: CIFAR-10 batches in the real pickle format and folders of PNG/JPEG images."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data.distributed import DistributedSampler

from nas2deploy.data import load_dataset
from nas2deploy.data import cache as cache_mod
from nas2deploy.data.loaders import make_loader as _make_loader
from nas2deploy.data.loaders import set_epoch, shutdown
from nas2deploy.data.stream import open_dataset
from nas2deploy.data.transforms import centre_crop, open_rgb, resize_side, square
from nas2deploy.errors import UsageError

from conftest import in_child

_made = []


def make_loader(*args, **kwargs):
    """``make_loader``, remembered: every loader's workers are stopped when its test ends, not
    whenever the garbage collector gets to them (``loaders.shutdown``)."""
    loader = _make_loader(*args, **kwargs)
    _made.append(loader)
    return loader


@pytest.fixture(autouse=True)
def _stop_workers():
    yield
    while _made:
        shutdown(_made.pop())

# ---------------------------------------------------------------------------------------------
# fixtures: files in the real formats


def _write_cifar(folder, per_batch=20, test=10):
    """CIFAR-10 python batches as the originals are laid out (as tests/test_data.py writes
    them): a dict of uint8 N×3072 data and a label list, pickled, plus batches.meta."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, 7):
        n = per_batch if i < 6 else test
        labels = [(j + i) % 10 for j in range(n)]
        data = np.random.default_rng(i).integers(0, 256, size=(n, 3072), dtype=np.uint8)
        name = f"data_batch_{i}" if i < 6 else "test_batch"
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": b"batch", b"labels": labels, b"data": data}, f)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
             b"ship", b"truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"num_cases_per_batch": per_batch, b"label_names": names, b"num_vis": 3072}, f)
    return folder


def _noise_image(path, size, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3),
                                                  dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _write_noise_folder(root, per_class=6, classes=("ant", "bee", "cat")):
    """Random-content images of assorted sizes, PNG and JPEG, so crops tell positions apart."""
    k = 0
    for c in classes:
        for i in range(per_class):
            ext = ".png" if i % 2 == 0 else ".jpg"
            _noise_image(root / c / f"{i}{ext}", (40 + 3 * i, 30 + 2 * k % 17), seed=k)
            k += 1
    return root


def _write_colour_folder(root, per_class=7):
    """Solid PNGs of a colour of their own: any crop of one names the file it came from."""
    colours = {}
    for c, name in enumerate(("ant", "bee", "cat")):
        for i in range(per_class):
            colour = (40 * c + 10, 9 * i + 5, 200 - 20 * c)
            path = root / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (14 + i, 11), colour).save(path)
            colours[colour] = path
    return root, colours


def _items(ds, n=None):
    return [ds[i] for i in range(len(ds) if n is None else n)]


def _batch(ds):
    xs, ys = zip(*_items(ds))
    return torch.stack(xs), torch.stack(ys)


# ---------------------------------------------------------------------------------------------
# CIFAR-10: uint8 kept, same splits and tensors as load_dataset


def test_cifar_uint8_one_copy_same_splits_and_normalised_values(tmp_path):
    d = _write_cifar(tmp_path / "c")
    ref = load_dataset(f"cifar10:{d}", input_size=32, seed=5)
    s = open_dataset(f"cifar10:{d}", input_size=32, seed=5, augment="none")
    assert s.train.images.dtype == torch.uint8 and tuple(s.train.images.shape) == (100, 3, 32, 32)
    assert s.train.images.data_ptr() == s.val.images.data_ptr()  # one array behind both
    x, y = s.train[0]
    assert x.dtype == torch.uint8 and tuple(x.shape) == (3, 32, 32) and y.dtype == torch.int64
    for split, rx, ry in ((s.train, ref.x_train, ref.y_train), (s.val, ref.x_val, ref.y_val),
                          (s.test, ref.x_test, ref.y_test)):
        xb, yb = _batch(split)
        assert torch.equal(yb, ry)
        torch.testing.assert_close(s.normalize(xb, "cpu"), rx, atol=1e-4, rtol=0)
    np.testing.assert_allclose(s.mean, ref.mean, atol=1e-6)
    np.testing.assert_allclose(s.std, ref.std, atol=1e-6)
    info = s.describe()
    assert set(ref.describe()) <= set(info)
    assert info["streamed"] is True and info["cache"] is None and info["augment"] == "none"
    assert info["sizes"] == {"train": 90, "val": 10, "test": 10}


def test_cifar_resized_per_item_within_a_grey_level(tmp_path):
    d = _write_cifar(tmp_path / "c")
    ref = load_dataset(f"cifar10:{d}", input_size=16, seed=0)
    s = open_dataset(f"cifar10:{d}", input_size=16, seed=0)
    xb, yb = _batch(s.val)
    assert xb.dtype == torch.uint8 and tuple(xb.shape[1:]) == (3, 16, 16)
    assert torch.equal(yb, ref.y_val)
    # items are rounded to uint8 (half a grey level), and so are the stats taken from them
    tol = 1 / 255 / min(s.std)
    torch.testing.assert_close(s.normalize(xb), ref.x_val, atol=tol, rtol=0)
    assert "random-resized crop to 16x16" in s.augment


def test_cifar_train_pad_crop_flip_reproducible_and_varies_by_epoch(tmp_path):
    d = _write_cifar(tmp_path / "c")
    s = open_dataset(f"cifar10:{d}", input_size=32, seed=3)
    assert s.augment.startswith("train: zero-pad 4, random 32x32 crop")
    originals = [s.train.images[s.train.indices[i]] for i in range(8)]
    epoch0 = _items(s.train, 8)
    for (x, _), orig in zip(epoch0, originals):
        padded = torch.nn.functional.pad(orig, (4, 4, 4, 4))
        windows = [padded[:, t:t + 32, left:left + 32] for t in range(9) for left in range(9)]
        assert any(torch.equal(x, w) or torch.equal(x, w.flip(-1)) for w in windows)
    again = open_dataset(f"cifar10:{d}", input_size=32, seed=3)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(epoch0, _items(again.train, 8)))
    s.train.set_epoch(1)
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(epoch0, _items(s.train, 8)))
    assert torch.equal(s.val[0][0], s.train.images[s.val.indices[0]])  # eval: untouched


# ---------------------------------------------------------------------------------------------
# folders: split membership, decode on fetch, eval and train transforms


def test_folder_split_membership_equals_load_dataset(tmp_path):
    root, colours = _write_colour_folder(tmp_path / "imgs")
    ref = load_dataset(f"folder:{root}", input_size=8, seed=11)
    s = open_dataset(f"folder:{root}", input_size=8, seed=11, augment="none")
    mean, std = torch.tensor(ref.mean).view(1, 3, 1, 1), torch.tensor(ref.std).view(1, 3, 1, 1)
    for split, rx, ry in ((s.train, ref.x_train, ref.y_train), (s.val, ref.x_val, ref.y_val),
                          (s.test, ref.x_test, ref.y_test)):
        raw = ((rx * std + mean) * 255).round().to(torch.uint8)
        want = [tuple(p.tolist()) for p in raw[:, :, 0, 0]]
        xb, yb = _batch(split)
        assert xb.dtype == torch.uint8 and tuple(xb.shape[1:]) == (3, 8, 8)
        assert [tuple(p.tolist()) for p in xb[:, :, 0, 0]] == want
        assert torch.equal(yb, ry)
    assert all(c in colours for c in want)
    assert s.describe()["stats"].startswith("all 15 train images")


def test_folder_decoded_on_fetch_not_at_open(tmp_path):
    root, _ = _write_colour_folder(tmp_path / "imgs")
    s = open_dataset(f"folder:{root}", input_size=8, seed=0)
    assert s.test.files is s.train.files and all(isinstance(f, str) for f in s.test.files)
    assert not any(isinstance(v, (np.ndarray, torch.Tensor)) and v.numel() > 64
                   for v in vars(s.test).values() if hasattr(v, "numel"))
    path = s.test.files[int(s.test.rows[0])]
    Image.new("RGB", (12, 12), (1, 2, 3)).save(path, format="PNG")
    x, _ = s.test[0]
    assert x[:, 0, 0].tolist() == [1, 2, 3]
    _noise_image(tmp_path / "big.png", (64, 64), seed=0)
    with open(path, "wb") as f:  # a real PNG cut short
        f.write((tmp_path / "big.png").read_bytes()[:2000])
    with pytest.raises(UsageError, match=r"cannot read image .*\.png") as exc:
        s.test[0]
    assert "\n" not in str(exc.value)


def test_folder_bad_image_in_a_worker_is_one_line(tmp_path, request):
    if in_child(request):  # real workers, in a process of their own
        return
    root, _ = _write_colour_folder(tmp_path / "imgs")
    s = open_dataset(f"folder:{root}", input_size=8, seed=0)
    bad = s.train.files[int(s.train.rows[5])]
    with open(bad, "wb") as f:
        f.write(b"GIF89a, not a png at all")
    loader = make_loader(s.train, batch_size=4, shuffle=False, seed=0, workers=1)
    with pytest.raises(UsageError, match=r"^image .*\.png' is not a PNG image") as exc:
        list(loader)
    assert "\n" not in str(exc.value)


def test_folder_eval_is_deterministic_centre_crop(tmp_path):
    root = _write_noise_folder(tmp_path / "imgs")
    # a wide image: blue outside its centred square, green inside
    wide = np.zeros((48, 72, 3), dtype=np.uint8)
    wide[:, :, 2] = 255
    wide[:, 12:60] = (0, 255, 0)
    Image.fromarray(wide).save(root / "ant" / "wide.png")
    s = open_dataset(f"folder:{root}", input_size=16, seed=0, augment="none")
    assert resize_side(16) == 18
    for split in (s.train, s.val, s.test):
        for i in range(len(split)):
            a, b = split[i][0], split[i][0]
            assert torch.equal(a, b) and tuple(a.shape) == (3, 16, 16)
            f = split.files[int(split.rows[i])]
            want = centre_crop(square(open_rgb(f, draft=18), 18), 16).transpose(2, 0, 1)
            assert np.array_equal(a.numpy(), want)
            if f.endswith("wide.png"):
                assert (a[1] == 255).all() and (a[2] == 0).all()


def test_folder_train_augment_reproducible_and_varies_by_epoch(tmp_path):
    root = _write_noise_folder(tmp_path / "imgs")
    s = open_dataset(f"folder:{root}", input_size=16, seed=4)
    assert s.augment.startswith("train: random-resized crop to 16x16")
    epoch0 = _items(s.train)
    assert all(x.dtype == torch.uint8 and tuple(x.shape) == (3, 16, 16) for x, _ in epoch0)
    again = open_dataset(f"folder:{root}", input_size=16, seed=4)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(epoch0, _items(again.train)))
    s.train.set_epoch(1)
    epoch1 = _items(s.train)
    assert sum(not torch.equal(a[0], b[0]) for a, b in zip(epoch0, epoch1)) >= len(epoch0) - 1
    other_seed = open_dataset(f"folder:{root}", input_size=16, seed=5)
    assert other_seed.train.labels.tolist() != s.train.labels.tolist() or any(
        not torch.equal(a[0], b[0]) for a, b in zip(epoch0, _items(other_seed.train)))
    plain = open_dataset(f"folder:{root}", input_size=16, seed=4, augment="none")
    plain.train.set_epoch(3)
    for i, (x, _) in enumerate(_items(plain.train)):
        f = plain.train.files[int(plain.train.rows[i])]
        assert np.array_equal(x.numpy(), centre_crop(square(open_rgb(f, draft=18), 18), 16)
                              .transpose(2, 0, 1))
    assert plain.augment == "none"
    with pytest.raises(UsageError, match="unknown augment 'flip'"):
        open_dataset(f"folder:{root}", input_size=16, seed=4, augment="flip")


def test_folder_stats_are_a_seeded_sample(tmp_path, monkeypatch):
    from nas2deploy.data import stream

    root = _write_noise_folder(tmp_path / "imgs")
    monkeypatch.setattr(stream, "STATS_SAMPLE", 5)
    a = open_dataset(f"folder:{root}", input_size=8, seed=2)
    b = open_dataset(f"folder:{root}", input_size=8, seed=2)
    assert a.mean == b.mean and a.std == b.std
    assert a.stats.startswith("5 of 12 train images")


# ---------------------------------------------------------------------------------------------
# digits and normalize


def test_digits_identical_to_load_dataset():
    ref = load_dataset("digits", input_size=16, seed=7)
    s = open_dataset("digits", input_size=16, seed=7)
    for split, rx, ry in ((s.train, ref.x_train, ref.y_train), (s.val, ref.x_val, ref.y_val),
                          (s.test, ref.x_test, ref.y_test)):
        xb, yb = _batch(split)
        assert torch.equal(s.normalize(xb, "cpu"), rx) and torch.equal(yb, ry)
    batch = next(iter(make_loader(s.train, batch_size=32, shuffle=True, seed=0, workers=0)))
    assert batch[0].dtype == torch.float32
    assert s.normalize(batch[0]) is batch[0]  # already normalised: passed through
    assert s.mean == ref.mean and s.std == ref.std
    info, want = s.describe(), ref.describe()
    assert {k: info[k] for k in want} == want
    assert info["augment"].startswith("none (digit glyphs are not flip-invariant")


def test_normalize_on_device_matches_float_path(tmp_path):
    d = _write_cifar(tmp_path / "c")
    s = open_dataset(f"cifar10:{d}", input_size=32, seed=0)
    xb, _ = _batch(s.val)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = s.normalize(xb, device)
    assert out.device.type == device and out.dtype == torch.float32
    mean, std = torch.tensor(s.mean).view(1, 3, 1, 1), torch.tensor(s.std).view(1, 3, 1, 1)
    torch.testing.assert_close(out.cpu(), (xb.double() / 255 - mean.double()).div(std.double())
                               .float(), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------
# make_loader


def _epochs(loader, n):
    return [[(x.clone(), y.clone()) for x, y in loader] for _ in range(n)]


def test_make_loader_same_batches_with_or_without_workers(tmp_path, request):
    if in_child(request):  # real workers, in a process of their own
        return
    root = _write_noise_folder(tmp_path / "imgs")
    s = open_dataset(f"folder:{root}", input_size=16, seed=1)
    l0 = make_loader(s.train, batch_size=4, shuffle=True, seed=9, workers=0)
    l2 = make_loader(s.train, batch_size=4, shuffle=True, seed=9, workers=2)
    assert l2.persistent_workers and not l2.pin_memory and l0.num_workers == 0
    a, b = _epochs(l0, 2), _epochs(l2, 2)
    for ea, eb in zip(a, b):
        assert len(ea) == len(eb) == 3
        for (xa, ya), (xb, yb) in zip(ea, eb):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert [y.tolist() for _, y in a[0]] != [y.tolist() for _, y in a[1]]  # reshuffled
    assert not all(torch.equal(x0, x1) for (x0, _), (x1, _) in zip(a[0], a[1]))
    set_epoch(l2, 0)  # resume at an epoch: the same batches again
    for (xa, ya), (xb, yb) in zip(a[0], _epochs(l2, 1)[0]):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    drop = make_loader(s.val, batch_size=2, shuffle=False, seed=0, workers=0, drop_last=True)
    assert [len(y) for _, y in drop] == [2]
    x, y = next(iter(make_loader(s.val, batch_size=3, shuffle=False, seed=0, workers=0)))
    want = torch.utils.data.default_collate(_items(s.val))
    assert x.dtype == torch.uint8 and torch.equal(x, want[0]) and torch.equal(y, want[1])
    # the train split without augmentation: what the eval transform makes of the same files
    plain = s.train.eval_view()
    assert plain.files is s.train.files and s.train.augmenting and not plain.augmenting
    f = plain.files[int(plain.rows[0])]
    assert np.array_equal(plain[0][0].numpy(), centre_crop(square(open_rgb(f, draft=18), 18), 16)
                          .transpose(2, 0, 1))
    with pytest.raises(UsageError, match="seed must be an integer >= 0"):
        make_loader(s.val, batch_size=2, shuffle=True, seed=-1)


def test_make_loader_takes_a_sampler_and_set_epoch_reaches_both(tmp_path):
    root = _write_noise_folder(tmp_path / "imgs")
    s = open_dataset(f"folder:{root}", input_size=16, seed=1)
    sampler = DistributedSampler(s.train, num_replicas=2, rank=1, shuffle=True, seed=0)
    loader = make_loader(s.train, batch_size=2, shuffle=True, seed=0, workers=0, sampler=sampler)
    assert loader.sampler is sampler
    set_epoch(loader, 4)
    assert sampler.epoch == 4 and s.train.epoch == 4
    assert sum(len(y) for _, y in loader) == 6
    with pytest.raises(UsageError, match="workers"):
        make_loader(s.train, batch_size=2, shuffle=False, seed=0, workers=-1)


# ---------------------------------------------------------------------------------------------
# the folder cache


def test_cache_round_trip_reuse_and_rebuild(tmp_path, monkeypatch):
    root = _write_noise_folder(tmp_path / "imgs")
    spec, cdir = f"folder:{root}", tmp_path / "cache"
    plain = open_dataset(spec, input_size=16, seed=0)
    bars = []

    class Bar:
        def __init__(self, total, desc):
            bars.append([desc, total, 0])

        def update(self, n=1):
            bars[-1][2] += n

        def close(self):
            pass

    cached = open_dataset(spec, input_size=16, seed=0, cache=cdir, progress=Bar)
    assert bars == [["caching images", 18, 18], ["image statistics", 12, 12]]
    npy, index = cache_mod.cache_paths(cdir, root, 18)
    assert cached.cache == str(npy) and cached.describe()["cache"] == str(npy)
    meta = json.loads(index.read_text())
    assert meta["format"] == cache_mod.FORMAT and meta["shape"] == [18, 18, 18, 3]
    assert meta["input_size"] == 16 and len(meta["files"]) == 18
    assert np.load(npy, mmap_mode="r").dtype == np.uint8
    for a, b in ((plain.val, cached.val), (plain.test, cached.test)):
        assert all(torch.equal(x[0], y[0]) for x, y in zip(_items(a), _items(b)))
    assert cached.mean == plain.mean and cached.std == plain.std
    # training crops come from the cached square, seeded like the rest
    first = _items(cached.train)
    assert all(tuple(x.shape) == (3, 16, 16) for x, _ in first)
    assert all(torch.equal(a[0], b[0]) for a, b in
               zip(first, _items(open_dataset(spec, input_size=16, seed=0, cache=cdir).train)))
    assert not [p for p in cdir.iterdir() if p.name.startswith(".")]  # no temporary left

    def no_rebuild(*a, **k):
        raise AssertionError("rebuilt a valid cache")

    with monkeypatch.context() as m:
        m.setattr(cache_mod, "_build", no_rebuild)
        open_dataset(spec, input_size=16, seed=0, cache=cdir)  # reused

    changed = cached.test.files[int(cached.test.rows[0])]
    Image.new("RGB", (20, 20), (7, 8, 9)).save(changed, format="PNG" if changed.endswith(".png")
                                               else "JPEG", quality=100)
    st = os.stat(changed)
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
    rebuilt = open_dataset(spec, input_size=16, seed=0, cache=cdir)
    x = rebuilt.test[0][0]
    assert (x.float() - torch.tensor([7.0, 8.0, 9.0]).view(3, 1, 1)).abs().max() <= 3
    assert json.loads(index.read_text())["files"] != meta["files"]


def test_cache_corrupt_array_is_rebuilt_and_foreign_index_refused(tmp_path):
    root = _write_noise_folder(tmp_path / "imgs")
    spec, cdir = f"folder:{root}", tmp_path / "cache"
    good = open_dataset(spec, input_size=8, seed=0, cache=cdir)
    want = _items(good.val)
    npy, index = cache_mod.cache_paths(cdir, root, resize_side(8))
    npy.write_bytes(npy.read_bytes()[:200])  # truncated
    again = open_dataset(spec, input_size=8, seed=0, cache=cdir)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(want, _items(again.val)))
    np.save(npy, np.zeros((3, 2), dtype=np.float32))  # an array of the wrong shape and dtype
    again = open_dataset(spec, input_size=8, seed=0, cache=cdir)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(want, _items(again.val)))
    for junk in ("{not json", json.dumps({"files": []})):
        index.write_text(junk)
        with pytest.raises(UsageError, match="cache") as exc:
            open_dataset(spec, input_size=8, seed=0, cache=cdir)
        assert "\n" not in str(exc.value)


def test_cache_folder_that_cannot_be_written(tmp_path, monkeypatch):
    root = _write_noise_folder(tmp_path / "imgs")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(UsageError, match=r"cache folder .*a-file/sub.* cannot be written") as exc:
        open_dataset(f"folder:{root}", input_size=8, seed=0, cache=blocker / "sub")
    assert "\n" not in str(exc.value)
    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    with monkeypatch.context() as m:  # a read-only folder, as root would meet it on a ro mount
        m.setattr(cache_mod.tempfile, "mkstemp", refuse)
        with pytest.raises(UsageError, match="cannot be written .Permission denied") as exc:
            open_dataset(f"folder:{root}", input_size=8, seed=0, cache=tmp_path / "ro-mount")
        assert "\n" not in str(exc.value)
    if os.geteuid() != 0:  # root writes through permission bits
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(UsageError, match="cannot be written"):
            open_dataset(f"folder:{root}", input_size=8, seed=0, cache=ro)
