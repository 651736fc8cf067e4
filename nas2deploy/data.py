"""Datasets: load a spec (``digits``, ``cifar10:DIR``, ``folder:DIR``) into normalised CPU tensors.

Every dataset comes out the same way: float32 NCHW images normalised per channel with the mean and
std of the *train* split (recorded in :class:`Dataset` so the bundle manifest can name the
preprocessing), int64 labels, and a stratified train/val/test split fixed by ``seed``.

Nothing is downloaded. ``digits`` is scikit-learn's bundled copy of the UCI digits; ``cifar10``
reads the CIFAR-10 *python* batches, which are pickles, through a restricted unpickler that can
only rebuild numpy arrays; ``folder`` reads a class-per-subfolder image tree with Pillow.
Every bad input raises :class:`~nas2deploy.errors.UsageError` with one line naming the problem
and the fix.
"""

from __future__ import annotations

import importlib.util
import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import UsageError

__all__ = ["Dataset", "DatasetInfo", "load_dataset", "dataset_info", "check_dataset",
           "estimate_memory", "available_memory", "parse_dataset_spec", "KINDS",
           "IMAGE_EXTENSIONS", "MIN_INPUT_SIZE", "MAX_INPUT_SIZE"]

# kind -> whether it takes a DIR
KINDS: dict[str, bool] = {"digits": False, "cifar10": True, "folder": True}
# Each extension names the one Pillow format a file is decoded as: opening by content would let
# a PostScript file named .png reach Ghostscript.
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".gif": "GIF",
                 ".webp": "WEBP"}
IMAGE_EXTENSIONS = tuple(IMAGE_FORMATS)
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 8, 512
SPLIT = (0.70, 0.15, 0.15)  # train / val / test for digits and folder
CIFAR_VAL_FRACTION = 0.10  # of the five train batches; test_batch is the test split
CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_FILES = (*CIFAR_TRAIN_FILES, "test_batch")
_CIFAR_SUBDIR = "cifar-10-batches-py"
_RESIZE_CHUNK = 4096  # images per interpolate call, to bound peak memory on CIFAR-sized sets
DIGITS_CLASS_COUNTS = (178, 182, 177, 183, 181, 182, 181, 179, 174, 180)  # scikit-learn's copy
_CIFAR_IMAGE_BYTES = 3 * 32 * 32

Progress = Callable[..., Any]


@dataclass
class Dataset:
    """Three normalised splits and what was done to them."""

    name: str  # "digits", "cifar10:/abs/path", "folder:/abs/path"
    x_train: torch.Tensor  # float32 N×C×S×S, normalised with the train mean/std
    y_train: torch.Tensor  # int64 N
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    channels: int
    input_size: int
    class_names: list[str]
    mean: list[float]  # per channel, subtracted from pixels scaled to [0, 1]
    std: list[float]  # per channel, divided after subtracting the mean
    seed: int = 0  # the split seed
    split: str = ""  # how the splits were made, in words

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary (for the bundle manifest and reports)."""
        return {
            "name": self.name,
            "sizes": {"train": int(len(self.y_train)), "val": int(len(self.y_val)),
                      "test": int(len(self.y_test))},
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "input_shape": [self.channels, self.input_size, self.input_size],
            "mean": [float(m) for m in self.mean],
            "std": [float(s) for s in self.std],
            "preprocessing": "pixels scaled to [0, 1], bilinear resize to input_size, "
                             "then (x - mean) / std per channel",
            "split": self.split,
            "split_seed": self.seed,
        }


# --------------------------------------------------------------------------------------------
# spec parsing


def parse_dataset_spec(spec: str) -> tuple[str, Path | None]:
    """``"digits"`` -> ("digits", None); ``"cifar10:DIR"``/``"folder:DIR"`` -> (kind, DIR).

    Checks the kind and that DIR exists and is a directory, without loading anything, so a long
    run can fail before it starts.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise UsageError(f"empty dataset spec {spec!r}; use one of {_spec_forms()}")
    text = spec.strip()
    kind, sep, rest = text.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise UsageError(f"unknown dataset kind {kind!r} in {spec!r}; use one of {_spec_forms()}")
    if not KINDS[kind]:
        if sep:
            raise UsageError(f"dataset {kind!r} takes no directory (got {spec!r}); write just {kind!r}")
        return kind, None
    rest = rest.strip()
    if not rest:
        raise UsageError(f"dataset {kind!r} needs a directory; write {kind}:DIR, "
                         f"e.g. {kind}:./data/{'cifar-10-batches-py' if kind == 'cifar10' else 'images'}")
    path = Path(rest).expanduser()
    if not path.exists():
        raise UsageError(f"{kind} directory {str(path)!r} does not exist; check the path in {spec!r}")
    if not path.is_dir():
        raise UsageError(f"{kind} path {str(path)!r} is not a directory; give the folder "
                         f"{'holding the CIFAR-10 batch files' if kind == 'cifar10' else 'of class subfolders'}")
    return kind, path


