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

from .datasets import (IMAGE_EXTENSIONS, KINDS, MAX_INPUT_SIZE, MIN_INPUT_SIZE, Dataset,
                       parse_dataset_spec)
from .loader import load_dataset
from .memory import available_memory
from .sizes import DatasetInfo, check_dataset, dataset_info, estimate_memory

__all__ = ["Dataset", "DatasetInfo", "load_dataset", "dataset_info", "check_dataset",
           "estimate_memory", "available_memory", "parse_dataset_spec", "KINDS",
           "IMAGE_EXTENSIONS", "MIN_INPUT_SIZE", "MAX_INPUT_SIZE"]

from .cache import check_cache_dir  # noqa: E402
from .loaders import default_workers, make_loader, set_epoch  # noqa: E402
from .stream import Splits, open_dataset  # noqa: E402

__all__ += ["Splits", "open_dataset", "make_loader", "set_epoch", "default_workers",
            "check_cache_dir"]
