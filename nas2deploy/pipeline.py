"""search-and-export: supernet → search → Architecture → subnet → retrain → export → measure → bundle.

Every input is checked before any work starts, so bad input costs nothing and writes nothing.
Latency is decided by measurement on the target runtime: the estimate only proposes a width,
each proposal is exported and timed, and the estimate is recalibrated on what was measured
(a bounded number of rounds, every one recorded in the manifest).

Each step is a stage of ``nas2deploy.stages`` handing on a record of ``nas2deploy.records``:

    plan ─▶ Budget ─search─▶ Decision ─size─▶ Candidate ─retrain+export─▶ Attempt ─measure─▶
    Verdict ─▶ bundle
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .config import RunConfig
from .data import open_dataset
from .env import null_progress
from .errors import UsageError  # (re-exported: callers catch pipeline.UsageError)
from .method import TaskSpec
from .outdir import staged_bundle
from .runtime import SideBySide
from .stages.attempts import FINAL_ATTEMPTS, final_attempts  # noqa: F401
from .stages.budget import measure_budget
from .stages.bundle import write_bundle
from .stages.export import verify as _verify
from .stages.plan import Plan, plan
from .stages.search import search
from .stages.size import Aim, size
from .stages.state import RunState
from .stages.verdict import VERDICT_SECONDS  # noqa: F401
from .distributed import barrier, share
from .outdir import scratch_prefix
from .rundir import RunDir, default_for, identity, restarted_by_torchrun
from .target import channel_multiple

__all__ = ["Plan", "Result", "plan", "search_and_export"]


@dataclass
class Result:
    out: Path
    manifest: dict[str, Any]

    @property
    def exit_code(self) -> int:
        # None: the target cannot be timed here; `nas2deploy measure` on the device decides.
        # Under torchrun any non-zero exit is a failed worker (restarted with --max-restarts):
        # a missed budget is then reported, not exited with.
        if self.manifest.get("distributed", {}).get("world_size", 1) > 1:
            return 0
        return 3 if self.manifest["latency"]["within_budget"] is False else 0


def search_and_export(cfg: RunConfig, *, log: Callable[[str], None] = lambda m: None,
                      progress: Callable[..., Any] | None = None) -> Result:
    p = plan(cfg)
    try:
        return _search_and_export(p, cfg, log=log, progress=progress)
    finally:
        p.release()


def _search_and_export(p: Plan, cfg: RunConfig, *, log: Callable[[str], None],
                       progress: Callable[..., Any] | None) -> Result:
    world = p.world
    if not world.leader:  # rank 0 alone reports
        log, progress = (lambda m: None), None
    progress = progress or null_progress
    t_all = time.perf_counter()
    torch.manual_seed(cfg.seed)

    log(f"opening dataset {cfg.dataset} (training on {p.compute.device}, AMP {p.compute.amp}"
        + (f", {world.size} processes, {world.backend}" if world.distributed else "") + ")")
    p.compute.prepare()
    t = time.perf_counter()
    ds = open_dataset(cfg.dataset, input_size=cfg.input_size, seed=cfg.seed,
                      augment=cfg.augment, cache=cfg.cache, progress=progress)
    data_s = time.perf_counter() - t
    task = TaskSpec(ds.channels, ds.input_size, ds.num_classes)
    supernet = p.method.build(task)
    space = p.method.space(supernet)
    data = ds.batches(device=p.compute.device, workers=cfg.workers)
    if world.distributed:
        data.shard(world.rank, world.size)
    rundir = open_run_dir(p, cfg, space, log)
    run = RunState(p, ds, task, (p.target.batch, ds.channels, ds.input_size, ds.input_size),
                   channel_multiple(p.target), supernet, space, log, progress,
                   timings={"data_s": data_s}, verify=_verify, data=data, world=world,
                   rundir=rundir)
    try:
        result = _stages(p, cfg, run, t_all)
    except UsageError:
        # bad input found mid-run (a budget below the smallest subnet): resuming cannot help
        if world.leader and not rundir.resumed:
            rundir.remove()
        raise
    except BaseException:
        if world.leader:
            log(f"the run stopped; its checkpoints are kept in {rundir.path}: continue it with "
                f"the same options and --resume {rundir.path}")
        raise
    barrier(world)
    if world.leader:
        rundir.remove()
    return result


def _stages(p: Plan, cfg: RunConfig, run: RunState, t_all: float) -> Result:
    world, log = p.world, run.log
    # the largest and smallest subnet measured (or, for a device target, predicted by its
    # table), the latency model anchored on them, the budget
    budget = measure_budget(run, side_factory=SideBySide)
    run.record("budget", budget.to_dict())
    aim = Aim(budget.budget_ms, run.lat_model, min_width=cfg.min_width, round_to=run.multiple)
    with run.data:  # the loaders' workers stop with the run
        decision = search(run, budget)
        run.record("search", decision.decision.to_json())
        # closed loop on the measured latency, before retraining
        sizing = size(run, budget, aim, decision)
        history_retrain: list[dict[str, Any]] = []
        if not world.leader:  # retrains with rank 0, which alone exports and writes the bundle
            with tempfile.TemporaryDirectory(prefix=scratch_prefix("rank")) as tmp:
                final_attempts(run, budget, aim, sizing, Path(tmp), history_retrain)
            within = share(world, None)
            return Result(p.out, {"latency": {"within_budget": within}, "rank": world.rank,
                                  "distributed": {"world_size": world.size}})
        with staged_bundle(p.out, cfg.overwrite, p.lock) as tmp:
            # retrain, export, measure the artifact; re-aim with the same Aim while attempts
            # remain
            kept = final_attempts(run, budget, aim, sizing, tmp, history_retrain)
            manifest = write_bundle(run, budget, aim, decision, sizing, kept, tmp,
                                    history_retrain, t_all)
        share(world, lambda: manifest["latency"]["within_budget"])
    log(f"bundle written to {p.out}")
    return Result(p.out, manifest)


def open_run_dir(p: Plan, cfg: RunConfig, space: Any, log: Callable[[str], None]) -> RunDir:
    """The run directory: created by rank 0, or the one ``--resume`` names (or the one torchrun
    restarts this worker group on), checked to be this run's."""
    world = p.world
    path = Path(cfg.resume or cfg.run_dir or default_for(p.out))
    ident = identity(cfg.to_dict(), space.get("fingerprint"), world.size)
    resume = cfg.resume is not None or (restarted_by_torchrun() and (path / "run.json").is_file())

    def make() -> dict[str, Any]:
        try:
            if not resume and cfg.overwrite and (path / "run.json").is_file():
                log(f"--overwrite: discarding the unfinished run in {path}")
                RunDir(path, ident, resumed=False, journal=False).remove()
            rd = RunDir.resume(path, ident) if resume else RunDir.create(path, ident)
        except UsageError as exc:
            return {"refused": str(exc)}
        made.append(rd)
        return {"refused": None, "resumed": rd.resumed}

    made: list[RunDir] = []
    # rank 0 decides (it alone writes); the others follow what it found
    told = share(world, make if world.leader else None)
    if told["refused"]:
        raise UsageError(told["refused"])
    if not world.leader:
        return RunDir(path, ident, resumed=told["resumed"], journal=False)
    rd = made[0]
    if resume:
        log(f"resuming from {path}: {len(rd.pending)} measurement(s) to replay, checkpoints "
            f"continue the search and retrain where they stopped")
    return rd
