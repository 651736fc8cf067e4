"""Latency models: the cheap estimates that steer search and pick widths (the measurement on the
target runtime has the final say), the FLOPs proxy, and the secant through measurements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from ..counting import count_layers, count_macs
from ..netspec import build_network, single_op_spec


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
    """Latency ≈ a + b·MACs + c·layers, fitted to networks measured on the target.

    a is the per-call overhead, b the cost of compute, c a cost per layer (conv or linear, each a
    kernel with its own launch and memory pass on a CPU runtime). Without c, small networks are
    mispredicted by their shape: on OpenVINO the measured/predicted ratio of TF-NAS networks
    under a + b·MACs ranged from 0.62 (one block per stage) to 1.33 (full depth) in one search,
    and an estimate that favours depth over width that much steers the search wrong.

    Anchors are (MACs, ms) or (MACs, layers, ms); the fit is non-negative least squares of the
    relative error. Two anchors fit a + b·MACs exactly (c = 0); c is fitted only from three or
    more anchors whose layer counts differ. ``observe`` adds a measured network and refits, so
    measurements taken during a search sharpen the estimate; ``version`` counts the fits, for
    callers that cache per-op costs.
    """

    name = "flops"

    def __init__(self, anchors: list[tuple]):
        if len(anchors) < 2:
            raise ValueError("FlopsProxy needs at least two measured anchors")
        self.anchors: list[tuple[int, int | None, float]] = [
            (int(a[0]), None if len(a) == 2 else int(a[1]), float(a[-1])) for a in anchors]
        self.observed = 0
        self.version = 0
        self._op_features: dict[str, tuple[int, int]] = {}
        self._fit()

    def _fit(self) -> None:
        rows = np.array([[1.0, m, layers or 0] for m, layers, _ in self.anchors], dtype=float)
        ms = np.array([t for _, _, t in self.anchors], dtype=float)
        use_layers = (all(layers is not None for _, layers, _ in self.anchors)
                      and len(self.anchors) >= 3 and np.ptp(rows[:, 2]) > 0)
        cols = [0, 1, 2] if use_layers else [0, 1]
        w = 1.0 / np.where(ms > 0, ms, 1.0)  # relative error (absolute for a 0 ms anchor)
        coef = _nonneg_lstsq(rows[:, cols] * w[:, None], ms * w)
        if coef[1] <= 0 and not use_layers:  # one MAC count only: all of it is per-MAC cost
            coef = [0.0, float(ms.mean() / max(rows[:, 1].mean(), 1.0))]
        self.a, self.b = float(coef[0]), float(coef[1])
        self.c = float(coef[2]) if use_layers else 0.0
        self.version += 1

    def observe(self, spec: dict[str, Any], ms: float) -> None:
        """A network measured on the target: add it to the anchors and refit."""
        macs, layers = self.features(spec)
        self.anchors.append((macs, layers, float(ms)))
        self.observed += 1
        self._fit()

    def features(self, spec: dict[str, Any]) -> tuple[int, int]:
        """(MACs, layers) of the network ``spec`` at batch 1."""
        net = build_network(spec)
        return count_macs(net, net.example_input(1)), count_layers(net)

    def macs(self, spec: dict[str, Any]) -> int:
        return self.features(spec)[0]

    def predict(self, spec: dict[str, Any]) -> float:
        macs, layers = self.features(spec)
        return self.a + self.b * macs + self.c * layers

    def op_cost(self, sig) -> float:
        key = sig.key()
        if key not in self._op_features:
            self._op_features[key] = self.features(single_op_spec(sig))
        macs, layers = self._op_features[key]
        return self.b * macs + self.c * layers

    @property
    def base_ms(self) -> float:
        return self.a

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "intercept_ms": self.a, "ms_per_mmac": self.b * 1e6,
                "ms_per_layer": self.c, "observed": self.observed,
                "anchors": [{"macs": m, "layers": layers, "ms": t}
                            for m, layers, t in self.anchors]}


def secant(points: list[tuple[float, float]], target_ms: float) -> float | None:
    """The x at which the line through the nearest measured (x, ms) at or below ``target_ms``
    and the nearest above it reaches ``target_ms``; None until measurements lie on both sides.
    Used where measurements, not an estimate's slope, should decide: the closed loop's width,
    TF-NAS's landing aim."""
    below = [q for q in points if q[1] <= target_ms]
    above = [q for q in points if q[1] > target_ms]
    if not below or not above:
        return None
    (x0, m0), (x1, m1) = max(below, key=lambda q: q[1]), min(above, key=lambda q: q[1])
    if x1 == x0:
        return None
    return x0 + (target_ms - m0) * (x1 - x0) / (m1 - m0)


def _nonneg_lstsq(a: np.ndarray, y: np.ndarray) -> list[float]:
    """argmin ‖a·x − y‖ subject to x ≥ 0, for a handful of columns: every subset of columns
    solved unconstrained, the best solution with no negative entry kept (exact for this size)."""
    n = a.shape[1]
    best, best_res = [0.0] * n, float(np.sum(y ** 2))
    scale = np.maximum(np.abs(a).max(axis=0), 1e-300)  # columns of MACs and of ones differ by 1e6
    for mask in range(1, 2 ** n):
        cols = [j for j in range(n) if mask >> j & 1]
        sol, *_ = np.linalg.lstsq(a[:, cols] / scale[cols], y, rcond=None)
        if np.any(sol < 0):
            continue
        x = [0.0] * n
        for j, v in zip(cols, sol):
            x[j] = float(v / scale[j])
        res = float(np.sum((a @ np.array(x) - y) ** 2))
        if res < best_res - 1e-15:
            best, best_res = x, res
    return best
