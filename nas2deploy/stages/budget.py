"""Budget: the largest and the smallest subnet measured on the target itself (or, for a target
this machine cannot run, predicted by the table measured on the device), the latency model
anchored on them, and the budget in ms."""

from __future__ import annotations

import time
from typing import Any, Callable

from ..counting import count_layers, count_macs
from ..errors import UsageError
from ..latency.make import make_latency_model
from ..materialize import materialize
from ..records import Budget
from ..distributed import barrier
from ..runtime import measure_model
from ..rundir import spec_key
from .state import MeasuredSide, RunState


def measure_budget(run: RunState, side_factory: Callable[..., Any]) -> Budget:
    """Sets ``run.example``, ``run.side`` (timed beside the largest subnet, made by
    ``side_factory``) and ``run.lat_model``; returns the budget."""
    cfg, target, method, supernet, log = run.cfg, run.target, run.method, run.supernet, run.log
    t = time.perf_counter()
    largest = materialize(run.space.largest())
    smallest = run.scaled(materialize(run.space.smallest()), cfg.min_width)
    run.example = example = largest.example_input(1)
    anchors = None
    if run.remote is None:
        log(f"measuring the largest and smallest subnets on {target}")
        large_ms = run.measured("alone", spec_key(largest.spec()),
                                lambda: measure_model(largest, target, run.shape).p50_ms)
        # every later measurement is timed beside the largest and reported at its speed now
        # (by rank 0: the others receive what it measured)
        run.side = side = MeasuredSide(run, side_factory(largest, target, run.shape, large_ms)
                                       if run.world.leader else None)
        small_ms = side.measure(smallest).p50_ms
        # the smallest at full width too: with the same layers as the smallest, it separates the
        # cost per MAC from the cost per layer in the FLOPs proxy
        small_full = materialize(run.space.smallest())
        anchors = [(count_macs(n, example), count_layers(n), ms) for n, ms in (
            (largest, large_ms), (smallest, small_ms), (small_full, side.measure(small_full).p50_ms))]
        how = "measured p50"
    else:
        log(f"{target} cannot be timed here ({run.remote.split(';')[0]}): steering by the table "
            f"{cfg.lut}; the verdict is `nas2deploy measure` on the device")
    for turn in ("leader", "followers"):  # a table measured here is cached by rank 0 first
        if (turn == "leader") == run.world.leader:
            run.lat_model = lat_model = make_latency_model(
                cfg.latency_model, method=method, supernet=supernet, target=target,
                input_size=run.ds.input_size, min_width=cfg.min_width, progress=run.progress,
                log=log, anchors=anchors, table_file=cfg.lut)
        barrier(run.world)
    if run.remote is not None:
        large_ms, small_ms = lat_model.predict(largest.spec()), lat_model.predict(smallest.spec())
        how = "p50 predicted by the device's table"
    run.timings["reference_s"] = time.perf_counter() - t
    if cfg.latency_ms is not None:
        budget, budget_source = float(cfg.latency_ms), "--latency-ms"
    else:
        budget = cfg.latency_fraction * large_ms
        budget_source = f"{cfg.latency_fraction:g} x largest subnet's {how} ({large_ms:.4f} ms)"
    if budget < small_ms:
        raise UsageError(
            f"latency budget {budget:.4f} ms is below the smallest subnet this space yields "
            f"({small_ms:.4f} ms, {how}, on {target} at width {cfg.min_width:g}); raise the "
            f"budget or lower --min-width")
    log(f"budget {budget:.4f} ms p50 ({budget_source}); largest {large_ms:.4f} ms, "
        f"smallest {small_ms:.4f} ms")
    return Budget(budget, budget_source, large_ms, small_ms, how, cfg.min_width)
