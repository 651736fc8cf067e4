"""The ``cifar10`` dataset: the CIFAR-10 *python* batches, which are pickles, read through a
restricted unpickler that can only rebuild numpy arrays."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UsageError
from .datasets import (_CIFAR_SUBDIR, _RESIZE_CHUNK, CIFAR_FILES, CIFAR_VAL_FRACTION, Dataset,
                       Progress, _normalise_and_wrap, _resize, _stratified_split)
from .memory import _gib, available_memory


class _ForbiddenGlobal(pickle.UnpicklingError):
    pass


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays; refuses every other global.

    The original CIFAR-10 batches (pickled by Python 2) need only ``_reconstruct``, ``ndarray``
    and ``dtype``. Two more harmless constructors are allowed for copies re-pickled by Python 3:
    ``_frombuffer`` (numpy arrays at protocol 5) and ``_codecs.encode`` (bytes at protocol <= 2).
    Neither can run code: each only builds an array or a bytes object from data.
    """

    ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    })

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise _ForbiddenGlobal(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise _ForbiddenGlobal(f"persistent id {pid!r}")


def _unpickle(path: Path) -> Any:
    try:
        size = path.stat().st_size
        avail = available_memory()
        # the file's bytes and the arrays built from them are held at once
        if avail is not None and 2 * size > avail:
            raise UsageError(f"CIFAR-10 file {str(path)!r} is {size / 2 ** 30:.1f} GiB, more than "
                             f"memory can hold twice ({_gib(avail)} GiB available); a CIFAR-10 "
                             f"batch is about 30 MB: re-extract cifar-10-python.tar.gz")
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read CIFAR-10 file {str(path)!r}: {exc.strerror or exc}; "
                         f"check its permissions or re-extract cifar-10-python.tar.gz") from exc
    try:
        return _ArrayOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except _ForbiddenGlobal as exc:
        raise UsageError(f"refusing to load {str(path)!r}: it references {exc}, which a CIFAR-10 batch "
                         f"never needs (only numpy arrays are allowed); use the original "
                         f"cifar-10-python.tar.gz files") from None
    except Exception as exc:  # truncated or not a pickle at all
        raise UsageError(f"CIFAR-10 file {str(path)!r} is corrupt or truncated ({type(exc).__name__}: "
                         f"{exc}); re-extract cifar-10-python.tar.gz") from None


