"""RunConfig -> Plan: every input checked before any work, so bad input costs nothing and writes
nothing."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import registry
from ..outdir import OutLock, claim_out
from ..config import RunConfig
from ..data import check_cache_dir, check_dataset
from ..device import Compute
from ..distributed import SINGLE, World, from_env, rank_device, share, start, stop
from ..device import resolve as resolve_compute
from ..errors import UsageError
from ..latency.collect import check_precision
from ..method import SearchMethod
from ..runtime import check_target_device, exporter_for_runtime, resolve_chain
from ..target import Target


@dataclass
class Plan:
    """Everything resolved from the config before any work."""

    cfg: RunConfig
    target: Target
    method: SearchMethod
    exports: list[str]
    out: Path
    remote: str | None = None  # why the target's artifact cannot be timed on this machine
    lock: OutLock | None = None  # --out, held from the plan to the commit (by rank 0)
    compute: Compute = field(default_factory=lambda: Compute(torch.device("cpu"), "off"))
    world: World = SINGLE

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
        stop(self.world)


def plan(cfg: RunConfig) -> Plan:
    cfg.validate()
    world = from_env()
    compute = resolve_compute(cfg.device, cfg.amp)  # where search and retrain run
    compute = Compute(rank_device(world, compute.device), compute.amp)
    if cfg.resume is not None and not Path(cfg.resume, "run.json").is_file():
        raise UsageError(f"--resume {cfg.resume}: not a nas2deploy run directory (no run.json)")
    if cfg.cache is not None:
        check_cache_dir(cfg.cache)
    target = Target.parse(cfg.target, batch=cfg.batch, threads=cfg.threads)
    check_target_device(target)
    method = registry.methods.get(cfg.method)(cfg.method_options)
    runtime_exporter = exporter_for_runtime(target.runtime)
    wanted = list(dict.fromkeys(cfg.export + ([runtime_exporter] if runtime_exporter else [])))
    exports = resolve_chain(wanted)
    remote = None
    if runtime_exporter is not None:
        remote = registry.exporters.get(runtime_exporter).not_runnable_reason()
    if target.precision == "int8" and remote is not None:
        raise UsageError(f"target {target} cannot be searched on this machine "
                         f"({remote.split(';')[0]}): an int8 search measures int8 candidates on "
                         f"the target, and latency tables are fp32/fp16 only; run the search on "
                         f"the device")
    if cfg.latency_model != "flops":
        check_precision(target)
    if remote is not None:
        if cfg.lut is None or cfg.latency_model != "lut":
            raise UsageError(
                f"target {target} cannot be timed on this machine ({remote.split(';')[0]}); "
                f"search against a latency table measured on the device: run `nas2deploy lut "
                f"build --space {cfg.method} --target {target} --out FILE` there, then pass "
                f"--lut FILE here")
        if cfg.max_rounds < 1:
            raise UsageError("--max-rounds must be >= 1")
    # streamed: uint8 arrays or file paths (digits: in memory, the search halves a copy)
    check_dataset(cfg.dataset, input_size=cfg.input_size, batch=cfg.batch, train_copies=2,
                  streamed=True)
    out = Path(cfg.out)
    world = start(world, compute.device)
    if compute.device.type == "cuda":
        torch.cuda.set_device(compute.device)
    # last: whatever fails after the lock is taken must release it. Rank 0 alone writes --out;
    # what it finds wrong there stops every rank.
    lock: list[OutLock] = []

    def claim() -> str | None:
        try:
            lock.append(claim_out(out, cfg.overwrite))
        except UsageError as exc:
            return str(exc)
        return None

    try:
        refused = share(world, claim if world.leader else None)
    except BaseException:
        stop(world)
        raise
    if refused:
        stop(world)
        raise UsageError(refused)
    return Plan(cfg, target, method, exports, out, remote, lock[0] if lock else None, compute,
                world)
