"""The entry point: load a dataset spec into a :class:`Dataset`."""

from __future__ import annotations

import numpy as np

from ..errors import UsageError
from .cifar import _load_cifar10
from .datasets import Dataset, Progress, _check_input_size, parse_dataset_spec
from .digits import _load_digits
from .folder import _load_folder
from .sizes import _check_memory


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
