"""What the stages of one run share that is not a record: the plan, the dataset, the supernet, the
latency model and the side-by-side timer. Records (``nas2deploy.records``) are what stages hand on;
this is the room they work in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..config import RunConfig
from ..data import Splits
from ..data.searchdata import Batches
from ..device import Compute
from ..distributed import SINGLE, World, share
from ..materialize import materialize, scale_width
from ..method import Decision, SearchMethod, TaskSpec
from ..netspec import GraphNet
from ..rundir import RunDir
from ..space import SearchSpace
from ..target import Target
from .plan import Plan


@dataclass
class RunState:
    plan: Plan
    ds: Splits
    task: TaskSpec
    shape: tuple[int, int, int, int]
    multiple: int  # channel multiple the target runs best
    supernet: Any
    space: SearchSpace
    log: Callable[[str], None]
    progress: Callable[..., Any]
    timings: dict[str, float] = field(default_factory=dict)
    throughput: dict[str, float] = field(default_factory=dict)  # images/s per stage
    example: torch.Tensor | None = None  # a one-sample input, for counting MACs
    side: Any = None  # SideBySide with the largest subnet; None where the target is not timed here
    lat_model: Any = None
    # verify(subnet, exports, xctx, ds, cfg) -> {"parity", "precision"}: the export stage's check
    # (stages.export.verify unless the caller gives another)
    verify: Callable[..., dict[str, Any]] | None = None
    data: Batches | None = None  # train/val/test batched on the run's device (set by the pipeline)
    world: World = SINGLE  # this process's rank in a data-parallel run
    rundir: RunDir | None = None  # checkpoints and the measurement journal

    def measured(self, kind: str, key: str, take: Callable[[], Any]) -> Any:
        """A measurement's JSON value: rank 0 replays it from the journal of a resumed run or
        takes it (``take()``) and journals it; every rank gets the same value."""
        def make() -> Any:
            return self.rundir.measured(kind, key, take) if self.rundir is not None else take()
        return share(self.world, make if self.world.leader else None,
                     device=self.compute.device if self.world.backend == "nccl" else None)

    def record(self, stage: str, value: Any) -> None:
        """Keep a finished stage's record in the run directory (rank 0)."""
        if self.rundir is not None and self.world.leader:
            said = self.rundir.record(stage, value)
            if said:
                self.log(said)

    def loop(self, name: str, key: str = ""):
        """Per-epoch checkpoints of the loop ``name`` (None without a run directory)."""
        return (self.rundir.loop(name, self.world.rank, key, self.world)
                if self.rundir is not None else None)

    @property
    def compute(self) -> Compute:
        return self.plan.compute

    @property
    def cfg(self) -> RunConfig:
        return self.plan.cfg

    @property
    def target(self) -> Target:
        return self.plan.target

    @property
    def method(self) -> SearchMethod:
        return self.plan.method

    @property
    def remote(self) -> str | None:
        return self.plan.remote

    def scaled(self, net: GraphNet, m: float) -> GraphNet:
        return scale_width(net, m, round_to=self.multiple)

    def materialize_decided(self, d: Decision) -> GraphNet:
        """``d`` as a network, with its inherited weights where the run retrains from them."""
        return materialize(d.arch, d.weights if self.cfg.retrain_from == "inherit" else {})


class MeasuredSide:
    """``SideBySide`` as the stages use it, through the run's journal: ``measure`` is replayed
    on a resumed run and shared with every rank. Ranks other than 0 hold no timer (``side``
    None) and only ever receive."""

    def __init__(self, run: RunState, side: Any):
        self.run, self.side = run, side

    def measure(self, model: GraphNet):
        from dataclasses import asdict

        from ..runtime import SideTiming
        from ..rundir import spec_key

        value = self.run.measured("side_by_side", spec_key(model.spec()),
                                  lambda: asdict(self.side.measure(model)))
        return SideTiming(**value)

    def time(self, load: Any, seconds: float | None = None):
        return self.side.time(load, seconds)

    def protocol_line(self, seconds: float | None = None) -> str:
        return self.side.protocol_line(seconds) if self.side is not None else ""

    def close(self) -> None:
        if self.side is not None:
            self.side.close()
