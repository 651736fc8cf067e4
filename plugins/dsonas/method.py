"""``DSONAS``: the nas2deploy search-method plugin (entry point ``dsonas``)."""

from __future__ import annotations

import math
import random
from typing import Any, ClassVar

import torch
from torch import nn

from nas2deploy.architecture import Architecture, fingerprint
from nas2deploy.errors import UsageError
from nas2deploy.method import Decision, SearchContext, SearchMethod, TaskSpec
from nas2deploy.space import SearchSpace

from .config import DSONASConfig
from .derive import derive, uniform_lambdas
from .search import run_search
from .space import DSONASSupernet


# Share of the alive normal-block edges that each sparser level removes (cumulative).
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
    # Every tensor the search makes is on the supernet's device (the CPU generators' draws are
    # not device tensors); forwards run under the run's autocast, λ and the proximal step in
    # float32, fp16 gradients through LossScale.
    runs_on_gpu: ClassVar[bool] = True

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

    def space(self, supernet: nn.Module) -> SearchSpace:
        net = self._check(supernet)
        return SearchSpace(self._describe(net), largest=lambda: self._largest(net),
                           smallest=lambda: self._smallest(net),
                           sample=lambda rng: self._sample(net, rng),
                           inherit=lambda arch: self._inherit(net, arch))

    def _describe(self, net: DSONASSupernet) -> dict[str, Any]:
        task = {"input_channels": net.task.input_channels, "input_size": net.task.input_size,
                "num_classes": net.task.num_classes}
        defining = {"method": "dsonas", **net.cfg.space_dict(), "task": task}
        edges = sum(p.numel() for p in net.arch_parameters())
        return {"name": "dsonas", "fingerprint": fingerprint(defining), **net.cfg.space_dict(),
                "task": task, "choice_points": {"EdgeScale": int(edges)}, "total_edges": int(edges)}

    def _largest(self, net: DSONASSupernet) -> Architecture:
        lam = uniform_lambdas(net.cfg, net.task, normal=1.0, reduction=(1.0, 1.0))
        return self._arch(net, lam, keep_scales=False, note="largest: every edge kept")

    def _smallest(self, net: DSONASSupernet) -> Architecture:
        lam = uniform_lambdas(net.cfg, net.task, normal=0.0, reduction=(1.0, 0.0))
        return self._arch(net, lam, keep_scales=False,
                          note="smallest: every normal block empty, reductions 1x1 only")

    def _sample(self, net: DSONASSupernet, rng: random.Random) -> Architecture:
        """A random subnet: every edge kept with one probability drawn per call (0.15..0.9),
        kept λ uniform in (0.2, 1), then the same closure and derivation as ``decide``. The
        supernet is not touched."""
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
        return None  # decide reads λ off the supernet: nothing else to hand on

    def decide(self, supernet: nn.Module, searched: Any = None) -> Decision:
        """The surviving edges, their weights, and a ``sparser`` lever that continues the ℓ1 path
        by thresholding a snapshot of λ."""
        net = self._check(supernet)
        arch = self.decided(net)
        weights = self._inherit(net, arch)
        lever = _Sparser(self, net, net.lambda_values(), weights)
        return Decision(arch, weights, sparser=lever)

    def decided(self, net: DSONASSupernet) -> Architecture:
        """The architecture λ decides now (what ``decide`` returns, without its weights)."""
        return self._arch(net, net.lambda_values(), keep_scales=self.config.keep_scales)

    def _inherit(self, net: DSONASSupernet, arch: Architecture) -> dict[str, torch.Tensor]:
        self.space(net).check(arch, "dsonas")
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
                out[f"nodes.{node['id']}.{key}"] = tensor.detach().cpu().clone()
        return out

    # --- helpers -------------------------------------------------------------------------

    def _arch(self, net: DSONASSupernet, lam: list[Any], *, keep_scales: bool,
              note: str | None = None) -> Architecture:
        network, decisions = derive(net.cfg, net.task, lam, keep_scales=keep_scales)
        if note:
            decisions["note"] = note
        return Architecture(method="dsonas", network=network, space=self._describe(net),
                            decisions=decisions, seed=net.seed)

    @staticmethod
    def _check(supernet: nn.Module) -> DSONASSupernet:
        if not isinstance(supernet, DSONASSupernet):
            raise UsageError(f"dsonas: expected the supernet DSONAS.build() returns, not "
                             f"{type(supernet).__name__}")
        return supernet


class _Sparser:
    """DSO-NAS's ``sparser`` lever: the decided λ with the weakest ``PRUNE_STEP * level`` of the
    alive normal-block edges (by |λ|) zeroed as well, the ℓ1 path continued by thresholding, in
    the order more proximal steps would have removed them. Reduction units are left as decided.
    Levels count from the search's decision. It owns a snapshot of λ and of the decided weights:
    a sparser architecture keeps a subset of the decided nodes."""

    def __init__(self, method: DSONAS, net: DSONASSupernet, lam: list[Any],
                 weights: dict[str, torch.Tensor]):
        self.method, self.lam, self.weights = method, lam, weights
        self.cfg, self.task, self.seed = net.cfg, net.task, net.seed
        self.description = method._describe(net)

    def __call__(self, level: int) -> Decision | None:
        alive = sorted(abs(v) for v in _normal_values(self.lam) if v != 0)
        if not alive or level < 1:
            return None
        k = min(len(alive), math.ceil(len(alive) * PRUNE_STEP * level))
        if level > 1 and k == min(len(alive), math.ceil(len(alive) * PRUNE_STEP * (level - 1))):
            return None
        cut = alive[k - 1]
        sparser = [_zero_below(entry, cut) if isinstance(entry, tuple) else entry
                   for entry in self.lam]
        network, decisions = derive(self.cfg, self.task, sparser,
                                    keep_scales=self.method.config.keep_scales)
        decisions["note"] = (f"decided, then the weakest {k} of {len(alive)} alive normal-block "
                             f"edges removed (|λ| <= {cut:.4g}): sparser level {level}")
        arch = Architecture(method="dsonas", network=network, space=self.description,
                            decisions=decisions, seed=self.seed)
        kept = tuple(f"nodes.{n['id']}." for n in arch.network["nodes"])
        weights = {k: v for k, v in self.weights.items() if k.startswith(kept)}
        return Decision(arch, weights, sparser=self)
