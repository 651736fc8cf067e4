"""Streamed datasets: ``torch.utils.data`` datasets that keep images as uint8, augment per item
and leave normalisation to the device.

:func:`open_dataset` takes the specs of :func:`~nas2deploy.data.load_dataset` (``digits``,
``cifar10:DIR``, ``folder:DIR``) and makes the same stratified splits for the same seed, but
holds far less: CIFAR-10 as its uint8 arrays (one copy, resized per item only when
``input_size`` is not 32), a folder as file paths and labels (each image decoded from disk when
fetched, or read from the uint8 cache of :mod:`.cache`). Items are ``(C×S×S uint8, int64
label)``; :meth:`Splits.normalize` turns a batch into normalised float32 on the device.

``digits`` stays what :func:`load_dataset` makes, normalised float tensors, so the default run
does not move; :meth:`Splits.normalize` passes float batches through.

Augmentation is reproducible: an item's random draws come from a generator seeded with (seed,
epoch, index), whichever worker fetches it. :func:`make_loader`'s shuffling sampler moves the
train set to the epoch it is shuffling for (:mod:`.loaders`); with another sampler call
:func:`~nas2deploy.data.loaders.set_epoch`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..env import open_bar
from ..errors import UsageError
from .cache import open_folder_cache
from .cifar import _cifar_class_names, _cifar_dir, _read_cifar_batch
from .datasets import (_CIFAR_IMAGE_BYTES, CIFAR_FILES, CIFAR_TRAIN_FILES, CIFAR_VAL_FRACTION,
                       SPLIT, Progress, _check_input_size, _stratified_split, parse_dataset_spec)
from .folder import _list_folder
from .loader import load_dataset
from .loaders import check_seed as _check_seed
from .searchdata import Batches, Part, SearchData
from .stats import channel_stats, uint8_chunks
from .transforms import (PAD, RRC_SCALE, centre_crop, open_rgb, pad_crop_flip,
                         random_resized_crop, resize_chw, resize_side, rrc_flip_chw, square,
                         to_chw)

AUGMENTS = ("standard", "none")
STATS_SAMPLE = 2000  # folder: train images the mean/std are estimated from


# --------------------------------------------------------------------------------------------
# what open_dataset returns


@dataclass
class Splits:
    """Three streamed splits and what was done to them (the fields of
    :class:`~nas2deploy.data.Dataset`, less the tensors)."""

    name: str
    train: torch.utils.data.Dataset
    val: torch.utils.data.Dataset
    test: torch.utils.data.Dataset
    num_classes: int
    channels: int
    input_size: int
    class_names: list[str]
    mean: list[float]
    std: list[float]
    seed: int = 0
    split: str = ""
    augment: str = "none"  # what the train split applies, in words
    stats: str = ""  # which images the mean/std were computed from
    preprocessing: str = ""
    cache: str | None = None  # the folder cache's array, when one is used
    _norm: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, init=False,
                                                                repr=False, compare=False)

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary: :meth:`Dataset.describe`'s keys plus augment, stats, streamed
        and cache."""
        return {
            "name": self.name,
            "sizes": {"train": len(self.train), "val": len(self.val), "test": len(self.test)},
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "input_shape": [self.channels, self.input_size, self.input_size],
            "mean": [float(m) for m in self.mean],
            "std": [float(s) for s in self.std],
            "preprocessing": self.preprocessing,
            "split": self.split,
            "split_seed": self.seed,
            "augment": self.augment,
            "stats": self.stats,
            "streamed": True,
            "cache": self.cache,
        }

    @property
    def in_memory(self) -> bool:
        """True for tensors already normalised in memory (digits): batched by indexing, exactly
        as before streaming existed."""
        return all(isinstance(s, TensorSplit) for s in (self.train, self.val, self.test))

    def batches(self, *, device: torch.device | str = "cpu", workers: int | None = None) -> Batches:
        """The "train", "val" and "test" splits batched on ``device``."""
        if self.in_memory:
            return Batches.in_memory({name: (s.x, s.labels) for name, s in
                                      (("train", self.train), ("val", self.val),
                                       ("test", self.test))}, device=device)
        return Batches.streamed({"train": self.train, "val": self.val, "test": self.test},
                                normalize=self.normalize, device=device, workers=workers,
                                seed=self.seed)

    def search_data(self, seed: int, *, device: torch.device | str = "cpu",
                    workers: int | None = None) -> SearchData:
        """A search's splits: the train split halved at random (``seed``) into the weight and the
        architecture halves; val held out from both."""
        gen = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(self.train), generator=gen)
        half = len(perm) // 2
        w, a = perm[:half], perm[half:]
        if self.in_memory:
            x, y = self.train.x, self.train.labels
            return SearchData(x[w], y[w], x[a], y[a], self.val.x, self.val.labels, device=device)
        return SearchData.streamed({"weights": Part(self.train, w), "arch": Part(self.train, a),
                                    "val": self.val}, normalize=self.normalize, device=device,
                                   workers=workers, seed=seed)

    def normalize(self, x: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
        """A batch on ``device`` as normalised float32: uint8 is scaled to [0, 1] and
        standardised there; float input (digits) is already normalised and only moved."""
        device = torch.device(device)
        if x.dtype != torch.uint8:
            return x.to(device, non_blocking=True)
        key = str(device)
        if key not in self._norm:
            mean = torch.tensor(self.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
            self._norm[key] = (mean, std)
        mean, std = self._norm[key]
        return x.to(device, non_blocking=True).float().div_(255.0).sub_(mean).div_(std)


# --------------------------------------------------------------------------------------------
# datasets


class _Epoch:
    """The epoch a dataset augments for, in shared memory: DataLoader workers (persistent ones
    included) see what the main process sets."""

    def __init__(self) -> None:
        self._value = torch.zeros(1, dtype=torch.int64).share_memory_()

    def set(self, epoch: int) -> None:
        self._value[0] = int(epoch)

    def get(self) -> int:
        return int(self._value[0])


class StreamDataset(torch.utils.data.Dataset):
    """Base of the streamed splits: labels, the seed and epoch of the random draws."""

    def __init__(self, labels: np.ndarray, *, train: bool, augment: str, seed: int) -> None:
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.augmenting = train and augment == "standard"
        self.seed = seed
        self._epoch = _Epoch()

    def __len__(self) -> int:
        return len(self.labels)

    def set_epoch(self, epoch: int) -> None:
        """Draw the augmentation of ``epoch`` (call before iterating it)."""
        self._epoch.set(epoch)

    @property
    def epoch(self) -> int:
        return self._epoch.get()

    def eval_view(self) -> "StreamDataset":
        """The same items without augmentation (e.g. for BN recalibration on the train split);
        shares everything, copies nothing."""
        view = copy.copy(self)
        view.augmenting = False
        return view

    def detached(self) -> "StreamDataset":
        """The same items with an epoch of its own: two loaders over one split (a search's weight
        and architecture halves) must not set each other's augmentation epoch."""
        twin = copy.copy(self)
        twin._epoch = _Epoch()
        twin._epoch.set(self.epoch)
        return twin

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self._epoch.get(), index])