def _spec_forms() -> str:
    return ", ".join(f"{k}:DIR" if takes_dir else k for k, takes_dir in KINDS.items())


def _check_input_size(input_size: Any) -> int:
    if isinstance(input_size, bool) or not isinstance(input_size, (int, np.integer)):
        raise UsageError(f"input_size must be an integer in {MIN_INPUT_SIZE}..{MAX_INPUT_SIZE}, "
                         f"not {input_size!r}")
    if not MIN_INPUT_SIZE <= int(input_size) <= MAX_INPUT_SIZE:
        raise UsageError(f"input_size {input_size} is out of range; use {MIN_INPUT_SIZE}..{MAX_INPUT_SIZE}")
    return int(input_size)


# --------------------------------------------------------------------------------------------
# entry point


def load_dataset(spec: str = "digits", *, input_size: int = 32, seed: int = 0,
                 progress: Progress | None = None) -> Dataset:
    """Load ``spec`` at ``input_size``×``input_size``, split with ``seed`` and normalise.

    ``progress(total=..., desc=...)``, if given, returns a tqdm-like bar (``update()``/``close()``)
    used while reading files.
    """
    kind, path = parse_dataset_spec(spec)
    size = _check_input_size(input_size)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise UsageError(f"seed must be an integer, not {seed!r}")
    seed = int(seed)
    _check_memory(spec, size, train_copies=1)
    if kind == "digits":
        return _load_digits(size, seed)
    assert path is not None
    if kind == "cifar10":
        return _load_cifar10(path, size, seed, progress)
    return _load_folder(path, size, seed, progress)


# --------------------------------------------------------------------------------------------
# shared pieces


