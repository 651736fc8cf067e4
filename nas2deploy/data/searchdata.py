"""``SearchData``: the three splits a search steps through, batched on its device.

A method never indexes images itself: it asks for one shuffled pass of a split (``epoch``), an
endless stream of passes (``cycle``, for the architecture split stepped beside the weights), or
the split in order without augmentation (``ordered``, for accuracy and BN statistics). Every
batch comes as ``(x, y)`` on ``device``, ``x`` normalised float32.

Two backings, one interface:

* in memory (``SearchData(x_w, y_w, x_a, y_a, x_v, y_v)``: normalised tensors, as tests and the
  embedded digits make them): a pass is ``epoch_batches`` over the generator the method gives,
  so a method's batches are exactly what they were when it indexed the tensors itself;
* streamed (``SearchData.streamed``: ``torch.utils.data`` datasets of uint8 images): a
  ``DataLoader`` per split, with workers kept across passes, a shuffle fixed by (seed, split,
  pass) and normalisation on the device. Memory does not grow with the number of images.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch

from ..train import epoch_batches

SPLITS = ("weights", "arch", "val")
Batch = tuple[torch.Tensor, torch.Tensor]


class SearchData:
    """The weight split, the architecture split and the held-out split of a search."""

    def __init__(self, x_weights: torch.Tensor, y_weights: torch.Tensor, x_arch: torch.Tensor,
                 y_arch: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor, *,
                 device: torch.device | str = "cpu"):
        self.x_weights, self.y_weights = x_weights, y_weights
        self.x_arch, self.y_arch = x_arch, y_arch
        self.x_val, self.y_val = x_val, y_val
        self.device = torch.device(device)
        self._streams: dict[str, torch.utils.data.Dataset] | None = None

    @classmethod
    def streamed(cls, weights: torch.utils.data.Dataset, arch: torch.utils.data.Dataset,
                 val: torch.utils.data.Dataset, *,
                 normalize: Callable[[torch.Tensor, torch.device], torch.Tensor],
                 device: torch.device | str = "cpu", workers: int | None = None,
                 seed: int = 0) -> "SearchData":
        empty = torch.empty(0)
        data = cls(empty, empty, empty, empty, empty, empty, device=device)
        data._streams = {"weights": weights, "arch": arch, "val": val}
        data._normalize, data._workers, data._seed = normalize, workers, seed
        data._loaders: dict[tuple[str, int, bool], torch.utils.data.DataLoader] = {}
        data._passes = {s: 0 for s in SPLITS}
        return data

    @property
    def is_streamed(self) -> bool:
        return self._streams is not None

    def size(self, split: str) -> int:
        if self._streams is not None:
            return len(self._streams[split])
        return len(self._tensors(split)[0])

    def n_batches(self, split: str, batch_size: int) -> int:
        """Batches in one ``epoch`` pass (a trailing batch of one image is dropped)."""
        n = self.size(split)
        k = -(-n // batch_size)
        return k - 1 if k > 1 and n - (k - 1) * batch_size < 2 else k

    def epoch(self, split: str, batch_size: int, gen: torch.Generator) -> Iterator[Batch]:
        """One shuffled pass (with augmentation where the split has it)."""
        if self._streams is None:
            x, y = self._tensors(split)
            for idx in epoch_batches(len(x), batch_size, gen):
                yield x[idx].to(self.device), y[idx].to(self.device)
            return
        loader = self._loader(split, batch_size, shuffle=True)
        from .loaders import set_epoch

        set_epoch(loader, self._passes[split])
        self._passes[split] += 1
        n = self.n_batches(split, batch_size)
        for i, (x, y) in enumerate(loader):
            if i >= n:
                break  # the trailing single image: train-mode BN cannot normalise it
            yield self._normalize(x, self.device), y.to(self.device, non_blocking=True)

    def cycle(self, split: str, batch_size: int, gen: torch.Generator) -> Iterator[Batch]:
        """``epoch`` pass after pass, for a split stepped alongside another."""
        while True:
            yield from self.epoch(split, batch_size, gen)

    def ordered(self, split: str, batch_size: int = 256, limit: int | None = None) -> Iterator[Batch]:
        """The split in order, without augmentation: at most ``limit`` images."""
        limit = self.size(split) if limit is None else min(limit, self.size(split))
        if self._streams is None:
            x, y = self._tensors(split)
            for i in range(0, limit, batch_size):
                j = min(i + batch_size, limit)
                yield x[i:j].to(self.device), y[i:j].to(self.device)
            return
        seen = 0
        for x, y in self._loader(split, batch_size, shuffle=False):
            if seen >= limit:
                break
            x, y = x[:limit - seen], y[:limit - seen]
            seen += len(x)
            yield self._normalize(x, self.device), y.to(self.device, non_blocking=True)

    def _tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
        return getattr(self, f"x_{split}"), getattr(self, f"y_{split}")

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> torch.utils.data.DataLoader:
        from .loaders import make_loader

        key = (split, batch_size, shuffle)
        if key not in self._loaders:
            ds = self._streams[split]
            if not shuffle and hasattr(ds, "eval_view"):
                ds = ds.eval_view()
            offset = SPLITS.index(split)
            self._loaders[key] = make_loader(ds, batch_size=batch_size, shuffle=shuffle,
                                             seed=self._seed * len(SPLITS) + offset,
                                             workers=self._workers, device=self.device)
        return self._loaders[key]


class Part(torch.utils.data.Dataset):
    """Items ``indices`` of a streamed split, with an augmentation epoch of its own."""

    def __init__(self, dataset: torch.utils.data.Dataset, indices: torch.Tensor):
        self.dataset = dataset.detached() if hasattr(dataset, "detached") else dataset
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Batch:
        return self.dataset[int(self.indices[i])]

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def eval_view(self) -> "Part":
        view = Part.__new__(Part)
        view.dataset = (self.dataset.eval_view() if hasattr(self.dataset, "eval_view")
                        else self.dataset)
        view.indices = self.indices
        return view
