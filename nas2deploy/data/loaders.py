"""Batches from the streamed datasets: ``make_loader`` (workers, pinned memory, a shuffle fixed by
seed and epoch whatever the workers), the uint8 collate, ``set_epoch``."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler, default_collate, get_worker_info

from ..errors import UsageError


def check_seed(seed: Any) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UsageError(f"seed must be an integer >= 0, not {seed!r}")


class EpochShuffle(Sampler[int]):
    """A shuffle fixed by (seed, epoch), drawn in the main process, so it is the same whatever
    the workers. Each pass uses the current epoch and then moves to the next; ``set_epoch``
    picks one (to resume). It also tells the dataset which epoch to augment for."""

    def __init__(self, dataset: torch.utils.data.Dataset, seed: int, *, rank: int = 0,
                 world_size: int = 1, batch_size: int = 1) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0
        # sharded (data-parallel): this rank's part of each global batch of world_size x
        # batch_size, from the same shuffle on every rank
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.world_size > 1:
            return len(self.dataset) // (self.batch_size * self.world_size) * self.batch_size
        return len(self.dataset)

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, epoch])
                                              .generate_state(1, np.uint64)[0] >> 1))
        perm = torch.randperm(len(self.dataset), generator=g)
        if self.world_size == 1:
            yield from perm.tolist()
            return
        size, lo = self.batch_size * self.world_size, self.batch_size * self.rank
        for b in range(len(perm) // size):
            yield from perm[b * size + lo: b * size + lo + self.batch_size].tolist()


def default_workers() -> int:
    """``NAS2DEPLOY_WORKERS`` if set, else min(4, CPUs - 1), at least 0: one core is left to the
    training loop."""
    env = os.environ.get("NAS2DEPLOY_WORKERS", "").strip()
    if env:
        if not env.isdigit():
            raise UsageError(f"NAS2DEPLOY_WORKERS must be an integer >= 0, not {env!r}")
        return int(env)
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def make_loader(dataset: torch.utils.data.Dataset, *, batch_size: int, shuffle: bool, seed: int,
                workers: int | None = None, device: torch.device | str = "cpu",
                drop_last: bool = False, sampler: Sampler | None = None) -> DataLoader:
    """A DataLoader over ``dataset``: ``workers`` processes (default :func:`default_workers`,
    kept across epochs), memory pinned for CUDA, and batches fixed by ``seed`` whatever the
    workers. ``sampler`` (e.g. a DistributedSampler) replaces the shuffle; call
    :func:`set_epoch` each epoch then."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch size must be a positive integer, not {batch_size!r}")
    check_seed(seed)
    workers = default_workers() if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise UsageError(f"workers must be an integer >= 0, not {workers!r}")
    if sampler is None:
        sampler = (EpochShuffle(dataset, seed) if shuffle
                   else torch.utils.data.SequentialSampler(dataset))
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate,
                      pin_memory=torch.device(device).type == "cuda", drop_last=drop_last,
                      persistent_workers=workers > 0,
                      worker_init_fn=_seed_worker if workers > 0 else None,
                      multiprocessing_context=worker_context() if workers > 0 else None,
                      generator=torch.Generator().manual_seed(int(seed)))


def collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of a batch. uint8 images are copied one by one into the batch tensor
    (in shared memory in a worker, as the default collate does): ``torch.stack`` of uint8 is
    tens of times slower than this on a busy two-core machine."""
    first = batch[0][0]
    if first.dtype != torch.uint8:
        return default_collate(batch)
    out = torch.empty((len(batch), *first.shape), dtype=torch.uint8)
    if get_worker_info() is not None:
        out.share_memory_()  # handed to the main process without a copy
    for i, (x, _) in enumerate(batch):
        out[i].copy_(x)
    return out, torch.stack([torch.as_tensor(y, dtype=torch.int64) for _, y in batch])


def shutdown(loader: DataLoader) -> None:
    """Stop ``loader``'s worker processes now. Left to the garbage collector, a persistent
    iterator shuts its workers down at whatever point a collection happens to run, which in the
    test suite, with OpenVINO and onnxruntime loaded, crashed the process."""
    it = getattr(loader, "_iterator", None)
    if it is not None and hasattr(it, "_shutdown_workers"):
        it._shutdown_workers()
    loader._iterator = None


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Put ``loader``'s sampler (if it has epochs) and dataset on ``epoch``; call before
    iterating it."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)


def worker_context() -> str:
    """How workers start: from a clean server process, not by forking this one. By the time a
    run loads data, OpenVINO and onnxruntime have started thread pools here; a fork copies
    their state without their threads, and in the test suite that ended in a crash of the
    parent once such workers were collected."""
    return "forkserver"


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker with base_seed + id; give numpy and random the same, for code
    # (a user's transform) that draws from their global generators
    s = torch.initial_seed() % 2 ** 32
    np.random.seed(s)
    random.seed(s)
