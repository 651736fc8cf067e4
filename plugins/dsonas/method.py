"""``DSONAS``: the nas2deploy search-method plugin (entry point ``dsonas``)."""

from __future__ import annotations

import math
import random
from typing import Any, ClassVar

import torch
from torch import nn

from nas2deploy.architecture import Architecture, fingerprint
from nas2deploy.errors import UsageError
from nas2deploy.method import SearchContext, SearchMethod, TaskSpec

from .config import DSONASConfig
from .derive import derive, uniform_lambdas
from .search import run_search
from .space import DSONASSupernet


# Share of the alive normal-block edges that each prune_further level removes (cumulative).
PRUNE_STEP = 0.25


def _normal_values(lam: list[Any]) -> list[float]:
    out: list[float] = []

    def walk(x: Any) -> None:
        if isinstance(x, (list, tuple)):
            for item in x:
                walk(item)
        else:
            out.append(float(x))

    for entry in lam:
        if isinstance(entry, tuple):  # a normal block: (lam_in per level, lam_out)
            walk(entry)
    return out


def _zero_below(x: Any, cut: float) -> Any:
    if isinstance(x, tuple):
        return tuple(_zero_below(i, cut) for i in x)
    if isinstance(x, list):
        return [_zero_below(i, cut) for i in x]
    return 0.0 if abs(x) <= cut else x


