"""Search: the method searches its supernet (with a ``measure`` callback where the target can be
timed here) and decides an architecture."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from ..architecture import Architecture
from ..counting import count_macs
from ..materialize import materialize
from ..device import Compute, on
from ..distributed import broadcast_, check_same
from ..rundir import spec_key
from ..errors import UsageError
from ..method import Decision, SearchContext
from ..netspec import GraphNet
from ..records import Budget
from .size import Aim
from .state import RunState


@dataclass
class SearchResult:
    """The method's decision, its network (with inherited weights where the run retrains from
    them), and what the search measured of it (None if it did not)."""

    decision: Decision
    base: GraphNet
    seen_ms: float | None
    ctx: SearchContext
    epochs: int


def search(run: RunState, budget: Budget) -> SearchResult:
    cfg, method, lat_model, log = run.cfg, run.method, run.lat_model, run.log
    epochs = cfg.search_epochs or method.default_search_epochs
    compute = run.compute
    if compute.device.type != "cpu" and not method.runs_on_gpu:
        log(f"{method.name} has not declared GPU support (SearchMethod.runs_on_gpu): searching "
            f"on the CPU, retraining on {compute.device}")
        compute = Compute(torch.device("cpu"), "off")
    if run.world.backend == "nccl" and compute.device.type == "cpu":
        raise UsageError(f"{method.name} searches on the CPU only (it does not declare "
                         f"SearchMethod.runs_on_gpu), which NCCL cannot serve; run it with "
                         f"--device cpu (gloo)")
    data = run.ds.search_data(cfg.seed, device=compute.device, workers=cfg.workers)
    if run.world.distributed:
        data.shard(run.world.rank, run.world.size)
    ctx = SearchContext(data=data, epochs=epochs, seed=cfg.seed,
                        budget_ms=budget.budget_ms, latency_model=lat_model,
                        progress=run.progress, log=log, channel_multiple=run.multiple,
                        aim=Aim.AIM, resize_band=Aim.RESIZE_BAND, compute=compute,
                        world=run.world,
                        checkpoints=run.loop("search", spec_key(run.space.description)))
    if run.remote is None:
        side, example = run.side, run.example

        def measure_spec(spec: dict[str, Any], weights: dict[str, torch.Tensor] | None = None) -> float:
            net = materialize(Architecture(method=method.name, network=spec), weights)
            rep = side.measure(net)  # journalled, shared with every rank
            ctx.measurements.append({"spec": net.spec(), "predicted_ms": lat_model.predict(spec),
                                     "measured_p50_ms": rep.p50_ms, "raw_p50_ms": rep.raw_p50_ms,
                                     "ratio_to_largest": rep.ratio,
                                     "macs": count_macs(net, example)})
            if hasattr(lat_model, "observe"):  # the FLOPs proxy refits on every measured net
                lat_model.observe(spec, rep.p50_ms)
            return rep.p50_ms

        ctx.measure = measure_spec

    def restored(measurements: list[dict[str, Any]]) -> None:
        """The search resumes past these: the journal moves past them too, and a latency model
        that learns from measurements learns them again, in order."""
        for m in measurements:
            if run.rundir is not None and run.world.leader:
                run.rundir.skip("side_by_side", spec_key(m["spec"]))
            if hasattr(lat_model, "observe"):
                lat_model.observe(m["spec"], m["measured_p50_ms"])

    ctx.on_restore = restored
    log(f"searching with {method.name} for {epochs} epochs on {data.device}")
    t = time.perf_counter()
    with on(run.supernet, compute), data:  # the search's loaders stop with it
        broadcast_(run.supernet.state_dict().values(), run.world)  # one start for every rank
        searched = method.search(run.supernet, ctx)
        # BN statistics were gathered on each rank's shard: rank 0's go on
        broadcast_(run.supernet.buffers(), run.world)
    run.timings["search_s"] = time.perf_counter() - t
    # the weight split's images seen per second (a method's other passes ride along), over the
    # epochs this run searched (a resumed one restored the others)
    run.throughput["search_images_per_s"] = ((epochs - ctx.resumed_after) * data.size("weights")
                                             / max(run.timings["search_s"], 1e-9))
    decision = method.decide(run.supernet, searched)
    check_same(run.world, decision.arch.to_dict(), "the decided architecture")
    base = run.materialize_decided(decision)
    base_spec = base.spec()
    seen = next((m["measured_p50_ms"] for m in reversed(ctx.measurements)
                 if m["spec"] == base_spec), None)
    return SearchResult(decision, base, seen, ctx, epochs)
