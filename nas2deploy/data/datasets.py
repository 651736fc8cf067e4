"""Datasets: what every loader makes, the spec that names it, and the pieces they share.

Every dataset comes out the same way: float32 NCHW images normalised per channel with the mean and
std of the *train* split (recorded in :class:`Dataset` so the bundle manifest can name the
preprocessing), int64 labels, and a stratified train/val/test split fixed by ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UsageError

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
