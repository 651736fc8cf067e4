"""Timing a runner: the written protocols and the two ways of timing (one runner alone, or many
interleaved). Imports nothing from nas2deploy, so every other module can time with it.

``Protocol`` (recorded in every report): the runner is called ``warmup`` times on one fixed input
of the deployed shape and those calls are discarded; then it is called ``runs`` times, each call
timed alone with ``time.perf_counter`` around the runtime's synchronous inference (inputs already
in memory, outputs returned to the host); p50/p90 are the median and 90th percentile of those
calls. Intra-op threads and batch are the target's. At least ``runs`` calls are timed, and timing
goes on until the calls have taken ``min_seconds`` in all (at most ``max_runs`` calls): a
sub-millisecond network timed for 300 calls is timed over ~50 ms, and one stray burst of another
process on a shared CPU then moves its median by 10%. If the timed calls take longer than
``max_seconds``, timing stops early (never with fewer than ``min_runs`` calls) and the report
says how many ran. An estimate is never the verdict: the measurement on the target runtime is.

``TableProtocol`` (latency tables, calibration, side-by-side timing): in each of ``rounds``
rounds every runner is called ``calls`` times, each call timed alone with ``perf_counter``; a
runner's p50 is the median over all its calls. Interleaving spreads slow phases of a shared
machine over all runners instead of hitting a few.
"""

from __future__ import annotations

import gc
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np

Run = Callable[[np.ndarray], Any]  # a loaded model: input -> output
Progress = Callable[..., Any]


@dataclass(frozen=True)
class Protocol:
    warmup: int = 30
    runs: int = 300
    min_runs: int = 30
    max_seconds: float = 20.0
    min_seconds: float = 1.0
    max_runs: int = 20000

    def describe(self, batch: int, threads: int) -> str:
        return (f"{self.warmup} warm-up calls discarded, then at least {self.runs} timed "
                f"synchronous calls and at least {self.min_seconds:g} s of them (at most "
                f"{self.max_runs}; perf_counter each; stop after {self.max_seconds:g} s, at least "
                f"{self.min_runs}); batch {batch}, {threads} intra-op thread(s); p50/p90 over calls")


