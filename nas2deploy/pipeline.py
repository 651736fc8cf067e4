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

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .config import RunConfig
from .data import open_dataset
from .env import null_progress
from .errors import UsageError  # noqa: F401  (re-exported: callers catch pipeline.UsageError)
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
from .target import channel_multiple

__all__ = ["Plan", "Result", "plan", "search_and_export"]


@dataclass
class Result:
    out: Path
    manifest: dict[str, Any]

    @property
    def exit_code(self) -> int:
        # None: the target cannot be timed here; `nas2deploy measure` on the device decides
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
    progress = progress or null_progress
    t_all = time.perf_counter()
    torch.manual_seed(cfg.seed)

    log(f"opening dataset {cfg.dataset} (training on {p.compute.device}, AMP {p.compute.amp})")
    p.compute.prepare()
    t = time.perf_counter()
    ds = open_dataset(cfg.dataset, input_size=cfg.input_size, seed=cfg.seed,
                      augment=cfg.augment, cache=cfg.cache, progress=progress)
    data_s = time.perf_counter() - t
    task = TaskSpec(ds.channels, ds.input_size, ds.num_classes)
    supernet = p.method.build(task)
    run = RunState(p, ds, task, (p.target.batch, ds.channels, ds.input_size, ds.input_size),
                   channel_multiple(p.target), supernet, p.method.space(supernet), log, progress,
                   timings={"data_s": data_s}, verify=_verify,
                   data=ds.batches(device=p.compute.device, workers=cfg.workers))

    # the largest and smallest subnet measured (or, for a device target, predicted by its
    # table), the latency model anchored on them, the budget
    budget = measure_budget(run, side_factory=SideBySide)
    aim = Aim(budget.budget_ms, run.lat_model, min_width=cfg.min_width, round_to=run.multiple)
    with run.data:  # the loaders' workers stop with the run
        decision = search(run, budget)
        # closed loop on the measured latency, before retraining
        sizing = size(run, budget, aim, decision)
        history_retrain: list[dict[str, Any]] = []
        with staged_bundle(p.out, cfg.overwrite, p.lock) as tmp:
            # retrain, export, measure the artifact; re-aim with the same Aim while attempts
            # remain
            kept = final_attempts(run, budget, aim, sizing, tmp, history_retrain)
            manifest = write_bundle(run, budget, aim, decision, sizing, kept, tmp,
                                    history_retrain, t_all)
    log(f"bundle written to {p.out}")
    return Result(p.out, manifest)