def _stratified_split(labels: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Indices per split; every class is shuffled with ``seed`` and cut in ``fractions``.

    Splits after the first get ``round(f * n)`` of each class, at least one where the class has
    enough members for every non-empty split; the first split takes the rest. Indices come back
    sorted, so a split does not depend on the order classes were visited in.
    """
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(len(idx))]
        counts = _split_counts(len(idx), fractions)
        start = 0
        for i, c in enumerate(counts):
            parts[i].append(idx[start:start + c])
            start += c
    return [np.sort(np.concatenate(p)) if p else np.empty(0, dtype=np.int64) for p in parts]


def _split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """How many of a class of ``n`` each split gets (see ``_stratified_split``)."""
    wanted = [i for i, f in enumerate(fractions) if f > 0]
    counts = [0] * len(fractions)
    for i in range(1, len(fractions)):
        if fractions[i] > 0:
            counts[i] = int(round(fractions[i] * n))
            if n >= len(wanted):
                counts[i] = max(1, counts[i])
    while sum(counts[1:]) > n - (1 if n >= len(wanted) else 0):  # keep one for the first split
        j = max(range(1, len(counts)), key=lambda k: counts[k])
        counts[j] -= 1
    counts[0] = n - sum(counts[1:])
    return counts


def _split_sizes(class_counts: Sequence[int], fractions: Sequence[float]) -> list[int]:
    per_class = [_split_counts(int(n), fractions) for n in class_counts if n > 0]
    return [sum(c[i] for c in per_class) for i in range(len(fractions))]


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of float N×C×H×W to size×size (antialiased when shrinking), in chunks."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    shrink = size < x.shape[-1] or size < x.shape[-2]
    out = torch.empty((x.shape[0], x.shape[1], size, size), dtype=x.dtype)
    for i in range(0, x.shape[0], _RESIZE_CHUNK):
        out[i:i + _RESIZE_CHUNK] = F.interpolate(x[i:i + _RESIZE_CHUNK], size=(size, size),
                                                 mode="bilinear", align_corners=False,
                                                 antialias=shrink)
    return out


def _finish(name: str, x: torch.Tensor, y: np.ndarray, splits: Sequence[np.ndarray],
            class_names: list[str], seed: int, split_text: str) -> Dataset:
    """Split the [0, 1] images, normalise every split with the train split's statistics."""
    tr, va, te = (torch.from_numpy(np.asarray(s, dtype=np.int64)) for s in splits)
    return _normalise_and_wrap(name, x[tr], x[va], x[te],
                               *(torch.from_numpy(y[s].astype(np.int64)) for s in splits),
                               class_names=class_names, seed=seed, split_text=split_text)


def _normalise_and_wrap(name: str, x_train: torch.Tensor, x_val: torch.Tensor, x_test: torch.Tensor,
                        y_train: torch.Tensor, y_val: torch.Tensor, y_test: torch.Tensor, *,
                        class_names: list[str], seed: int, split_text: str) -> Dataset:
    x_train, x_val, x_test = (t.to(torch.float32).contiguous() for t in (x_train, x_val, x_test))
    std, mean = torch.std_mean(x_train, dim=(0, 2, 3), correction=0)
    mean = mean.double()
    std = std.double()
    std = torch.where(std < 1e-6, torch.ones_like(std), std)  # a constant channel: leave its scale
    m = mean.float().view(1, -1, 1, 1)
    s = std.float().view(1, -1, 1, 1)
    for t in (x_train, x_val, x_test):
        t.sub_(m).div_(s)
    return Dataset(
        name=name, x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val,
        x_test=x_test, y_test=y_test, num_classes=len(class_names), channels=int(x_train.shape[1]),
        input_size=int(x_train.shape[-1]), class_names=list(class_names),
        mean=[float(v) for v in mean], std=[float(v) for v in std], seed=seed, split=split_text,
    )


# --------------------------------------------------------------------------------------------
# digits


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images 1797×8×8 float in 0..16, labels) from scikit-learn's bundled digits.csv.gz.

    The file is read directly (what ``sklearn.datasets.load_digits`` does) because importing
    scikit-learn costs more than half a second; ``load_digits`` is the fallback.
    """
    spec = importlib.util.find_spec("sklearn")
    for root in (spec.submodule_search_locations or []) if spec else []:
        csv = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if csv.is_file():
            table = np.loadtxt(csv, delimiter=",")
            if table.shape == (1797, 65):
                return table[:, :64].reshape(-1, 8, 8), table[:, 64].astype(np.int64)
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - scikit-learn is a dependency
        raise UsageError("the digits dataset needs scikit-learn; pip install scikit-learn") from exc
    bunch = load_digits()
    return np.asarray(bunch.images), np.asarray(bunch.target, dtype=np.int64)


def _load_digits(size: int, seed: int) -> Dataset:
    images, labels = _digits_arrays()
    x = torch.from_numpy((images / 16.0).astype(np.float32)).unsqueeze(1)
    x = _resize(x, size)
    splits = _stratified_split(labels, SPLIT, seed)
    return _finish("digits", x, labels, splits, [str(i) for i in range(10)], seed,
                   "stratified 70/15/15 train/val/test")


# --------------------------------------------------------------------------------------------
# CIFAR-10 python batches


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


# --------------------------------------------------------------------------------------------
# class-per-subfolder image tree


def _list_folder(path: Path) -> tuple[list[Path], list[Path], list[int]]:
    """(class folders, image files, their labels) of a class-per-subfolder tree; nothing is
    opened."""
    class_dirs = sorted((p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")),
                        key=lambda p: p.name)
    exts = "/".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
    if not class_dirs:
        raise UsageError(f"image folder {str(path)!r} has no class subfolders; lay it out as "
                         f"DIR/<class>/<image>.{{{exts}}}")
    if len(class_dirs) < 2:
        raise UsageError(f"image folder {str(path)!r} has one class ({class_dirs[0].name!r}); "
                         f"classification needs at least 2 class subfolders")
    need = sum(1 for f in SPLIT if f > 0)
    files: list[Path] = []
    labels: list[int] = []
    for label, cdir in enumerate(class_dirs):
        images = sorted(p for p in cdir.rglob("*")
                        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                        and not any(part.startswith(".") for part in p.relative_to(cdir).parts))
        if not images:
            raise UsageError(f"class folder {str(cdir)!r} has no images ({exts}); add some or "
                             f"remove the folder")
        if len(images) < need:
            raise UsageError(f"class {cdir.name!r} has {len(images)} image(s) in {str(cdir)!r}; each "
                             f"class needs at least {need} (one each for train, val and test)")
        files.extend(images)
        labels.extend([label] * len(images))
    return class_dirs, files, labels


def _load_folder(path: Path, size: int, seed: int, progress: Progress | None) -> Dataset:
    class_dirs, files, labels = _list_folder(path)
    from PIL import Image, UnidentifiedImageError  # imported here: only this loader needs Pillow

    pixels = np.empty((len(files), size, size, 3), dtype=np.uint8)
    bar = progress(total=len(files), desc="reading images") if progress else None
    try:
        for i, f in enumerate(files):
            fmt = IMAGE_FORMATS[f.suffix.lower()]
            try:
                with Image.open(f, formats=[fmt]) as im:
                    im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale (>= size)
                    im = im.convert("RGB")
                    if im.size != (size, size):
                        im = im.resize((size, size), Image.BILINEAR)
                    pixels[i] = np.asarray(im, dtype=np.uint8)
            except UnidentifiedImageError:
                raise UsageError(f"image {str(f)!r} is not a {fmt} image, the one format its "
                                 f"extension is decoded as; replace, convert or delete "
                                 f"it") from None
            except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
                raise UsageError(f"cannot read image {str(f)!r} ({type(exc).__name__}: {exc}); "
                                 f"replace or delete it") from None
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()

    y = np.asarray(labels, dtype=np.int64)
    # NCHW in uint8 first: a float copy of the channels-last view would be split and then made
    # contiguous again, twice the float memory
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous().float().div_(255.0)
    splits = _stratified_split(y, SPLIT, seed)
    return _finish(f"folder:{path.resolve()}", x, y, splits, [d.name for d in class_dirs], seed,
                   "stratified 70/15/15 train/val/test")


# --------------------------------------------------------------------------------------------
# sizes and memory, known before loading


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
                  train_copies: int = 1) -> DatasetInfo:
    """Everything about ``spec`` that can be checked before loading it: that it fits in memory
    at ``input_size`` (with ``train_copies`` float copies of the train split), and that its
    test split fills one ``batch``, which parity checks and the verdict run whole."""
    parse_dataset_spec(spec)
    size = _check_input_size(input_size)
    _check_memory(spec, size, train_copies)
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


def available_memory() -> int | None:
    """Bytes this process can still allocate: the least of the machine's MemAvailable (or
    free pages), the headroom under its cgroup's memory limit (a container's, which
    MemAvailable does not show) and under its address-space rlimit (``ulimit -v``). None where
    none of them can be read."""
    known = [v for v in (_meminfo_available(), _cgroup_headroom(), _rlimit_headroom())
             if v is not None]
    return max(0, min(known)) if known else None


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
        return None if text == "max" else int(text)
    except (OSError, ValueError):
        return None


def _inactive_file(stat: Path, key: str) -> int:
    """Page cache the kernel reclaims before it kills: counted in a cgroup's usage, free for us."""
    try:
        for line in stat.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_headroom() -> int | None:
    try:
        entries = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    heads = []
    for line in entries:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        if controllers == "":  # cgroup v2
            heads += _cgroup_walk(Path("/sys/fs/cgroup"), rel, "memory.max", "memory.current",
                                  "inactive_file")
        elif "memory" in controllers.split(","):  # cgroup v1
            heads += _cgroup_walk(Path("/sys/fs/cgroup/memory"), rel, "memory.limit_in_bytes",
                                  "memory.usage_in_bytes", "total_inactive_file")
    return min(heads) if heads else None