@dataclass
class LatencyReport:
    p50_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    runs: int
    protocol: str
    samples_ms: list[float] = field(default_factory=list, repr=False)
    instance_p50_ms: list[float] = field(default_factory=list)  # per fresh load, when several

    def to_dict(self, samples: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not samples:
            d.pop("samples_ms")
        if not d["instance_p50_ms"]:
            d.pop("instance_p50_ms")
        return d


def measure(runner: Run, x: np.ndarray, *, batch: int = 1, threads: int = 1,
            protocol: Protocol = Protocol()) -> LatencyReport:
    for _ in range(protocol.warmup):
        runner(x)
    times = []
    start = time.perf_counter()
    long_enough = start + protocol.min_seconds
    budget_end = start + protocol.max_seconds
    for i in range(max(protocol.runs, protocol.max_runs)):
        t0 = time.perf_counter()
        runner(x)
        t1 = time.perf_counter()
        times.append((t1 - t0) * 1e3)
        if i + 1 >= protocol.runs and t1 >= long_enough:
            break
        if t1 > budget_end and i + 1 >= protocol.min_runs:
            break
    arr = np.asarray(times)
    return LatencyReport(p50_ms=float(np.percentile(arr, 50)), p90_ms=float(np.percentile(arr, 90)),
                         mean_ms=float(arr.mean()), min_ms=float(arr.min()), runs=len(times),
                         protocol=protocol.describe(batch, threads), samples_ms=times)


# Fresh loads of one network that a latency is the median over. On the 2-vCPU development VM a
# network's p50 differed by up to 12% (max − min over median, 5 loads, OpenVINO; 6% on
# onnxruntime) from one compile or session of the same files to the next, while one load timed
# again moved by 1%: which load a measurement gets is most of its error, not how long it times.
INSTANCES = 5


def measure_instances(load: Callable[[], Run], x: np.ndarray, *,
                      batch: int = 1, threads: int = 1, protocol: Protocol = Protocol(),
                      instances: int = INSTANCES) -> LatencyReport:
    """``measure`` over ``instances`` fresh loads (``load()`` compiles or opens the artifact
    anew), the protocol's calls and seconds split between them; p50/p90 are the medians of the
    loads' p50/p90 (``instance_p50_ms`` keeps each)."""
    n = max(int(instances), 1)
    share = replace(protocol, runs=max(protocol.runs // n, protocol.min_runs),
                    min_seconds=protocol.min_seconds / n, max_seconds=protocol.max_seconds / n)
    reps = []
    for _ in range(n):
        run = load()
        reps.append(measure(run, x, batch=batch, threads=threads, protocol=share))
        del run
    times = [t for r in reps for t in r.samples_ms]
    return LatencyReport(
        p50_ms=float(np.median([r.p50_ms for r in reps])),
        p90_ms=float(np.median([r.p90_ms for r in reps])),
        mean_ms=float(np.mean(times)), min_ms=float(np.min(times)), runs=len(times),
        protocol=(f"median over {n} fresh loads of the artifact (compiled or opened anew), each: "
                  + share.describe(batch, threads)),
        samples_ms=times, instance_p50_ms=[r.p50_ms for r in reps])


@dataclass(frozen=True)
class TableProtocol:
    """Interleaved timing: ``warmup`` calls per model, then ``rounds`` rounds in which every model
    is called ``calls`` times, each call timed alone; p50 is over all rounds × calls."""

    warmup: int = 10
    rounds: int = 11
    calls: int = 15

    def describe(self, batch: int, threads: int) -> str:
        return (f"interleaved: {self.warmup} warm-up calls per model discarded, then {self.rounds} "
                f"rounds x {self.calls} calls per model, each call timed alone with perf_counter "
                f"(synchronous, input in memory, output to host); p50 over all calls; batch "
                f"{batch}, {threads} intra-op thread(s)")


@dataclass
class Timing:
    p50_ms: float
    p90_ms: float
    runs: int
    round_spread: float  # (max - min) / median of the per-round medians: how steady it was


def time_interleaved(runners: Sequence[Run], inputs: Sequence[np.ndarray],
                     protocol: TableProtocol = TableProtocol(), *,
                     progress: Progress | None = None, desc: str = "time") -> list[Timing]:
    """Time every runner on its input, interleaved over rounds (see ``TableProtocol``)."""
    n = len(runners)
    per_round: list[list[list[float]]] = [[] for _ in range(n)]
    bar = progress(total=protocol.rounds + 1, desc=desc) if progress is not None else None
    was_gc = gc.isenabled()
    gc.disable()
    try:
        for run, x in zip(runners, inputs):
            for _ in range(protocol.warmup):
                run(x)
        if bar is not None:
            bar.update(1)
        clock = time.perf_counter
        for r in range(protocol.rounds):
            order = range(n) if r % 2 == 0 else range(n - 1, -1, -1)
            for i in order:
                run, x, times = runners[i], inputs[i], []
                for _ in range(protocol.calls):
                    t0 = clock()
                    run(x)
                    times.append((clock() - t0) * 1e3)
                per_round[i].append(times)
            if bar is not None:
                bar.update(1)
    finally:
        if was_gc:
            gc.enable()
        if bar is not None:
            bar.close()
    out = []
    for rounds in per_round:
        flat = np.concatenate([np.asarray(t) for t in rounds])
        meds = np.array([np.median(t) for t in rounds])
        med = float(np.median(flat))
        out.append(Timing(p50_ms=med, p90_ms=float(np.percentile(flat, 90)), runs=int(flat.size),
                          round_spread=float(np.ptp(meds) / med) if med > 0 else 0.0))
    return out
