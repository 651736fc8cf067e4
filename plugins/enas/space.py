"""ENAS's macro chain space and its shared-weight supernet.

A child is ``Child(ops, skips)``: ``ops[i]`` names node i's op, ``skips[i]`` is a list of i bits,
``skips[i][j] = 1`` when node j's output is added to node i's (the paper's skip connections,
chosen by sigmoid attention). As a network (the op vocabulary of ``nas2deploy.ops``):

* ``stem``: conv 3x3 to ``width`` channels;
* node i: ``n{i}``, the chosen op on node i-1's output (conv, sep or pool, keeping channels and
  resolution); with skips, ``n{i}_sum`` adds the op's output and the chosen earlier nodes'
  outputs, and ``n{i}_bn`` (BN, ReLU) normalises the sum, as the paper's child does after its
  ``add_n``;
* after each pooling layer p the resolution halves and the width doubles: a node j before it
  reaches a later stage s through ``r{j}_s{s}``, a 1x1 conv of stride 2 (BN, no activation;
  the paper's factorized reduction, which halves every earlier layer at a pooling layer), chained
  stage by stage and created only where the child uses it;
* ``head``: global average pool and a linear classifier.

The supernet holds ONE module per (position, op) (``choices["n{i}_{op}"]``) and one per fixed
position (``fixed``: the stem, each node's post-sum BN, each reduction, the head); every child
runs the same modules its netspec names, so a child's weights are exactly the supernet's
tensors at the (position, op) it chose. ``wiring`` is the single description both the supernet's
forward and the netspec are built from, so the two compute the same function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from nas2deploy.method import TaskSpec
from nas2deploy.ops import OPS as OP_CLASSES

from .config import COST_ORDER, OPS, ENASConfig
from .controller import Controller


@dataclass(frozen=True)
class Child:
    """One architecture of the macro space: an op per node and skip bits from earlier nodes."""

    ops: tuple[str, ...]
    skips: tuple[tuple[int, ...], ...]

    @classmethod
    def make(cls, ops, skips) -> "Child":
        return cls(tuple(ops), tuple(tuple(int(b) for b in row) for row in skips))

    def to_dict(self) -> dict[str, Any]:
        return {"ops": list(self.ops), "skips": [list(r) for r in self.skips]}

    @property
    def skip_count(self) -> int:
        return sum(sum(r) for r in self.skips)


class Layout:
    """Stages, channels and resolutions of the macro chain for one task."""

    def __init__(self, cfg: ENASConfig, task: TaskSpec):
        self.cfg, self.task = cfg, task
        self.n = cfg.nodes
        self.ops = list(cfg.ops)
        pools = cfg.resolved_pool_layers()
        self.stage = [sum(1 for p in pools if p < i) for i in range(self.n)]
        self.n_stages = self.stage[-1] + 1
        self.width = [cfg.width * 2 ** s for s in range(self.n_stages)]

    def check(self, child: Child) -> None:
        """ValueError unless ``child`` is valid for this space's grammar."""
        if len(child.ops) != self.n or len(child.skips) != self.n:
            raise ValueError(f"a child of this space has {self.n} nodes, not "
                             f"{len(child.ops)} ops and {len(child.skips)} skip rows")
        for i, (op, row) in enumerate(zip(child.ops, child.skips)):
            if op not in self.ops:
                raise ValueError(f"node {i}: op {op!r} is not one of {self.ops}")
            if len(row) != i or any(b not in (0, 1) for b in row):
                raise ValueError(f"node {i}: skips must be {i} bits (one per earlier node), "
                                 f"not {list(row)}")

    def extreme(self, which: str) -> Child:
        """The largest (costliest op everywhere, every skip) or smallest (cheapest, none)."""
        order = [o for o in COST_ORDER if o in self.ops]
        op, bit = (order[0], 1) if which == "largest" else (order[-1], 0)
        return Child.make([op] * self.n, [[bit] * i for i in range(self.n)])

    def summary(self) -> str:
        return f"{len(self.ops)} ops x {self.n} nodes"

    def uniform(self, op: str) -> Child:
        """``op`` at every node with every skip: the cover net for ``op``."""
        return Child.make([op] * self.n, [[1] * i for i in range(self.n)])


def node_out(child: Child, i: int) -> str:
    return f"n{i}_bn" if any(child.skips[i]) else f"n{i}"