def _cgroup_walk(root: Path, rel: str, limit_file: str, usage_file: str,
                 inactive: str) -> list[int]:
    """Headroom under the limit of the process's cgroup and of each ancestor (a limit may sit on
    any of them)."""
    heads = []
    d = root / rel.strip("/")
    while d == root or root in d.parents:
        limit, used = _read_int(d / limit_file), _read_int(d / usage_file)
        # v1 writes "no limit" as about 2**63
        if limit is not None and used is not None and limit < 1 << 60:
            heads.append(limit - used + _inactive_file(d / "memory.stat", inactive))
        if d == root:
            break
        d = d.parent
    return heads


def _rlimit_headroom() -> int | None:
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError):
        return None
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return soft - int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return soft


def _gib(n: int) -> str:
    return f"{n / 2 ** 30:.1f}" if n >= 2 ** 30 else f"{n / 2 ** 30:.2f}"


def _check_memory(spec: str, size: int, train_copies: int) -> None:
    """Refuse, before anything is read, a dataset whose float copy cannot fit in memory."""
    need = estimate_memory(spec, input_size=size, train_copies=train_copies)
    avail = available_memory()
    if avail is None or need <= avail:
        return
    kind, _ = parse_dataset_spec(spec)
    channels = 1 if kind == "digits" else 3
    copies = " and a second copy of the train split for the search" if train_copies > 1 else ""
    raise UsageError(f"dataset {spec} at --input-size {size} needs ~{_gib(need)} GiB, "
                     f"{_gib(avail)} GiB available (float32 images of {channels}x{size}x{size}"
                     f"{copies}); use a smaller --input-size or fewer images")
