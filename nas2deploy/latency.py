"""Latency measurement with a written protocol, and the cheap estimates used during search.

Protocol (recorded in every report): the runner is called ``warmup`` times on one fixed input of
the deployed shape and those calls are discarded; then it is called ``runs`` times, each call timed
alone with ``time.perf_counter`` around the runtime's synchronous inference (inputs already in
memory, outputs returned to the host); p50/p90 are the median and 90th percentile of those calls.
Intra-op threads and batch are the target's. At least ``runs`` calls are timed, and timing goes on
until the calls have taken ``min_seconds`` in all (at most ``max_runs`` calls): a sub-millisecond
network timed for 300 calls is timed over ~50 ms, and one stray burst of another process on a
shared CPU then moves its median by 10%. If the timed calls take longer than ``max_seconds``,
timing stops early (never with fewer than ``min_runs`` calls) and the report says how many ran. The estimate is never the verdict: the measurement on the target runtime is.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np


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

    def to_dict(self, samples: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not samples:
            d.pop("samples_ms")
        return d


def measure(runner: Callable[[np.ndarray], Any], x: np.ndarray, *, batch: int = 1, threads: int = 1,
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


class LatencyModel(ABC):
    """A cheap latency estimate of a network spec, used to steer search and pick widths."""

    name: str = "?"

    @abstractmethod
    def predict(self, spec: dict[str, Any]) -> float:
        """Predicted latency in ms of the network described by ``spec``."""

    def op_cost(self, sig) -> float:
        """ms attributed to one op (an ``OpSignature``) inside a network, without the per-network
        constant (``base_ms``). Gradient methods build their differentiable expectations from
        these: expected latency = base_ms + Σ P(op)·op_cost(op)."""
        raise NotImplementedError(f"latency model {self.name!r} has no per-op costs")

    @property
    def base_ms(self) -> float:
        """Per-network constant (call overhead, stem-independent costs) in ms."""
        return 0.0

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


class FlopsProxy(LatencyModel):
    """Latency ≈ a + b·MACs, fitted to networks measured on the target (at least two).

    The intercept matters: small networks on CPU runtimes are dominated by per-call and per-op
    overhead, so a pure MAC ratio under-predicts them badly.
    """

    name = "flops"

    def __init__(self, anchors: list[tuple[int, float]]):
        if len(anchors) < 2:
            raise ValueError("FlopsProxy needs at least two measured anchors")
        macs = np.array([a for a, _ in anchors], dtype=float)
        ms = np.array([m for _, m in anchors], dtype=float)
        if np.ptp(macs) == 0:
            self.a, self.b = 0.0, float(ms.mean() / max(macs[0], 1.0))
        else:
            b, a = np.polyfit(macs, ms, 1)
            self.a, self.b = float(max(a, 0.0)), float(max(b, 0.0))
        self.anchors = [(int(a), float(m)) for a, m in anchors]
        self.scale = 1.0  # closed-loop correction: measured / predicted of the last measured net
        self._op_macs: dict[str, int] = {}

    def macs(self, spec: dict[str, Any]) -> int:
        from .counting import count_macs
        from .netspec import build_network

        net = build_network(spec)
        return count_macs(net, net.example_input(1))

    def predict(self, spec: dict[str, Any]) -> float:
        return self.scale * (self.a + self.b * self.macs(spec))

    def op_cost(self, sig) -> float:
        from .netspec import single_op_spec

        key = sig.key()
        if key not in self._op_macs:
            self._op_macs[key] = self.macs(single_op_spec(sig))
        return self.scale * self.b * self._op_macs[key]

    @property
    def base_ms(self) -> float:
        return self.scale * self.a

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "intercept_ms": self.a, "ms_per_mmac": self.b * 1e6,
                "anchors": [{"macs": a, "ms": m} for a, m in self.anchors], "scale": self.scale}
