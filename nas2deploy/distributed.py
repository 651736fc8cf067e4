"""Data parallelism under ``torchrun``: which rank this process is, and the few collectives the
search and the retrain need.

Started by ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR`` set), a run
joins a process group (NCCL on CUDA devices, gloo on CPUs) and:

* shards every training pass: each rank takes its slice of each global batch (the per-rank batch
  is ``--batch-size``, the global batch ``world_size`` times it);
* averages gradients across ranks before every optimizer step: the retrain through
  ``DistributedDataParallel``; a search through ``average_``, because methods take their
  gradients with ``torch.autograd.grad`` on one parameter group at a time (weights, then
  architecture parameters), which DDP's backward hooks never see;
* draws sampled paths and operations from generators seeded alike on every rank, so every rank
  samples the same subnetwork at each step;
* lets rank 0 alone measure latency, export and write the bundle; what it measures is broadcast
  (``share``), so every rank steers by the same numbers.

Messages between ranks are JSON (no pickles): ``share`` sends UTF-8 bytes as a uint8 tensor.
Outside torchrun everything here is a no-op for a world of one.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, TypeVar

import torch
import torch.distributed as dist

from .errors import UsageError

T = TypeVar("T")

# A follower waits for rank 0 while it measures, exports and re-aims: minutes on a CPU target.
TIMEOUT = datetime.timedelta(hours=2)


@dataclass(frozen=True)
class World:
    """This process's place in the run: rank ``rank`` of ``size``."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def leader(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def describe(self, per_rank_batch: int) -> dict[str, Any]:
        return {"backend": self.backend, "world_size": self.size,
                "per_rank_batch": per_rank_batch, "global_batch": per_rank_batch * self.size}


SINGLE = World()


def from_env() -> World:
    """The world torchrun describes in the environment (a world of one without it)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return SINGLE
    try:
        rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise UsageError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets "
                         "them)") from None
    if not 0 <= rank < size:
        raise UsageError(f"RANK {rank} is outside WORLD_SIZE {size}")
    return World(rank, size, local)


def start(world: World, device: torch.device) -> World:
    """Join the process group: NCCL when training on CUDA, gloo otherwise. Each rank trains on
    its own GPU (``cuda:LOCAL_RANK``; ``device`` is then replaced by it)."""
    if not world.distributed:
        return world
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, store=_store(world), rank=world.rank,
                                world_size=world.size, timeout=TIMEOUT)
    return World(world.rank, world.size, world.local_rank, backend)


def _store(world: World) -> dist.Store:
    """The rendezvous store torchrun names (MASTER_ADDR, MASTER_PORT), under a prefix of its
    own per worker group: a group torchrun restarts (``--max-restarts``) would otherwise read
    the dead group's addresses from the same store and fail to connect."""
    try:
        addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    except (KeyError, ValueError):
        raise UsageError("MASTER_ADDR and MASTER_PORT must be set (torchrun sets them)") from None
    hosted = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # torchrun's agent hosts it
    store = dist.TCPStore(addr, port, world.size, is_master=not hosted and world.leader,
                          timeout=TIMEOUT, wait_for_workers=False)
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"nas2deploy/group-{restart}", store)


def stop(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def rank_device(world: World, device: torch.device) -> torch.device:
    """The device this rank trains on: one GPU per rank on a node."""
    if world.distributed and device.type == "cuda":
        return torch.device("cuda", world.local_rank)
    return device


def average_(tensors: Iterable[torch.Tensor | None], world: World) -> None:
    """Average ``tensors`` across ranks in place (one all-reduce over them all); None entries
    (parameters a step did not reach) are skipped alike on every rank."""
    if not world.distributed:
        return
    ts = [t for t in tensors if t is not None]
    if not ts:
        return
    flat = torch.cat([t.detach().reshape(-1).float() for t in ts])
    dist.all_reduce(flat)
    flat /= world.size
    i = 0
    for t in ts:
        n = t.numel()
        t.copy_(flat[i:i + n].view_as(t).to(t.dtype))
        i += n


def broadcast_(tensors: Iterable[torch.Tensor], world: World) -> None:
    """Rank 0's values of ``tensors`` on every rank (parameters and buffers at a search's start,
    BN statistics before an evaluation)."""
    if not world.distributed:
        return
    for t in tensors:
        dist.broadcast(t.data, src=0)


def share(world: World, make: Callable[[], T] | None, *, device: torch.device | None = None) -> T:
    """Rank 0 calls ``make()`` and every rank gets its JSON value; other ranks pass None (their
    ``make`` is never called). The measurements, records and commands a follower needs."""
    if not world.distributed:
        assert make is not None
        return make()
    dev = device or (torch.device("cuda", torch.cuda.current_device())
                     if world.backend == "nccl" else torch.device("cpu"))
    if world.leader:
        assert make is not None
        value = make()
        payload = json.dumps(value).encode()
        size = torch.tensor([len(payload)], dtype=torch.int64, device=dev)
    else:
        size = torch.zeros(1, dtype=torch.int64, device=dev)
    dist.broadcast(size, src=0)
    if world.leader:
        buf = torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(dev)
    else:
        buf = torch.empty(int(size), dtype=torch.uint8, device=dev)
    dist.broadcast(buf, src=0)
    if world.leader:
        return value
    return json.loads(buf.cpu().numpy().tobytes().decode())


def check_same(world: World, value: Any, what: str) -> None:
    """Fail loudly (on every rank) unless every rank holds the same JSON ``value``."""
    if not world.distributed:
        return
    digest = hashlib.sha256(json.dumps(value, sort_keys=True).encode()).digest()
    mine = torch.tensor(list(digest), dtype=torch.int64)
    if world.backend == "nccl":
        mine = mine.cuda()
    gathered = [torch.zeros_like(mine) for _ in range(world.size)]
    dist.all_gather(gathered, mine)
    differ = [r for r, g in enumerate(gathered) if not torch.equal(g, gathered[0])]
    if differ:
        raise RuntimeError(f"ranks disagree on {what}: rank(s) {differ} differ from rank 0 "
                           f"(a non-deterministic step, or ranks started from different "
                           f"inputs); refusing to go on")


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()
