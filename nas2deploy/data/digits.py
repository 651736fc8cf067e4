"""The ``digits`` dataset: scikit-learn's bundled copy of the UCI digits."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from ..errors import UsageError
from .datasets import SPLIT, Dataset, _finish, _resize, _stratified_split


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