class DSONAS(SearchMethod):
    """DSO-NAS: every edge of a complete-DAG supernet has a scale λ ≥ 0; ℓ1 on λ, applied by a
    proximal step, drives unneeded edges to exactly 0; the architecture is what survives."""

    name: ClassVar[str] = "dsonas"
    paper: ClassVar[str] = ("Zhang et al., \"You Only Search Once: Single Shot Neural Architecture "
                            "Search via Direct Sparse Optimization\" (DSO-NAS)")
    Config: ClassVar[type[DSONASConfig]] = DSONASConfig
    # The whole default budget (pre-train + search), sized so the default space searches the
    # project's default data (digits) in about a minute on two CPU cores.
    default_search_epochs: ClassVar[int] = 40

    def __init__(self, config: DSONASConfig | dict[str, Any] | None = None):
        super().__init__(config)
        self.config.validate()

    # --- space ---------------------------------------------------------------------------

    def build(self, task: TaskSpec) -> DSONASSupernet:
        for name in ("input_channels", "input_size", "num_classes"):
            v = getattr(task, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise UsageError(f"dsonas: task {name} must be a positive integer, not {v!r}")
        return DSONASSupernet(self.config, task)

    def space(self, supernet: nn.Module) -> dict[str, Any]:
        net = self._check(supernet)
        task = {"input_channels": net.task.input_channels, "input_size": net.task.input_size,
                "num_classes": net.task.num_classes}
        defining = {"method": "dsonas", **net.cfg.space_dict(), "task": task}
        edges = sum(p.numel() for p in net.arch_parameters())
        return {"name": "dsonas", "fingerprint": fingerprint(defining), **net.cfg.space_dict(),
                "task": task, "choice_points": {"EdgeScale": int(edges)}, "total_edges": int(edges)}

    def largest(self, supernet: nn.Module) -> Architecture:
        net = self._check(supernet)
        lam = uniform_lambdas(net.cfg, net.task, normal=1.0, reduction=(1.0, 1.0))
        return self._arch(net, lam, keep_scales=False, note="largest: every edge kept")

    def smallest(self, supernet: nn.Module) -> Architecture:
        net = self._check(supernet)
        lam = uniform_lambdas(net.cfg, net.task, normal=0.0, reduction=(1.0, 0.0))
        return self._arch(net, lam, keep_scales=False,
                          note="smallest: every normal block empty, reductions 1x1 only")

    def sample(self, supernet: nn.Module, rng: random.Random) -> Architecture:
        """A random subnet: every edge kept with one probability drawn per call (0.15..0.9),
        kept λ uniform in (0.2, 1), then the same closure and derivation as ``decide``. The
        supernet is not touched."""
        net = self._check(supernet)
        keep = rng.uniform(0.15, 0.9)

        def draw() -> float:
            return rng.uniform(0.2, 1.0) if rng.random() < keep else 0.0

        lam: list[Any] = []
        for entry in uniform_lambdas(net.cfg, net.task, normal=1.0, reduction=(1.0, 1.0)):
            if isinstance(entry, tuple):  # a normal block: (lam_in per level, lam_out)
                lam.append(([[[draw() for _ in row] for row in level] for level in entry[0]],
                            [[draw() for _ in row] for row in entry[1]]))
            else:
                lam.append([draw() for _ in entry])
        arch = self._arch(net, lam, keep_scales=self.config.keep_scales, note="random sample")
        arch.seed = None
        return arch

    # --- search and decision -------------------------------------------------------------

    def search(self, supernet: nn.Module, ctx: SearchContext) -> None:
        run_search(self, self._check(supernet), ctx)

    def decide(self, supernet: nn.Module) -> Architecture:
        net = self._check(supernet)
        return self._arch(net, net.lambda_values(), keep_scales=self.config.keep_scales)

    def prune_further(self, supernet: nn.Module, level: int) -> Architecture | None:
        """``decide`` with the weakest ``PRUNE_STEP * level`` of the alive normal-block edges (by
        |λ|) zeroed as well: the ℓ1 path continued by thresholding, the same order in which more
        proximal steps would have removed them. Reduction units are left as decided. None when
        nothing more would go."""
        net = self._check(supernet)
        lam = net.lambda_values()
        alive = sorted(abs(v) for v in _normal_values(lam) if v != 0)
        if not alive or level < 1:
            return None
        k = min(len(alive), math.ceil(len(alive) * PRUNE_STEP * level))
        if level > 1 and k == min(len(alive), math.ceil(len(alive) * PRUNE_STEP * (level - 1))):
            return None
        cut = alive[k - 1]
        sparser = [_zero_below(entry, cut) if isinstance(entry, tuple) else entry for entry in lam]
        return self._arch(net, sparser, keep_scales=self.config.keep_scales,
                          note=f"decided, then the weakest {k} of {len(alive)} alive normal-block "
                               f"edges removed (|λ| <= {cut:.4g}): prune_further level {level}")

    def inherited_weights(self, supernet: nn.Module, arch: Architecture) -> dict[str, torch.Tensor]:
        net = self._check(supernet)
        fp = self.space(net)["fingerprint"]
        if arch.space.get("fingerprint") != fp:
            raise UsageError(f"dsonas: the architecture comes from another space "
                             f"(fingerprint {arch.space.get('fingerprint')!r}, supernet {fp!r})")
        modules = net.node_modules()
        out: dict[str, torch.Tensor] = {}
        for node in arch.network["nodes"]:
            mod = modules.get(node["id"])
            if mod is None:
                continue  # sums and other weightless nodes
            if getattr(mod, "op", None) != node["op"]:
                raise UsageError(f"dsonas: node {node['id']!r} is a {node['op']!r} in the architecture "
                                 f"but a {getattr(mod, 'op', '?')!r} in the supernet")
            for key, tensor in mod.state_dict().items():
                out[f"nodes.{node['id']}.{key}"] = tensor.detach().clone()
        return out

    # --- helpers -------------------------------------------------------------------------

    def _arch(self, net: DSONASSupernet, lam: list[Any], *, keep_scales: bool,
              note: str | None = None) -> Architecture:
        network, decisions = derive(net.cfg, net.task, lam, keep_scales=keep_scales)
        if note:
            decisions["note"] = note
        return Architecture(method="dsonas", network=network, space=self.space(net),
                            decisions=decisions, seed=net.seed)

    @staticmethod
    def _check(supernet: nn.Module) -> DSONASSupernet:
        if not isinstance(supernet, DSONASSupernet):
            raise UsageError(f"dsonas: expected the supernet DSONAS.build() returns, not "
                             f"{type(supernet).__name__}")
        return supernet