class TensorSplit(StreamDataset):
    """Float images already in memory (digits): fetched as they are."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, *, seed: int) -> None:
        super().__init__(y.numpy(), train=False, augment="none", seed=seed)
        self.x = x

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.labels[i]


class CifarSplit(StreamDataset):
    """Rows ``indices`` of a shared N×3×32×32 uint8 array; resized per item when
    ``input_size`` is not 32; train: pad-crop plus flip at 32, random-resized crop plus flip
    otherwise."""

    def __init__(self, images: torch.Tensor, indices: np.ndarray, labels: np.ndarray, *,
                 input_size: int, train: bool, augment: str, seed: int) -> None:
        super().__init__(labels, train=train, augment=augment, seed=seed)
        self.images = images  # shared with the other splits of the same array, never copied
        self.indices = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        self.input_size = input_size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[self.indices[i]]
        if not self.augmenting:
            if self.input_size == x.shape[-1]:
                return x.clone(), self.labels[i]  # a view would let a caller write the array
            return resize_chw(x, self.input_size), self.labels[i]
        rng = self._rng(i)
        if self.input_size == x.shape[-1]:
            return pad_crop_flip(x, rng), self.labels[i]
        return rrc_flip_chw(x, self.input_size, rng), self.labels[i]


class FolderSplit(StreamDataset):
    """Image files decoded when fetched (or rows of the uint8 cache). Eval: shorter-side resize
    to round(input_size / 0.875), centre crop; train: random-resized crop plus flip."""

    def __init__(self, files: Sequence[str], rows: np.ndarray, labels: np.ndarray, *,
                 input_size: int, train: bool, augment: str, seed: int,
                 cache: Path | None = None) -> None:
        super().__init__(labels, train=train, augment=augment, seed=seed)
        self.files = files  # every file of the folder, shared by its splits
        self.rows = torch.from_numpy(np.asarray(rows, dtype=np.int64))  # into files / the cache
        self.input_size = input_size
        self.side = resize_side(input_size)
        self.cache = str(cache) if cache is not None else None
        self._array: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_array"] = None  # each process maps the cache itself; a memmap pickles as a copy
        return state

    def _cached(self, row: int) -> np.ndarray:
        if self._array is None:
            assert self.cache is not None
            self._array = np.load(self.cache, mmap_mode="r", allow_pickle=False)
        return self._array[row]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        row = int(self.rows[i])
        if self.cache is not None:
            sq = self._cached(row)
            if not self.augmenting:
                return to_chw(centre_crop(sq, self.input_size)), self.labels[i]
            return to_chw(random_resized_crop(Image.fromarray(np.asarray(sq)), self.input_size,
                                              self._rng(i))), self.labels[i]
        if not self.augmenting:
            im = open_rgb(self.files[row], draft=self.side)
            return to_chw(centre_crop(square(im, self.side), self.input_size)), self.labels[i]
        # no JPEG draft here: a small random crop would be upscaled from the reduced image
        im = open_rgb(self.files[row])
        return to_chw(random_resized_crop(im, self.input_size, self._rng(i))), self.labels[i]


# --------------------------------------------------------------------------------------------
# open_dataset


def open_dataset(spec: str, *, input_size: int, seed: int, augment: str = "standard",
                 cache: str | Path | None = None, progress: Progress | None = None) -> Splits:
    """Open ``spec`` for streaming at ``input_size``, split with ``seed`` as
    :func:`load_dataset` splits it. ``augment``: "standard" or "none" (train split only).
    ``cache``: a folder for the uint8 cache of a folder dataset (ignored by the others, whose
    pixels are already in memory). ``progress(total=..., desc=...)``: a tqdm-like bar factory."""
    kind, path = parse_dataset_spec(spec)
    size = _check_input_size(input_size)
    _check_seed(seed)
    if augment not in AUGMENTS:
        raise UsageError(f"unknown augment {augment!r}; use one of {', '.join(AUGMENTS)}")
    seed = int(seed)
    if kind == "digits":
        return _open_digits(size, seed)
    assert path is not None
    if kind == "cifar10":
        return _open_cifar10(path, size, seed, augment, progress)
    return _open_folder(path, size, seed, augment, cache, progress)


def _open_digits(size: int, seed: int) -> Splits:
    ds = load_dataset("digits", input_size=size, seed=seed)
    info = ds.describe()
    return Splits(
        name=ds.name, train=TensorSplit(ds.x_train, ds.y_train, seed=seed),
        val=TensorSplit(ds.x_val, ds.y_val, seed=seed),
        test=TensorSplit(ds.x_test, ds.y_test, seed=seed), num_classes=ds.num_classes,
        channels=ds.channels, input_size=ds.input_size, class_names=ds.class_names,
        mean=ds.mean, std=ds.std, seed=seed, split=ds.split,
        augment="none (digit glyphs are not flip-invariant and the set is tiny: kept as the "
                "fixed normalised tensors of load_dataset)",
        stats="all train images", preprocessing=info["preprocessing"],
    )


def _open_cifar10(path: Path, size: int, seed: int, augment: str,
                  progress: Progress | None) -> Splits:
    d = _cifar_dir(path)
    class_names = _cifar_class_names(d)
    # Each image is 3072 bytes of its batch file, so the files' sizes bound the count: the
    # batches are copied into one array as they are read, never joined from a second copy
    # (pages past the real count are never touched, so they cost no memory).
    bound = sum((d / f).stat().st_size // _CIFAR_IMAGE_BYTES for f in CIFAR_TRAIN_FILES)
    pool = np.empty((bound, _CIFAR_IMAGE_BYTES), dtype=np.uint8)
    n, label_parts = 0, []
    bar = open_bar(progress, len(CIFAR_FILES), "reading CIFAR-10")
    try:
        for f in CIFAR_TRAIN_FILES:
            data, labels = _read_cifar_batch(d / f, len(class_names))
            pool[n:n + len(data)] = data
            n += len(data)
            label_parts.append(labels)
            del data
            bar.update(1)
        test, test_labels = _read_cifar_batch(d / "test_batch", len(class_names))
        bar.update(1)
    finally:
        bar.close()
    pool = pool[:n]
    pool_labels = np.concatenate(label_parts)
    if len(pool) < 2 or len(test) < 1:
        raise UsageError(f"CIFAR-10 folder {str(d)!r} holds {len(pool)} train and {len(test)} "
                         f"test images; need at least 2 and 1")
    tr, va, _ = _stratified_split(pool_labels, (1 - CIFAR_VAL_FRACTION, CIFAR_VAL_FRACTION, 0.0),
                                  seed)
    if len(va) == 0:
        raise UsageError(f"CIFAR-10 folder {str(d)!r} has too few train images to hold out a "
                         f"validation split; need at least 2 images of some class")
    pool_t = torch.from_numpy(pool).view(-1, 3, 32, 32)  # rows are R, G, B planes
    test_t = torch.from_numpy(np.ascontiguousarray(test)).view(-1, 3, 32, 32)

    def split(images, idx, labels, train):
        return CifarSplit(images, idx, labels[idx], input_size=size, train=train,
                          augment=augment, seed=seed)

    train = split(pool_t, tr, pool_labels, True)
    val = split(pool_t, va, pool_labels, False)
    test_split = split(test_t, np.arange(len(test)), test_labels, False)
    mean, std = channel_stats(uint8_chunks(CifarSplit(pool_t, tr, pool_labels[tr], input_size=size,
                                                   train=False, augment="none", seed=seed)))
    if augment == "none":
        aug = "none"
    elif size == 32:
        aug = f"train: zero-pad {PAD}, random 32x32 crop, horizontal flip"
    else:
        aug = _rrc_words(size)
    resize = "" if size == 32 else f", bilinear resize to {size}x{size}"
    pct = round(CIFAR_VAL_FRACTION * 100)
    return Splits(
        name=f"cifar10:{d.resolve()}", train=train, val=val, test=test_split,
        num_classes=len(class_names), channels=3, input_size=size, class_names=class_names,
        mean=mean, std=std, seed=seed,
        split=f"data_batch_1..5 stratified {100 - pct}/{pct} train/val; test_batch is test",
        augment=aug, stats=f"all {len(tr)} train images",
        preprocessing=f"uint8 pixels{resize}; on the device scaled to [0, 1], then "
                      f"(x - mean) / std per channel",
    )


def _open_folder(path: Path, size: int, seed: int, augment: str, cache: str | Path | None,
                 progress: Progress | None) -> Splits:
    class_dirs, files, labels = _list_folder(path)
    y = np.asarray(labels, dtype=np.int64)
    side = resize_side(size)
    cache_path = (open_folder_cache(cache, path, files, side, input_size=size, progress=progress)
                  if cache is not None else None)
    tr, va, te = _stratified_split(y, SPLIT, seed)
    names = [str(f) for f in files]

    def split(idx, train):
        return FolderSplit(names, idx, y[idx], input_size=size, train=train, augment=augment,
                           seed=seed, cache=cache_path)

    train, val, test = split(tr, True), split(va, False), split(te, False)
    n_stats = min(len(tr), STATS_SAMPLE)
    pick = np.sort(np.random.default_rng(seed).choice(len(tr), size=n_stats, replace=False))
    sample = torch.utils.data.Subset(split(tr, False), pick.tolist())
    mean, std = channel_stats(uint8_chunks(sample), progress=progress, total=n_stats)
    stats = (f"all {len(tr)} train images" if n_stats == len(tr) else
             f"{n_stats} of {len(tr)} train images, sampled with the split seed")
    return Splits(
        name=f"folder:{path.resolve()}", train=train, val=val, test=test,
        num_classes=len(class_dirs), channels=3, input_size=size,
        class_names=[c.name for c in class_dirs], mean=mean, std=std, seed=seed,
        split="stratified 70/15/15 train/val/test",
        augment="none" if augment == "none" else _rrc_words(size),
        stats=stats + " (evaluation transform)",
        preprocessing=f"RGB; shorter side resized to {side}, centre {size}x{size} crop; uint8 "
                      f"pixels on the device scaled to [0, 1], then (x - mean) / std per channel",
        cache=str(cache_path) if cache_path is not None else None,
    )


def _rrc_words(size: int) -> str:
    return (f"train: random-resized crop to {size}x{size} (area {RRC_SCALE[0]:g}-{RRC_SCALE[1]:g}, "
            f"ratio 3/4-4/3), horizontal flip")
