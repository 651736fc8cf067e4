"""``DSONAS``: the nas2deploy search-method plugin (entry point ``dsonas``)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from nas2deploy.architecture import Architecture, fingerprint
from nas2deploy.counting import count_macs
from nas2deploy.errors import UsageError
from nas2deploy.method import Decision, SearchContext, SearchMethod, TaskSpec
from nas2deploy.netspec import build_network
from nas2deploy.space import SearchSpace

from .config import DSONASConfig
from .derive import derive, uniform_lambdas
from .search import run_search
from .space import DSONASSupernet, NormalBlock, edge_costs


# Each sparser level aims the estimated latency at this fraction of the previous level's aim
# (level k: LEVEL_STEP**k of the decided architecture's estimate): a step the closed loop's
# width rounds can still fine-tune, small enough not to overshoot the budget by much.
LEVEL_STEP = 0.85


@dataclass
class Searched:
    """What the search hands ``decide``: the latency model it estimated with (None: MACs) and
    the point it aimed at (``aim`` × ``budget_ms``; None: no budget)."""

    latency_model: Any = None
    budget_ms: float | None = None
    aim: float = 0.95


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
                           inherit=lambda arch: self._inherit(net, arch),
                           share=lambda arch: self._inherit(net, arch, live=True))

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

    def search(self, supernet: nn.Module, ctx: SearchContext) -> Searched:
        run_search(self, self._check(supernet), ctx)
        # λ themselves are read off the supernet
        return Searched(ctx.latency_model, ctx.budget_ms, float(getattr(ctx, "aim", 0.95)))

    def decide(self, supernet: nn.Module, searched: Any = None) -> Decision:
        """The surviving edges and their weights, with ``resize`` and ``sparser`` levers that
        move along the ℓ1 path (a cost-weighted threshold on a snapshot of λ) by the latency
        estimate. With ``land_on_budget`` and a search that had a budget and a latency model,
        an architecture estimated over ``aim`` × budget is first taken along that path to it."""
        net = self._check(supernet)
        arch = self.decided(net)
        weights = self._inherit(net, arch)
        s = searched if isinstance(searched, Searched) else Searched()
        path = _Sparser(self, net, net.lambda_values(), weights, s.latency_model)
        if not (self.config.land_on_budget and s.budget_ms and s.latency_model is not None
                and path.order):
            return Decision(arch, weights, resize=path.resize(0) if path.order else None,
                            sparser=path)
        aim = s.aim * s.budget_ms
        est = path._at(0)[2]
        if est <= aim:
            return Decision(arch, weights, resize=path.resize(0), sparser=path)
        path.start = path.first_under(aim)
        return path.decision(path.start, f"landed on {s.aim:g} x the budget from x{est / aim:.3f}")

    def edge_costs(self, net: DSONASSupernet) -> list[torch.Tensor]:
        """MACs per edge (``space.edge_costs``): a function of the space alone, counted once."""
        key = self._describe(net)["fingerprint"]
        cache = self.__dict__.setdefault("_edge_costs", {})
        if key not in cache:
            cache[key] = edge_costs(net)
        return cache[key]

    def decided(self, net: DSONASSupernet) -> Architecture:
        """The architecture λ decides now (what ``decide`` returns, without its weights)."""
        return self._arch(net, net.lambda_values(), keep_scales=self.config.keep_scales)

    def _inherit(self, net: DSONASSupernet, arch: Architecture,
                 live: bool = False) -> dict[str, torch.Tensor]:
        """Each derived node's weights from its supernet module: copies, or (``live``, for
        ``share``) the supernet's own tensors. λ are not among them: the derived net holds the
        surviving λ as constant coefficients of its sums (``keep_scales``), so a shared subnet
        computes what the inherited one does, and trains the weights, not λ."""
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
            for key, tensor in mod.state_dict(keep_vars=live).items():
                out[f"nodes.{node['id']}.{key}"] = tensor if live else tensor.detach().cpu().clone()
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
    """DSO-NAS's ℓ1 path past the search: the surviving normal-block edges ranked weakest first
    and removed in that order, the count bisected on the latency estimate (reduction units are
    left as decided). The ``sparser`` lever (this object): level k removes the fewest edges
    that bring the estimate to at most LEVEL_STEP**k of the decision's. The ``resize`` levers
    (``resize(k)``): the count whose estimate is nearest ``factor`` × the current one, edges
    restored when growing. ``decide`` lands on the budget along the same path.

    "Weakest" compares λ only where λ are comparable: within one BN group (the input edges of
    one op, or the output edges of one block; scaling a whole group leaves the net's function
    unchanged, pitfall 1), so each λ is taken relative to its group's largest, then divided by
    its edge's MACs relative to the costliest edge: at equal relative strength a costlier edge
    goes first, as the cost-weighted γ would have removed it. The estimate is the search's
    latency model, or MACs without one. The lever owns a snapshot of λ, of the edge costs and
    of the decided weights (a sparser architecture keeps a subset of the decided nodes)."""

    def __init__(self, method: DSONAS, net: DSONASSupernet, lam: list[Any],
                 weights: dict[str, torch.Tensor], latency_model: Any = None):
        self.method, self.lam, self.weights = method, lam, weights
        self.start = 0  # edges the decision itself removed (its landing on the budget)
        self.cfg, self.task, self.seed = net.cfg, net.task, net.seed
        self.description = method._describe(net)
        self.latency_model = latency_model
        self.order = self._order(method.edge_costs(net), net, lam)
        self.cache: dict[int, tuple[dict[str, Any], dict[str, Any], float]] = {}
        self.removed: dict[int, int] = {}  # level -> edges removed

    @staticmethod
    def _order(edge_costs: list[torch.Tensor], net: DSONASSupernet, lam: list[Any]) -> list[tuple]:
        """The alive normal-block edges, weakest first: (unit, level, op, column) for an input
        edge, (unit, "out", level, op) for an output edge."""
        costs = iter(edge_costs)
        scored: list[tuple[float, tuple]] = []
        flat: list[tuple[float, float, tuple, Any]] = []
        for u, (unit, values) in enumerate(zip(net.units, lam)):
            tensors = [next(costs) for _ in unit.arch_parameters()]
            if not isinstance(unit, NormalBlock):
                continue
            lam_in, lam_out = values
            for m, rows in enumerate(lam_in):
                for n, row in enumerate(rows):
                    for j, v in enumerate(row):
                        flat.append((abs(v), float(tensors[m][n, j]), (u, m, n, j), (u, "in", m, n)))
            for m, row in enumerate(lam_out):
                for n, v in enumerate(row):
                    flat.append((abs(v), float(tensors[-1][m, n]), (u, "out", m, n), (u, "out")))
        top: dict[Any, float] = {}
        for v, _, _, group in flat:
            top[group] = max(top.get(group, 0.0), v)
        dearest = max((c for _, c, _, _ in flat), default=1.0) or 1.0
        for v, c, where, group in flat:
            if v != 0:
                scored.append(((v / top[group]) / max(c / dearest, 1e-12), where))
        return [where for _, where in sorted(scored, key=lambda t: t[0])]  # ties: stable

    def _lam(self, k: int) -> list[Any]:
        """The decided λ with the ``k`` weakest edges zeroed."""
        lam = [([[list(r) for r in level] for level in e[0]], [list(r) for r in e[1]])
               if isinstance(e, tuple) else list(e) for e in self.lam]
        for u, a, b, c in self.order[:k]:
            if a == "out":
                lam[u][1][b][c] = 0.0
            else:
                lam[u][0][a][b][c] = 0.0
        return lam

    def _at(self, k: int) -> tuple[dict[str, Any], dict[str, Any], float]:
        if k not in self.cache:
            network, decisions = derive(self.cfg, self.task, self._lam(k),
                                        keep_scales=self.method.config.keep_scales)
            self.cache[k] = (network, decisions, self.estimate(network))
        return self.cache[k]

    def estimate(self, network: dict[str, Any]) -> float:
        if self.latency_model is not None:
            return float(self.latency_model.predict(network))
        net = build_network(network)
        return float(count_macs(net, net.example_input(1)))

    def first_under(self, aim: float, lo: int = 0) -> int:
        """The fewest edges (at least ``lo``) whose removal brings the estimate to at most
        ``aim``; all of them where none does. Bisection: the estimate is non-increasing in the
        edges removed."""
        n = len(self.order)
        if self._at(n)[2] > aim:
            return n
        hi = n
        while lo < hi:
            mid = (lo + hi) // 2
            if self._at(mid)[2] <= aim:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def _removed(self, level: int) -> int:
        """Edges level ``level`` removes (level 0: the decision's own)."""
        if level < 1:
            return self.start
        return self.first_under(self._at(self.start)[2] * LEVEL_STEP ** level, self.start)

    def __call__(self, level: int) -> Decision | None:
        n = len(self.order)
        if n == self.start or level < 1:
            return None
        self.cache.clear()  # the latency model may have been refitted since the last call
        k = self._removed(level)
        if k == n and self._removed(level - 1) == n:
            return None  # every edge went at the level before: nothing more to remove
        self.removed[level] = k
        base = self._at(self.start)[2]
        note = (f"sparser level {level}: aim x{LEVEL_STEP ** level:.3f} of the decided estimate, "
                f"x{self._at(k)[2] / base:.3f} reached")
        return self.decision(k, note)

    def resize(self, k_now: int):
        """The ``resize`` lever of the decision that removed ``k_now`` edges: the number of
        edges removed whose estimate is nearest ``factor`` × its own (restoring edges, back to
        the search's decision, when growing)."""
        def resize(factor: float) -> Decision | None:
            if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 0):
                raise UsageError(f"dsonas: resize factor must be a number > 0, not {factor!r}")
            self.cache.clear()
            now = self._at(k_now)[2]
            aim = factor * now
            k = self.first_under(aim)
            if k > 0 and abs(math.log(self._at(k - 1)[2] / aim)) < abs(math.log(self._at(k)[2] / aim)):
                k -= 1
            if k == k_now or self._at(k)[0] == self._at(k_now)[0]:
                return None
            return self.decision(k, f"re-landed at x{factor:.3f} of its estimate: "
                                    f"x{self._at(k)[2] / now:.3f}")
        return resize

    def decision(self, k: int, note: str) -> Decision:
        network, decisions, est = self._at(k)
        n = len(self.order)
        decisions = {**decisions, "removed_edges": k, "estimate": est,
                     "note": (f"decided, then the {k} weakest of {n} alive normal-block edges "
                              f"removed (λ relative to its BN group, per MAC); {note}")}
        arch = Architecture(method="dsonas", network=network, space=self.description,
                            decisions=decisions, seed=self.seed)
        kept = tuple(f"nodes.{node['id']}." for node in arch.network["nodes"])
        weights = {key: v for key, v in self.weights.items() if key.startswith(kept)}
        return Decision(arch, weights, resize=self.resize(k), sparser=self)
