"""``DenseNAS``: the nas2deploy search-method plugin (entry point ``densenas``)."""

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

from .config import DenseNASConfig
from .derive import Choice, build_spec, choice_cost, cost_choice, resized_choice, viterbi_choice
from .routing import edge_cover, path_edges
from .search import Searched, record_to_choice, run_search
from .space import CostTable, DenseNASSupernet, Layout, macs


class DenseNAS(SearchMethod):
    """DenseNAS: routing blocks of increasing width, densely connected; transition probabilities
    (β, a softmax over each block's outgoing edges) and op weights (α) are learned under a
    chained expected-latency term; Viterbi keeps one path and everything off it is removed."""

    name: ClassVar[str] = "densenas"
    paper: ClassVar[str] = ("Fang et al., \"Densely Connected Search Space for More Flexible Neural "
                            "Architecture Search\" (DenseNAS, CVPR 2020)")
    Config: ClassVar[type[DenseNASConfig]] = DenseNASConfig
    # Sized for the default run (digits 32×32, ~630 + ~630 search images, two CPU cores): 10
    # warm-up + 20 search epochs of the small space (the paper's 50 + 100 of 150, scaled), about
    # 3 s of CPU per warm-up epoch and 5.6 s per search epoch on one core.
    default_search_epochs: ClassVar[int] = 30
    # Every tensor the search makes is on the supernet's device (candidates are drawn on the CPU
    # generator, the cost table moves to the device); forwards run under the run's autocast, α,
    # β, their softmax and the latency term in float32, fp16 gradients loss-scaled.
    runs_on_gpu: ClassVar[bool] = True

    def __init__(self, config: DenseNASConfig | dict[str, Any] | None = None):
        super().__init__(config)
        self.config.validate()

    # --- space ---------------------------------------------------------------------------

    def layout(self, task: TaskSpec) -> Layout:
        for name in ("input_channels", "input_size", "num_classes"):
            v = getattr(task, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise UsageError(f"densenas: task {name} must be a positive integer, not {v!r}")
        return Layout.from_config(self.config.resolved(), task)

    def build(self, task: TaskSpec) -> DenseNASSupernet:
        return DenseNASSupernet(self.layout(task), nested_init=self.config.nested_init)

    def space(self, supernet: nn.Module) -> SearchSpace:
        net = self._check(supernet)
        return SearchSpace(self._describe(net), largest=lambda: self._largest(net),
                           smallest=lambda: self._smallest(net), cover=lambda: self._cover(net),
                           sample=lambda rng: self._sample(net, rng),
                           inherit=lambda arch: self._inherit(net, arch),
                           share=lambda arch: self._inherit(net, arch, live=True))

    def _describe(self, net: DenseNASSupernet) -> dict[str, Any]:
        L = net.layout
        task = {"input_channels": L.input_channels, "input_size": L.input_size,
                "num_classes": L.num_classes}
        defining = {"method": "densenas", **self.config.space_dict(), "task": task}
        g = L.graph
        return {"name": "densenas", "fingerprint": fingerprint(defining), "preset": self.config.space,
                **L.describe(), "task": task, "blocks": L.blocks, "edges": len(g.edges),
                "paths": g.count_paths(),
                "choice_points": {"Transition": len(g.sources),
                                  "OpChoice": len(L.head_row) + L.n_layer_rows},
                "head_candidates": [c.name for c in L.head_candidates],
                "stack_candidates": [c.name for c in L.stack_candidates]}

    def _mac_table(self, net: DenseNASSupernet) -> CostTable:
        return CostTable.build(net.layout, macs, 0.0, self.config.skip_cost_fraction)

    def _largest(self, net: DenseNASSupernet) -> Architecture:
        """The path of most MACs with the costliest candidate everywhere (no layer skipped)."""
        choice = cost_choice(net.layout, self._mac_table(net), largest=True)
        choice.note = "largest: the costliest path (MACs), costliest candidate everywhere"
        return self._arch(net, choice)

    def _smallest(self, net: DenseNASSupernet) -> Architecture:
        """The path of fewest MACs with the cheapest head candidates and every layer skipped."""
        choice = cost_choice(net.layout, self._mac_table(net), largest=False)
        choice.note = "smallest: the cheapest path (MACs), cheapest candidate everywhere"
        return self._arch(net, choice)

    def _cover(self, net: DenseNASSupernet) -> list[Architecture]:
        """Paths covering every edge, each built once per candidate (that candidate on every head
        and stacked layer of the path): together they hold every op the space can produce at
        the input shape it really sees, which is what a latency table must measure."""
        L = net.layout
        out = []
        for path in edge_cover(L.graph):
            edges = path_edges(L.graph, path)
            rows = [r for v in path for r in L.layer_rows[v]]
            for o in range(len(L.head_candidates)):
                choice = Choice(path, {e: o for e in edges if e in L.head_row}, {r: o for r in rows},
                                note=f"latency-table cover: candidate {L.head_candidates[o].name} "
                                     f"on path {path}")
                out.append(self._arch(net, choice))
        return out

    def _sample(self, net: DenseNASSupernet, rng: random.Random) -> Architecture:
        """A random subnet: a random walk from the stem (uniform over each block's outgoing
        edges, as β at initialisation), a uniform candidate per head and per layer (skip
        included)."""
        L = net.layout
        path = [0]
        while path[-1] != L.out_node:
            e = rng.choice(L.graph.out_edges[path[-1]])
            path.append(L.graph.edges[e][1])
        edges = path_edges(L.graph, path)
        choice = Choice(path,
                        {e: rng.randrange(len(L.head_candidates)) for e in edges if e in L.head_row},
                        {r: rng.randrange(len(L.stack_candidates)) for v in path for r in L.layer_rows[v]},
                        note="random sample")
        return self._arch(net, choice)

    # --- search and decision -------------------------------------------------------------

    def search(self, supernet: nn.Module, ctx: SearchContext) -> Searched:
        """Returns the top-k epochs' records (by supernet validation accuracy) and the cost
        table, for ``decide``."""
        return run_search(self._check(supernet), self.config, ctx)

    def decide(self, supernet: nn.Module, searched: Searched | list | None = None) -> Decision:
        """The best recorded epoch's architecture (by supernet validation accuracy; ``searched``
        is what ``search`` returned), or, before any search, Viterbi + argmax on the current
        parameters; with a ``resize`` lever that re-decodes that epoch's parameters by a
        cost-weighted Viterbi (``derive.resized_choice``)."""
        net = self._check(supernet)
        kept = searched.kept if isinstance(searched, Searched) else (searched or [])
        if kept:
            best = kept[0]
            choice = record_to_choice(best)
            choice.note = f"best supernet validation epoch {best['epoch']} (top-{len(kept)} kept)"
            choice.extra["top"] = [dict(rec) for rec in kept]
        else:
            with torch.no_grad():
                choice = viterbi_choice(net.layout, net.transition_probs(), net.alpha_head,
                                        net.alpha_stack)
            choice.note = "Viterbi + argmax on the current parameters"
        arch = self._arch(net, choice)
        params = kept[0].get("params") if kept else None
        if params is not None:
            beta, ah, as_ = (torch.tensor(params[k], dtype=torch.float64)
                             for k in ("beta", "alpha_head", "alpha_stack"))
        else:
            beta, ah, as_ = (t.detach().cpu().double().clone() for t in net.arch_parameters())
        table = searched.table if isinstance(searched, Searched) else self._mac_table(net)
        lever = _Resize(self, net, table, net.layout.graph.transition_probs(beta), ah, as_)
        return Decision(arch, self._inherit(net, arch), resize=lever.bind(choice))

    def _inherit(self, net: DenseNASSupernet, arch: Architecture,
                 live: bool = False) -> dict[str, torch.Tensor]:
        """Each derived node's weights from the supernet module it was chosen from: copies, or
        (``live``, for ``share``) the supernet's own tensors. BN affine parameters the supernet
        does not have (affine=False) keep their init; running statistics are taken."""
        self.space(net).check(arch, "densenas")
        state = net.state_dict(keep_vars=live)
        return node_weights(arch, state, lambda path: getattr(net.get_submodule(path), "op", "?"),
                            copy=not live)

    # --- helpers -------------------------------------------------------------------------

    def _arch(self, net: DenseNASSupernet, choice: Choice) -> Architecture:
        return arch_of(net.layout, self._describe(net), net.seed, choice)

    @staticmethod
    def _check(supernet: nn.Module) -> DenseNASSupernet:
        if not isinstance(supernet, DenseNASSupernet):
            raise UsageError(f"densenas: expected the supernet DenseNAS.build() returns, not "
                             f"{type(supernet).__name__}")
        return supernet


def node_weights(arch: Architecture, state: dict[str, torch.Tensor], op_at, *,
                 copy: bool) -> dict[str, torch.Tensor]:
    """The derived net's state_dict names -> the tensors of ``state`` (a supernet state dict)
    under the module each node was chosen from (``arch.decisions["modules"]``); ``op_at(path)``
    names the op of the module at ``path``, checked against the node's."""
    modules = arch.decisions.get("modules", {})
    out: dict[str, torch.Tensor] = {}
    for node in arch.network["nodes"]:
        path = modules.get(node["id"])
        if path is None:
            raise UsageError(f"densenas: node {node['id']!r} has no supernet module recorded")
        op = op_at(path)
        if op != node["op"]:
            raise UsageError(f"densenas: node {node['id']!r} is a {node['op']!r} in the "
                             f"architecture but {path} is a {op!r}")
        prefix = f"{path}."
        for key, tensor in state.items():
            if key.startswith(prefix):
                name = f"nodes.{node['id']}.{key[len(prefix):]}"
                out[name] = tensor.detach().cpu().contiguous().clone() if copy else tensor
    return out


def arch_of(layout: Layout, description: dict[str, Any], seed: int | None,
            choice: Choice) -> Architecture:
    spec, modules, blocks = build_spec(layout, choice)
    decisions: dict[str, Any] = {
        "path": list(choice.path), "path_probability": choice.probability,
        "blocks": blocks, "modules": modules, "note": choice.note,
    }
    if "top" in choice.extra:
        decisions["top"] = [{"epoch": r["epoch"], "val_acc": r["val_acc"], "path": r["path"],
                             "path_probability": r["path_probability"], "blocks": r["blocks"],
                             **{k: v for k, v in r.items() if k.startswith("derived_")}}
                            for r in choice.extra["top"]]
        decisions["selected_epoch"] = decisions["top"][0]["epoch"]
    return Architecture(method="densenas", network=spec, space=description,
                        decisions=decisions, seed=seed)


class _Resize:
    """DenseNAS's ``resize`` lever: the decided epoch's transition probabilities and op weights
    re-decoded by Viterbi with a cost weight μ (``derive.weighted_choice``), μ bisected so the
    derived net's cost under the search's table moves by about ``factor``. It owns copies of
    those parameters, of the table and of the supernet's weights; the decisions it returns
    share them."""

    def __init__(self, method: DenseNAS, net: DenseNASSupernet, table: CostTable,
                 p: torch.Tensor, alpha_head: torch.Tensor, alpha_stack: torch.Tensor):
        self.method, self.layout, self.table = method, net.layout, table
        self.description, self.seed = method._describe(net), net.seed
        self.p, self.alpha_head, self.alpha_stack = p, alpha_head, alpha_stack
        self.state = {k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}
        self.ops = {name: getattr(mod, "op", "?") for name, mod in net.named_modules()}

    def bind(self, current: Choice):
        def resize(factor: float) -> Decision | None:
            if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 0):
                raise UsageError(f"densenas: resize factor must be a number > 0, not {factor!r}")
            new = resized_choice(self.layout, self.p, self.alpha_head, self.alpha_stack,
                                 self.table, current, float(factor))
            if new is None:
                return None
            was, now = (choice_cost(self.layout, self.table, c) for c in (current, new))
            if "top" in current.extra:  # the search's record stays with what it led to
                new.extra["top"] = current.extra["top"]
            new.note = (f"re-decoded by cost-weighted Viterbi at x{factor:.3f} of its estimated "
                        f"cost: x{now / was:.3f}")
            arch = arch_of(self.layout, self.description, self.seed, new)
            weights = node_weights(arch, self.state, lambda path: self.ops.get(path, "?"),
                                   copy=False)
            return Decision(arch, weights, resize=self.bind(new))
        return resize