def _str_keys(obj: Any, path: Path) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise UsageError(f"CIFAR-10 file {str(path)!r} holds a {type(obj).__name__}, not a dict; "
                         f"it is not a CIFAR-10 python batch")
    return {(k.decode("latin-1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _find_cifar_dir(path: Path) -> Path:
    candidates = [path, path / _CIFAR_SUBDIR]
    for d in candidates:
        if (d / "data_batch_1").is_file() or (d / "test_batch").is_file():
            return d
    hint = ""
    if any(path.glob("*.tar.gz")):
        hint = " (found a .tar.gz: extract it first, e.g. tar xzf cifar-10-python.tar.gz)"
    raise UsageError(f"no CIFAR-10 batch files in {str(path)!r}{hint}; give the folder holding "
                     f"data_batch_1..5 and test_batch, or its parent containing {_CIFAR_SUBDIR}/")


def _read_cifar_batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = _str_keys(_unpickle(path), path)
    if "data" not in batch:
        raise UsageError(f"CIFAR-10 file {str(path)!r} has no 'data' entry; it is not a CIFAR-10 batch")
    label_key = "labels" if "labels" in batch else None
    if label_key is None:
        extra = " (this looks like CIFAR-100, which is not supported)" if "fine_labels" in batch else ""
        raise UsageError(f"CIFAR-10 file {str(path)!r} has no 'labels' entry{extra}; "
                         f"use the CIFAR-10 python batches")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = (f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray)
                else type(data).__name__)
        raise UsageError(f"CIFAR-10 file {str(path)!r}: 'data' is a {desc}, expected a uint8 array "
                         f"N×3072 (3 planes of 32×32); re-extract cifar-10-python.tar.gz")
    try:
        labels = np.asarray(batch[label_key])
    except Exception:  # pragma: no cover - odd objects
        labels = np.asarray([], dtype=object)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise UsageError(f"CIFAR-10 file {str(path)!r}: 'labels' must be a list of integers; "
                         f"re-extract cifar-10-python.tar.gz")
    if len(labels) != len(data):
        raise UsageError(f"CIFAR-10 file {str(path)!r}: {len(data)} images but {len(labels)} labels; "
                         f"re-extract cifar-10-python.tar.gz")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise UsageError(f"CIFAR-10 file {str(path)!r}: labels span {labels.min()}..{labels.max()}, "
                         f"outside 0..{num_classes - 1}; re-extract cifar-10-python.tar.gz")
    return data, labels.astype(np.int64)


def _cifar_class_names(d: Path) -> list[str]:
    meta_path = d / "batches.meta"
    if not meta_path.is_file():
        return [str(i) for i in range(10)]
    meta = _str_keys(_unpickle(meta_path), meta_path)
    names = meta.get("label_names")
    if (not isinstance(names, (list, tuple)) or len(names) < 2
            or not all(isinstance(n, (bytes, str)) for n in names)):
        raise UsageError(f"CIFAR-10 file {str(meta_path)!r} has no valid 'label_names' list; "
                         f"re-extract it or delete it to use class names 0..9")
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names]


def _cifar_dir(path: Path) -> Path:
    """The folder holding all six batch files."""
    d = _find_cifar_dir(path)
    missing = [f for f in CIFAR_FILES if not (d / f).is_file()]
    if missing:
        raise UsageError(f"CIFAR-10 folder {str(d)!r} is missing {', '.join(missing)}; "
                         f"re-extract cifar-10-python.tar.gz there")
    return d


def _load_cifar10(path: Path, size: int, seed: int, progress: Progress | None) -> Dataset:
    d = _cifar_dir(path)
    class_names = _cifar_class_names(d)
    bar = progress(total=len(CIFAR_FILES), desc="reading CIFAR-10") if progress else None
    try:
        parts = []
        for f in CIFAR_FILES:
            parts.append(_read_cifar_batch(d / f, len(class_names)))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    train_data = np.concatenate([p[0] for p in parts[:5]])
    train_labels = np.concatenate([p[1] for p in parts[:5]])
    test_data, test_labels = parts[5]
    if len(train_data) < 2 or len(test_data) < 1:
        raise UsageError(f"CIFAR-10 folder {str(d)!r} holds {len(train_data)} train and {len(test_data)} "
                         f"test images; need at least 2 and 1")
    tr, va, _ = _stratified_split(train_labels, (1 - CIFAR_VAL_FRACTION, CIFAR_VAL_FRACTION, 0.0), seed)
    if len(va) == 0:
        raise UsageError(f"CIFAR-10 folder {str(d)!r} has too few train images to hold out a "
                         f"validation split; need at least 2 images of some class")

    def to_float(a: np.ndarray) -> torch.Tensor:  # N×3072 uint8 (R, G, B planes) -> N×3×S×S
        x = torch.from_numpy(np.ascontiguousarray(a)).view(-1, 3, 32, 32)
        out = torch.empty((x.shape[0], 3, size, size), dtype=torch.float32)
        for i in range(0, x.shape[0], _RESIZE_CHUNK):
            out[i:i + _RESIZE_CHUNK] = _resize(x[i:i + _RESIZE_CHUNK].float().div_(255.0), size)
        return out

    name = f"cifar10:{d.resolve()}"
    return _normalise_and_wrap(
        name, to_float(train_data[tr]), to_float(train_data[va]), to_float(test_data),
        torch.from_numpy(train_labels[tr]), torch.from_numpy(train_labels[va]),
        torch.from_numpy(test_labels), class_names=class_names, seed=seed,
        split_text=(f"data_batch_1..5 stratified {100 - round(CIFAR_VAL_FRACTION * 100)}/"
                    f"{round(CIFAR_VAL_FRACTION * 100)} train/val; test_batch is test"),
    )
