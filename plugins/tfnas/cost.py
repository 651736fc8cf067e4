"""Latency of TF-NAS architectures, read op by op from the target's latency model.

Every candidate op at every block position and every width is an ``OpSignature`` (the op, the shapes
it sees, its mid channels); its cost is ``latency_model.op_cost(sig)`` in ms, asked once and cached
(the TF-NAS authors' code indexes its table by mid channels too). The network constant is
``latency_model.base_ms`` plus the costs of the fixed nodes (stem, stem block, tail conv, head), as
the paper's ``base`` entry holds the stem and tail.

Two latencies are built from these costs:

* the **expected** latency of the arch step (differentiable in the soft op weights w and in β):
  LAT = fixed + Σ_stages Σ_d softmax(β)_d · Σ_{k≤d} Σ_o w_{k,o} · cost(k, o, mid_{k,o})
      = fixed + Σ_blocks P(depth ≥ k) · Σ_o w_{k,o} · cost(k, o, mid_{k,o});
* the **parsed** latency: one op per block, the first d blocks of each stage, at given widths.

Without a latency model the costs are MACs in millions (a budget is then read in MMACs); with a
model that has no per-op costs, MACs are calibrated to the model's own predictions of the
largest and smallest architectures.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from nas2deploy.counting import count_macs
from nas2deploy.latency import LatencyModel
from nas2deploy.netspec import OpSignature, build_network, single_op_spec

from .space import Layout


def op_macs(sig: OpSignature) -> int:
    net = build_network(single_op_spec(sig))
    return count_macs(net, net.example_input(1))


class MacsCost:
    """Fallback per-op costs: a + b·MACs (b = 1e-6, a = 0 unless calibrated: ms := MMACs)."""

    name = "macs"

    def __init__(self, ms_per_mac: float = 1e-6, base: float = 0.0):
        self.ms_per_mac, self.base = ms_per_mac, base

    def op_cost(self, sig: OpSignature) -> float:
        return self.ms_per_mac * op_macs(sig)

    @property
    def base_ms(self) -> float:
        return self.base


class CostTable:
    """Cached per-op costs of one supernet layout under one latency model."""

    def __init__(self, layout: Layout, model: LatencyModel | Any | None = None,
                 calibrate: Callable[[], tuple[dict, dict]] | None = None):
        self.layout = layout
        self.blocks = layout.blocks
        self.stage_of = [b.stage for b in self.blocks]
        self.source = "latency_model"
        if model is None:
            model, self.source = MacsCost(), "macs (no latency model: ms are MMACs)"
        elif not _has_op_cost(model):
            model, self.source = self._calibrated(model, calibrate), "macs calibrated to predict()"
        self.model = model
        self._cache: dict[OpSignature, float] = {}
        self._version: object = object()  # never a model's version: the first _sync fills
        self._fixed_ms = 0.0
        self._sync()

    def _sync(self) -> None:
        """Drop the cached costs when the model has been refitted (``FlopsProxy.observe``)."""
        version = getattr(self.model, "version", None)
        if version != self._version:
            self._version = version
            self._cache.clear()
            self._fixed_ms = float(self.model.base_ms) + sum(
                self._cost(s) for s in self.layout.fixed_signatures())

    @property
    def fixed_ms(self) -> float:
        self._sync()
        return self._fixed_ms

    @staticmethod
    def _calibrated(model: Any, calibrate) -> MacsCost:
        if calibrate is None:
            return MacsCost()
        big, small = calibrate()  # two network specs
        mb, ms_ = (count_macs(n, n.example_input(1)) for n in (build_network(big), build_network(small)))
        pb, ps = float(model.predict(big)), float(model.predict(small))
        b = (pb - ps) / (mb - ms_) if mb != ms_ else pb / max(mb, 1)
        b = max(b, 1e-12)
        return MacsCost(b, max(pb - b * mb, 0.0))

    def sig_cost(self, sig: OpSignature) -> float:
        self._sync()
        return self._cost(sig)

    def _cost(self, sig: OpSignature) -> float:
        c = self._cache.get(sig)
        if c is None:
            c = float(self.model.op_cost(sig))
            self._cache[sig] = c
        return c

    def cost(self, block: int, op: int, mid: int) -> float:
        return self.sig_cost(self.blocks[block].signature(op, mid))

    # --- parsed latency ------------------------------------------------------------------------

    def active_blocks(self, depths: Sequence[int]) -> list[int]:
        """Global indices of the blocks the parsed depths keep."""
        out, i = [], 0
        for st, d in zip(self.layout.stages, depths):
            out += list(range(i, i + d))
            i += len(st)
        return out

    def parsed(self, ops: Sequence[int], depths: Sequence[int], mids: Sequence[int]) -> float:
        """LAT of one op per block (``ops``, ``mids`` per global block) truncated to ``depths``."""
        return self.fixed_ms + sum(self.cost(j, ops[j], mids[j]) for j in self.active_blocks(depths))

    # --- expected latency ----------------------------------------------------------------------

    def op_cost_matrix(self, mids: Sequence[Sequence[int]]) -> torch.Tensor:
        """n_blocks × n_ops costs at the ops' current widths."""
        return torch.tensor([[self.cost(j, o, m) for o, m in enumerate(row)]
                             for j, row in enumerate(mids)], dtype=torch.float32)

    def expected(self, weights: torch.Tensor, depth_probs: Sequence[torch.Tensor],
                 costs: torch.Tensor) -> torch.Tensor:
        """Sink-weighted cumulative expectation (differentiable in ``weights`` and ``depth_probs``)."""
        per_block = (weights * costs).sum(1)  # Σ_o w_{k,o} cost_{k,o}
        total = per_block.new_tensor(self.fixed_ms)
        i = 0
        for p in depth_probs:
            n = len(p)
            # P(depth ≥ k) = Σ_{d ≥ k} p_d : a reversed cumulative sum
            survive = torch.flip(torch.cumsum(torch.flip(p, (0,)), 0), (0,))
            total = total + (survive * per_block[i:i + n]).sum()
            i += n
        return total


def _has_op_cost(model: Any) -> bool:
    fn = getattr(type(model), "op_cost", None)
    return fn is not None and fn is not LatencyModel.op_cost
