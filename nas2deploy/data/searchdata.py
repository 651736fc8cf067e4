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

Batch = tuple[torch.Tensor, torch.Tensor]


def epoch_batches(n: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """One shuffled pass in batches; a trailing batch of one image is dropped (train-mode BN
    cannot normalise a batch of one)."""
    order = torch.randperm(n, generator=gen)
    out = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if len(out) > 1 and len(out[-1]) < 2:
        out.pop()
    return out


def spread_indices(n: int, k: int) -> list[int]:
    """``k`` of ``range(n)`` spread evenly, in order (every (n/k)-th, the first included)."""
    return [i * n // k for i in range(k)]


class Batches:
    """Named splits batched on a device: in memory (``Batches.in_memory``: normalised tensors)
    or streamed (``Batches.streamed``: datasets of uint8 images and the normalisation)."""

    def __init__(self, tensors: dict[str, tuple[torch.Tensor, torch.Tensor]], *,
                 device: torch.device | str = "cpu"):
        self._tensors_by_split = dict(tensors)
        self.device = torch.device(device)
        self._streams: dict[str, torch.utils.data.Dataset] | None = None
        self.rank, self.world_size = 0, 1

    def shard(self, rank: int, world_size: int) -> "Batches":
        """Shuffled passes take this rank's part of each global batch of ``world_size`` x the
        batch size (what a ``DistributedSampler`` gives, batch by batch): every rank steps the
        same number of times, and a trailing global batch too small to share is left out.
        ``ordered`` passes are not sharded (every rank scores the whole split)."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.close()
        self.rank, self.world_size = int(rank), int(world_size)
        return self

    @classmethod
    def in_memory(cls, tensors: dict[str, tuple[torch.Tensor, torch.Tensor]], *,
                  device: torch.device | str = "cpu") -> "Batches":
        return cls(tensors, device=device)

    @classmethod
    def streamed(cls, datasets: dict[str, torch.utils.data.Dataset], *,
                 normalize: Callable[[torch.Tensor, torch.device], torch.Tensor],
                 device: torch.device | str = "cpu", workers: int | None = None,
                 seed: int = 0) -> "Batches":
        data = cls.__new__(cls)
        Batches.__init__(data, {}, device=device)
        data._streams = dict(datasets)
        data._normalize, data._workers, data._seed = normalize, workers, seed
        data._loaders = {}
        data._passes = {name: 0 for name in datasets}
        return data

    @property
    def is_streamed(self) -> bool:
        return self._streams is not None

    @property
    def splits(self) -> list[str]:
        return list(self._streams if self._streams is not None else self._tensors_by_split)

    def size(self, split: str) -> int:
        if self._streams is not None:
            return len(self._stream(split))
        return len(self._tensors(split)[0])

    def n_batches(self, split: str, batch_size: int, drop_single: bool = True) -> int:
        """Batches in one ``epoch`` pass."""
        n = self.size(split)
        if self.world_size > 1:
            return n // (batch_size * self.world_size)
        k = -(-n // batch_size)
        return k - 1 if drop_single and k > 1 and n - (k - 1) * batch_size < 2 else k

    def epoch(self, split: str, batch_size: int, gen: torch.Generator,
              drop_single: bool = True) -> Iterator[Batch]:
        """One shuffled pass (with augmentation where the split has it). ``drop_single``: a
        trailing batch of one image is dropped (train-mode BN cannot normalise it)."""
        if self._streams is None:
            x, y = self._tensors(split)
            if self.world_size > 1:
                order = self._shards(torch.randperm(len(x), generator=gen), batch_size)
            elif drop_single:
                order = epoch_batches(len(x), batch_size, gen)
            else:
                perm = torch.randperm(len(x), generator=gen)
                order = [perm[i:i + batch_size] for i in range(0, len(x), batch_size)]
            for idx in order:
                yield x[idx].to(self.device), y[idx].to(self.device)
            return
        from .loaders import set_epoch

        loader = self._loader(split, batch_size, shuffle=True)
        set_epoch(loader, self._passes[split])
        self._passes[split] += 1
        n = self.n_batches(split, batch_size, drop_single)
        for i, (x, y) in enumerate(loader):
            if i < n:  # past n: the trailing single image, read but not used (see ``close``)
                yield self._normalize(x, self.device), y.to(self.device, non_blocking=True)

    def _shards(self, perm: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
        g, lo = batch_size * self.world_size, batch_size * self.rank
        return [perm[b * g + lo: b * g + lo + batch_size] for b in range(len(perm) // g)]

    def cycle(self, split: str, batch_size: int, gen: torch.Generator) -> "Cycle":
        """``epoch`` pass after pass, for a split stepped alongside another; its position can
        be saved and restored (``Cycle.state``)."""
        return Cycle(self, split, batch_size, gen)

    def state(self) -> dict[str, int]:
        """The passes each streamed split has started (what fixes their next shuffle)."""
        return dict(getattr(self, "_passes", {}))

    def load_state(self, state: dict[str, int]) -> None:
        if self._streams is not None:
            self._passes.update({k: int(v) for k, v in state.items() if k in self._passes})

    def ordered(self, split: str, batch_size: int = 256, limit: int | None = None,
                device: torch.device | str | None = None, spread: bool = False) -> Iterator[Batch]:
        """The split in order, without augmentation: at most ``limit`` images, on ``device``
        (default: the data's). ``spread``: the ``limit`` images are spread evenly over the
        split (every k-th) instead of its first ones; splits keep their images' dataset order,
        which for a folder dataset is class by class, so the first images are a few classes'."""
        device = self.device if device is None else torch.device(device)
        n = self.size(split)
        limit = n if limit is None else min(limit, n)
        picked = spread_indices(n, limit) if spread and limit < n else None
        if self._streams is None:
            x, y = self._tensors(split)
            if picked is not None:
                x, y = x[picked], y[picked]
            for i in range(0, limit, batch_size):
                j = min(i + batch_size, limit)
                yield x[i:j].to(device), y[i:j].to(device)
            return
        for x, y in self._loader(split, batch_size, shuffle=False, limit=limit,
                                 spread=picked is not None):
            yield self._normalize(x, device), y.to(device, non_blocking=True)

    def close(self) -> None:
        """Stop every loader's workers. Passes run to the end of their loader (a trailing
        single image is read and dropped, ``ordered`` reads a subset): a loader iterator left
        half-way would otherwise stop its workers whenever the garbage collector gets to it."""
        if self._streams is None:
            return
        from .loaders import shutdown

        for loader in self._loaders.values():
            shutdown(loader)
        self._loaders.clear()

    def __enter__(self) -> "Batches":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def first(self, split: str, n: int) -> torch.Tensor:
        """The first ``n`` images of ``split`` (in order, normalised) on the CPU."""
        parts = [x for x, _ in self.ordered(split, batch_size=min(max(n, 1), 256), limit=n,
                                            device="cpu")]
        return torch.cat(parts) if parts else torch.empty(0)

    def _tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split not in self._tensors_by_split:
            raise ValueError(f"split must be one of {self.splits}, not {split!r}")
        return self._tensors_by_split[split]

    def _stream(self, split: str) -> torch.utils.data.Dataset:
        assert self._streams is not None
        if split not in self._streams:
            raise ValueError(f"split must be one of {self.splits}, not {split!r}")
        return self._streams[split]

    def _loader(self, split: str, batch_size: int, shuffle: bool,
                limit: int | None = None, spread: bool = False) -> torch.utils.data.DataLoader:
        from .loaders import make_loader

        key = (split, batch_size, shuffle, limit, spread)
        if key not in self._loaders:
            ds = self._stream(split)
            if not shuffle and hasattr(ds, "eval_view"):
                ds = ds.eval_view()
            if limit is not None and limit < len(ds):
                picked = spread_indices(len(ds), limit) if spread else range(limit)
                ds = torch.utils.data.Subset(ds, picked)
            offset = self.splits.index(split)
            sampler = None
            if shuffle and self.world_size > 1:
                from .loaders import EpochShuffle

                sampler = EpochShuffle(ds, self._seed * 8 + offset, rank=self.rank,
                                       world_size=self.world_size, batch_size=batch_size)
            self._loaders[key] = make_loader(ds, batch_size=batch_size, shuffle=shuffle,
                                             seed=self._seed * 8 + offset,
                                             workers=self._workers, device=self.device,
                                             sampler=sampler)
        return self._loaders[key]


class Cycle:
    """Passes of one split, endlessly (``Batches.cycle``), resumable: ``state()`` is where the
    current pass started (the generator's state then, the streamed pass number) and how many of
    its batches were taken; ``load_state`` starts that pass again and skips as many."""

    def __init__(self, data: Batches, split: str, batch_size: int, gen: torch.Generator):
        self.data, self.split, self.batch_size, self.gen = data, split, batch_size, gen
        self._it: Iterator[Batch] | None = None
        self._start: dict | None = None
        self._taken = 0

    def __iter__(self) -> "Cycle":
        return self

    def __next__(self) -> Batch:
        for _ in range(2):  # a fresh pass after an exhausted one; an empty split stops
            if self._it is None:
                self._start = {"gen": self.gen.get_state(),
                               "pass": self.data.state().get(self.split, 0)}
                self._it, self._taken = self.data.epoch(self.split, self.batch_size, self.gen), 0
            try:
                batch = next(self._it)
            except StopIteration:
                self._it = None
                continue
            self._taken += 1
            return batch
        raise StopIteration

    def state(self) -> dict:
        if self._it is None:
            return {"gen": self.gen.get_state(), "pass": self.data.state().get(self.split, 0),
                    "taken": 0}
        assert self._start is not None
        return {**self._start, "taken": self._taken}

    def load_state(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
        self.data.load_state({self.split: state["pass"]})
        self._it, self._taken = None, 0
        for _ in range(int(state["taken"])):
            next(self)


class SearchData(Batches):
    """A search's splits: ``weights`` (weight steps), ``arch`` (architecture steps), ``val``
    (held out from both, for reporting). Built from six tensors, or ``SearchData.streamed``
    with datasets under those three names."""

    def __init__(self, x_weights: torch.Tensor, y_weights: torch.Tensor, x_arch: torch.Tensor,
                 y_arch: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor, *,
                 device: torch.device | str = "cpu"):
        super().__init__({"weights": (x_weights, y_weights), "arch": (x_arch, y_arch),
                          "val": (x_val, y_val)}, device=device)

    # the tensors of an in-memory search (tests read them)
    @property
    def x_weights(self) -> torch.Tensor:
        return self._tensors("weights")[0]

    @property
    def y_weights(self) -> torch.Tensor:
        return self._tensors("weights")[1]

    @property
    def x_arch(self) -> torch.Tensor:
        return self._tensors("arch")[0]

    @property
    def y_arch(self) -> torch.Tensor:
        return self._tensors("arch")[1]

    @property
    def x_val(self) -> torch.Tensor:
        return self._tensors("val")[0]

    @property
    def y_val(self) -> torch.Tensor:
        return self._tensors("val")[1]


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
