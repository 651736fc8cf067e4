"""Sizes and memory of a dataset, known before loading it; the guard against what cannot fit."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UsageError
from .cifar import _cifar_class_names, _cifar_dir, _read_cifar_batch
from .datasets import (_CIFAR_IMAGE_BYTES, _RESIZE_CHUNK, CIFAR_TRAIN_FILES, CIFAR_VAL_FRACTION,
                       DIGITS_CLASS_COUNTS, SPLIT, _check_input_size, _split_sizes,
                       parse_dataset_spec)
from .folder import _list_folder
from .memory import _gib, available_memory


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset holds, told without decoding its images."""

    name: str
    sizes: dict[str, int]  # images per split: train, val, test (as load_dataset makes them)
    num_classes: int
    channels: int  # after loading (folder images are converted to RGB)
    image_size: tuple[int, int] | None  # as stored; None where it varies (folder)


def dataset_info(spec: str) -> DatasetInfo:
    """Split sizes, classes and image shape of ``spec``. ``digits`` is known; a CIFAR-10 folder's
    labels are read (its pixels are raw bytes, nothing to decode); a folder's files are
    counted, not opened."""
    kind, path = parse_dataset_spec(spec)
    if kind == "digits":
        train, val, test = _split_sizes(DIGITS_CLASS_COUNTS, SPLIT)
        return DatasetInfo("digits", {"train": train, "val": val, "test": test},
                           len(DIGITS_CLASS_COUNTS), 1, (8, 8))
    assert path is not None
    if kind == "folder":
        class_dirs, _, labels = _list_folder(path)
        train, val, test = _split_sizes(np.bincount(labels).tolist(), SPLIT)
        return DatasetInfo(f"folder:{path.resolve()}", {"train": train, "val": val, "test": test},
                           len(class_dirs), 3, None)
    d = _cifar_dir(path)
    n_classes = len(_cifar_class_names(d))
    counts = np.zeros(n_classes, dtype=np.int64)
    for f in CIFAR_TRAIN_FILES:
        counts += np.bincount(_read_cifar_batch(d / f, n_classes)[1], minlength=n_classes)
    test = len(_read_cifar_batch(d / "test_batch", n_classes)[1])
    train, val, _ = _split_sizes(counts.tolist(), (1 - CIFAR_VAL_FRACTION, CIFAR_VAL_FRACTION, 0.0))
    return DatasetInfo(f"cifar10:{d.resolve()}", {"train": train, "val": val, "test": test},
                       n_classes, 3, (32, 32))


def check_dataset(spec: str, *, input_size: int, batch: int = 1,
                  train_copies: int = 1, streamed: bool = False) -> DatasetInfo:
    """Everything about ``spec`` that can be checked before loading it: that it fits in memory
    at ``input_size`` (with ``train_copies`` float copies of the train split; ``streamed``: as
    ``open_dataset`` holds it), and that its test split fills one ``batch``, which parity
    checks and the verdict run whole."""
    parse_dataset_spec(spec)
    size = _check_input_size(input_size)
    _check_memory(spec, size, train_copies, streamed)
    info = dataset_info(spec)
    n = info.sizes["test"]
    if batch > n:
        raise UsageError(f"--batch {batch} is larger than the test split of {info.name} ({n} "
                         f"images); the exported model is checked on whole batches of it: use "
                         f"--batch {n} or less, or a larger dataset")
    return info


def estimate_memory(spec: str, *, input_size: int, train_copies: int = 1) -> int:
    """Bytes the loader needs at its peak for ``spec`` at ``input_size``, or, if more, what it
    holds plus ``train_copies - 1`` more float copies of the train split (the pipeline's
    search splits are one). Computed from file sizes and counts alone.

    Per loader (F = bytes of one float32 image at ``input_size``, N images):
    digits: the resized images and their three splits, 2·N·F. folder: the uint8 pixels, their
    float copy and its splits, 2.25·N·F. cifar10: the float splits, one resize chunk of
    float images in and out, and the raw bytes three times over (batches, the joined train
    batches, the indexed train split); N is bounded by the batch files' sizes (each image is
    3072 bytes of them), so no batch has to be read to know it.
    """
    kind, path = parse_dataset_spec(spec)
    size = _check_input_size(input_size)
    per_image = (1 if kind == "digits" else 3) * size * size * 4
    if kind == "digits":
        n = sum(DIGITS_CLASS_COUNTS)
        n_train, peak = round(SPLIT[0] * n), 2 * n * per_image
    elif kind == "folder":
        assert path is not None
        n = len(_list_folder(path)[1])
        n_train, peak = round(SPLIT[0] * n), n * per_image * 9 // 4
    else:
        assert path is not None
        d = _cifar_dir(path)
        n_pool = sum((d / f).stat().st_size // _CIFAR_IMAGE_BYTES for f in CIFAR_TRAIN_FILES)
        n_test = (d / "test_batch").stat().st_size // _CIFAR_IMAGE_BYTES
        n = n_pool + n_test
        chunk = min(n, _RESIZE_CHUNK) * (4 * _CIFAR_IMAGE_BYTES + (per_image if size != 32 else 0))
        n_train = round((1 - CIFAR_VAL_FRACTION) * n_pool)
        peak = n * per_image + chunk + (3 * n_pool + n_test) * _CIFAR_IMAGE_BYTES
    return max(peak, n * per_image + (train_copies - 1) * n_train * per_image)


def estimate_stream_memory(spec: str, *, input_size: int) -> int:
    """Bytes ``open_dataset`` holds for ``spec``: digits as ``load_dataset`` (two float copies
    of its images), CIFAR-10 its uint8 arrays (3072 bytes an image, bounded by the batch files'
    sizes), a folder its paths and labels only (images are decoded per batch)."""
    kind, path = parse_dataset_spec(spec)
    size = _check_input_size(input_size)
    if kind == "digits":
        return 2 * sum(DIGITS_CLASS_COUNTS) * size * size * 4
    assert path is not None
    if kind == "folder":
        return 512 * len(_list_folder(path)[1])
    d = _cifar_dir(path)
    return sum((d / f).stat().st_size for f in (*CIFAR_TRAIN_FILES, "test_batch"))


def _check_memory(spec: str, size: int, train_copies: int, streamed: bool = False) -> None:
    """Refuse, before anything is read, a dataset that cannot fit in memory."""
    need = (estimate_stream_memory(spec, input_size=size) if streamed
            else estimate_memory(spec, input_size=size, train_copies=train_copies))
    avail = available_memory()
    if avail is None or need <= avail:
        return
    kind, _ = parse_dataset_spec(spec)
    channels = 1 if kind == "digits" else 3
    copies = " and a second copy of the train split for the search" if train_copies > 1 else ""
    raise UsageError(f"dataset {spec} at --input-size {size} needs ~{_gib(need)} GiB, "
                     f"{_gib(avail)} GiB available (float32 images of {channels}x{size}x{size}"
                     f"{copies}); use a smaller --input-size or fewer images")