def wiring(layout: Layout, child: Child) -> list[dict[str, Any]]:
    """The child's nodes in order: netspec fields plus ``key`` (which supernet module runs it:
    ``("choices", "n{i}_{op}")``, ``("fixed", id)`` or None for a parameter-free sum)."""
    layout.check(child)
    task, c0 = layout.task, layout.width[0]
    nodes = [{"id": "stem", "op": "conv", "inputs": ["input"], "c_in": task.input_channels,
              "c_out": c0, "k": 3, "stride": layout.cfg.resolved_stem_stride(), "act": "relu",
              "key": ("fixed", "stem")}]
    made: set[tuple[int, int]] = set()

    def source(j: int, s: int) -> str:
        """Node j's output as seen at stage s (through its chained reductions)."""
        if s == layout.stage[j]:
            return node_out(child, j)
        rid = f"r{j}_s{s}"
        if (j, s) not in made:
            prev = source(j, s - 1)
            made.add((j, s))
            nodes.append({"id": rid, "op": "conv", "inputs": [prev], "c_in": layout.width[s - 1],
                          "c_out": layout.width[s], "k": 1, "stride": 2, "act": "none",
                          "key": ("fixed", rid)})
        return rid

    for i, (op, row) in enumerate(zip(child.ops, child.skips)):
        s, c = layout.stage[i], layout.width[layout.stage[i]]
        x = "stem" if i == 0 else source(i - 1, s)
        extra = [source(j, s) for j, b in enumerate(row) if b]
        spec = dict(OPS[op])
        kind = spec.pop("op")
        shape = {"c": c} if kind == "pool" else {"c_in": c, "c_out": c}
        nodes.append({"id": f"n{i}", "op": kind, "inputs": [x], **shape, **spec, "stride": 1,
                      "act": "relu", "key": ("choices", f"n{i}_{op}")})
        if extra:
            nodes.append({"id": f"n{i}_sum", "op": "sum", "inputs": [f"n{i}", *extra],
                          "key": None})
            nodes.append({"id": f"n{i}_bn", "op": "bn_act", "inputs": [f"n{i}_sum"], "c": c,
                          "act": "relu", "key": ("fixed", f"n{i}_bn")})
    last = node_out(child, layout.n - 1)
    nodes.append({"id": "head", "op": "head", "inputs": [last], "c_in": layout.width[-1],
                  "num_classes": task.num_classes, "key": ("fixed", "head")})
    return nodes


def netspec(layout: Layout, child: Child) -> dict[str, Any]:
    return as_netspec(layout.task, wiring(layout, child))


def as_netspec(task: TaskSpec, wired: list[dict[str, Any]]) -> dict[str, Any]:
    """A wiring (either space's) as the child's netspec."""
    nodes = [{k: v for k, v in n.items() if k != "key"} for n in wired]
    return {"input": {"channels": task.input_channels, "size": [task.input_size] * 2},
            "num_classes": task.num_classes, "nodes": nodes, "output": "head"}


def add_shared_modules(net: nn.Module, wirings) -> None:
    """``net.choices`` and ``net.fixed``: one module per key the ``wirings`` name (the cover
    nets' union: every (position, op) and every fixed position)."""
    net.choices = nn.ModuleDict()
    net.fixed = nn.ModuleDict()
    for wired in wirings:
        for n in wired:
            if n["key"] is None:
                continue
            table, key = n["key"]
            target = net.choices if table == "choices" else net.fixed
            if key not in target:
                params = {k: v for k, v in n.items() if k not in ("id", "op", "inputs", "key")}
                target[key] = OP_CLASSES[n["op"]](**params)


class MacroSupernet(nn.Module):
    """The shared supergraph: one module per (position, op) and per fixed position, and the
    controller (the architecture parameters)."""

    space_name = "macro"

    def __init__(self, cfg: ENASConfig, task: TaskSpec):
        super().__init__()
        self.cfg, self.task = cfg, task
        self.layout = layout = Layout(cfg, task)
        add_shared_modules(self, (wiring(layout, layout.uniform(op)) for op in layout.ops))
        self.controller = Controller(len(layout.ops), layout.n, cfg)

    def child_of(self, sample) -> Child:
        ops = self.layout.ops
        return Child.make([ops[o] for o in sample.ops], sample.skips)

    def netspec(self, child: Child) -> dict[str, Any]:
        return netspec(self.layout, child)

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.choices.parameters()
        yield from self.fixed.parameters()

    def module(self, key: tuple[str, str]) -> nn.Module:
        table, name = key
        return (self.choices if table == "choices" else self.fixed)[name]

    def forward(self, x: torch.Tensor, child: Child) -> torch.Tensor:
        env = {"input": x}
        for n in wiring(self.layout, child):
            args = [env[i] for i in n["inputs"]]
            if n["key"] is None:  # sum, in the order the netspec's Sum adds
                out = args[0]
                for a in args[1:]:
                    out = out + a
                env[n["id"]] = out
            else:
                env[n["id"]] = self.module(n["key"])(*args)
        return env["head"]

    def inherit(self, child: Child, live: bool = False) -> dict[str, torch.Tensor]:
        """The supernet's tensors for ``child``, keyed by its materialized net's state_dict
        names (``nodes.{id}.{param}``): copies, so the decision owns them, or with ``live`` the
        supernet's own parameters and buffers (``SearchSpace.share``)."""
        out: dict[str, torch.Tensor] = {}
        for n in wiring(self.layout, child):
            if n["key"] is not None:
                for name, t in self.module(n["key"]).state_dict(keep_vars=live).items():
                    out[f"nodes.{n['id']}.{name}"] = t if live else t.detach().clone().cpu()
        return out
