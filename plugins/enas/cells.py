"""ENAS's micro space: NASNet-style normal and reduction cells, and their shared-weight supernet.

A child is ``Cells(normal, reduce)``: per cell type, per compute node ``(a, op_a, b, op_b)``,
``a`` and ``b`` indexing the cell's nodes (0 and 1: the two inputs, the outputs of the previous
two cells; 2 + j: compute node j), so node j may read only nodes before it. Node j is
``op_a(node a) + op_b(node b)``. Every normal cell of the net uses the normal cell's choices,
every reduction cell the reduction cell's. As a network (the op vocabulary of
``nas2deploy.ops``):

* ``stem``: conv 3x3 to ``width`` channels, BN, ReLU;
* stages 0..R, each ``cells`` normal cells, stages after the first opened by a reduction cell;
  cell k works at its stage's resolution and width (the width doubles, the resolution halves
  at each reduction);
* ``c{k}_in{t}``: a cell input whose resolution or width differs from the cell's is calibrated
  by a 1x1 conv (stride 2 or 4, BN, ReLU), as ENAS's ``_maybe_calibrate_size`` does; a
  reduction cell thus reduces its inputs first and runs every op at stride 1 (ENAS's code, where
  NASNet gives the reduction cell's ops stride 2);
* ``c{k}_n{j}_x`` / ``_y``: the ops of node j's two slots (sep conv or pool, BN, ReLU; an
  identity slot is no node at all: the sum reads its input), ``c{k}_n{j}``: their sum, which
  carries ScheduledDropPath probabilities for the retrain (non-identity paths only, as NASNet
  and ENAS drop, scaled by (k + 1) / cells);
* ``c{k}_out`` (when the cell has more than one unused node): the **sum** of the compute nodes no
  other node of the cell reads; ``c{k}``: BN and ReLU on it, the cell's output;
* ``head``: global average pool and a linear classifier.

The paper concatenates the unused nodes and ENAS's code follows with a 1x1 conv back to the
cell's width; this sums them instead. A sum keeps the op vocabulary every core piece already
handles: a concat would need a new op in the netspec, its bounds checks, MAC counting, latency
signatures and tables, channel surgery's pruning groups (a concat couples the channels of its
inputs with slices of the next conv) and each exporter's checks, for a difference a linear
1x1 projection of a concat already blurs (``W [x1; x2] = W1 x1 + W2 x2``). The cell inputs are
not part of the output (the paper's text; ENAS's code also concatenates unused inputs).

The supernet holds ONE module per (cell, node, input slot, op) (``choices["c{k}_n{j}_{x|y}_{op}"]``)
whichever earlier node the slot reads (ENAS's code keeps one more copy per input index; one per
slot trains each tensor more often in the short searches run here), and one per fixed position
(``fixed``: stem, calibrations, each cell's output BN, head). ``wiring`` is the single
description the supernet's forward and the netspec are both built from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from nas2deploy.method import TaskSpec

from .config import CELL_COST_ORDER, CELL_OPS, ENASConfig
from .controller import CellController
from .space import add_shared_modules, as_netspec


@dataclass(frozen=True)
class Cells:
    """One architecture of the micro space: the normal and the reduction cell."""

    normal: tuple[tuple[int, str, int, str], ...]
    reduce: tuple[tuple[int, str, int, str], ...]

    @classmethod
    def make(cls, normal, reduce) -> "Cells":
        def cell(rows):
            return tuple((int(a), str(oa), int(b), str(ob)) for a, oa, b, ob in rows)
        return cls(cell(normal), cell(reduce))

    def to_dict(self) -> dict[str, Any]:
        return {"normal": [list(n) for n in self.normal], "reduce": [list(n) for n in self.reduce]}

    @property
    def skip_count(self) -> int:
        return 0


class CellLayout:
    """The cells, stages, channels and resolutions of the micro net for one task."""

    def __init__(self, cfg: ENASConfig, task: TaskSpec):
        self.cfg, self.task = cfg, task
        self.b = cfg.blocks
        self.ops = list(cfg.cell_ops)
        self.kinds: list[str] = []
        self.stage: list[int] = []
        for s in range(cfg.reductions + 1):
            if s:
                self.kinds.append("reduce")
                self.stage.append(s)
            self.kinds += ["normal"] * cfg.cells
            self.stage += [s] * cfg.cells
        self.n_cells = len(self.kinds)
        self.width = [cfg.width * 2 ** s for s in range(cfg.reductions + 1)]

    def summary(self) -> str:
        return (f"{len(self.ops)} ops x {self.b} nodes x 2 cell types, "
                f"{self.n_cells} cells")

    def check(self, child: Cells) -> None:
        """ValueError unless ``child`` is valid for this space's grammar."""
        for kind, cell in (("normal", child.normal), ("reduce", child.reduce)):
            if len(cell) != self.b:
                raise ValueError(f"a {kind} cell of this space has {self.b} nodes, not {len(cell)}")
            for j, (a, oa, b, ob) in enumerate(cell):
                for idx in (a, b):
                    if not 0 <= idx < 2 + j:
                        raise ValueError(f"{kind} node {j}: input {idx} is not an earlier node "
                                         f"(0..{1 + j})")
                for op in (oa, ob):
                    if op not in self.ops:
                        raise ValueError(f"{kind} node {j}: op {op!r} is not one of {self.ops}")

    def _cell(self, op: str, unused: int) -> tuple[tuple[int, str, int, str], ...]:
        """``op`` in every slot; the last ``unused`` nodes read the two inputs, the earlier
        ones each read the node before, so exactly ``unused`` nodes are left for the output."""
        rows = []
        for j in range(self.b):
            if j == 0 or j > self.b - unused:
                rows.append((0, op, 1, op))
            else:
                rows.append((j + 1, op, j + 1, op))
        return tuple(rows)

    def uniform(self, op: str, unused: int | None = None) -> Cells:
        cell = self._cell(op, self.b if unused is None else unused)
        return Cells(cell, cell)

    def extreme(self, which: str) -> Cells:
        """The largest (the costliest op everywhere, every node in the output sum) or the
        smallest (the cheapest op everywhere, the nodes chained: one output node)."""
        order = [o for o in CELL_COST_ORDER if o in self.ops]
        return self.uniform(order[0]) if which == "largest" else self.uniform(order[-1], 1)

    def cover(self) -> list[Cells]:
        """Every op at every cell position, and output sums of every size 2..B."""
        out = [self.uniform(op) for op in self.ops if op != "identity"]
        first = next((o for o in CELL_COST_ORDER if o in self.ops and o != "identity"),
                     self.ops[0])
        out += [self.uniform(first, u) for u in range(2, self.b)]
        return out or [self.uniform(self.ops[0])]


def wiring(layout: CellLayout, child: Cells) -> list[dict[str, Any]]:
    """The child's nodes in order: netspec fields plus ``key`` (which supernet module runs it:
    ``("choices", name)``, ``("fixed", name)`` or None for a parameter-free sum)."""
    layout.check(child)
    task, cfg = layout.task, layout.cfg
    nodes = [{"id": "stem", "op": "conv", "inputs": ["input"], "c_in": task.input_channels,
              "c_out": layout.width[0], "k": 3, "stride": cfg.resolved_stem_stride(),
              "act": "relu", "key": ("fixed", "stem")}]
    # (id, stage, channels) of the previous two cells' outputs
    prev = [("stem", 0, layout.width[0])] * 2
    for k, (kind, s) in enumerate(zip(layout.kinds, layout.stage)):
        c = layout.width[s]
        states = []
        for t, (src, s_in, c_in) in enumerate(prev):
            if s_in == s and c_in == c:
                states.append(src)
                continue
            nid = f"c{k}_in{t}"
            nodes.append({"id": nid, "op": "conv", "inputs": [src], "c_in": c_in, "c_out": c,
                          "k": 1, "stride": 2 ** (s - s_in), "act": "relu",
                          "key": ("fixed", nid)})
            states.append(nid)
        ratio = (k + 1) / layout.n_cells
        used: set[int] = set()
        for j, (a, oa, b, ob) in enumerate(child.normal if kind == "normal" else child.reduce):
            paths, drops = [], []
            for slot, idx, op in (("x", a, oa), ("y", b, ob)):
                used.add(idx)
                spec = dict(CELL_OPS[op])
                op_kind = spec.pop("op")
                if op_kind == "identity":
                    paths.append(states[idx])
                    drops.append(0.0)
                    continue
                nid = f"c{k}_n{j}_{slot}"
                shape = {"c": c} if op_kind == "pool" else {"c_in": c, "c_out": c}
                nodes.append({"id": nid, "op": op_kind, "inputs": [states[idx]], **shape, **spec,
                              "stride": 1, "act": "relu", "key": ("choices", f"{nid}_{op}")})
                paths.append(nid)
                drops.append(round(cfg.drop_path * ratio, 6))
            node = {"id": f"c{k}_n{j}", "op": "sum", "inputs": paths, "key": None}
            if any(drops):
                node["drop_path"] = drops
            nodes.append(node)
            states.append(node["id"])
        out = [f"c{k}_n{j}" for j in range(layout.b) if 2 + j not in used]
        if len(out) > 1:
            nodes.append({"id": f"c{k}_out", "op": "sum", "inputs": out, "key": None})
            out = [f"c{k}_out"]
        nodes.append({"id": f"c{k}", "op": "bn_act", "inputs": out, "c": c, "act": "relu",
                      "key": ("fixed", f"c{k}_bn")})
        prev = [prev[1], (f"c{k}", s, c)]
    nodes.append({"id": "head", "op": "head", "inputs": [prev[1][0]], "c_in": layout.width[-1],
                  "num_classes": task.num_classes, "key": ("fixed", "head")})
    return reaching_head(nodes)


def reaching_head(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``nodes`` without those whose output never reaches the head: a cell input no node of the
    cell reads (and, behind it, a whole cell neither later cell reads). Left in, they would be
    computed for nothing, counted by the latency model, and invisible to channel pruning (which
    traces from the output), so a narrowed net would keep their old input widths."""
    by_id = {n["id"]: n for n in nodes}
    live, todo = set(), ["head"]
    while todo:
        nid = todo.pop()
        if nid in live or nid not in by_id:
            continue
        live.add(nid)
        todo.extend(by_id[nid]["inputs"])
    return [n for n in nodes if n["id"] in live]


# The controller's initial op-logit bias on the sep convs. The authors' code starts it at 10
# under an op tanh constant of 0.44 (tanh_constant 1.1 / op_tanh_reduce 2.5): sep convs drawn
# about half the time at the start. Under the macro controller's temperature 5 and tanh
# constant 2.5 used here, 2.5 gives 2.5 · tanh(0.5) = 1.16, about two draws in three with the
# five paper ops: the search starts near the costly end of the space, so a latency budget has
# something to prune, and the controller still moves freely (tanh far from saturation).
SEP_PRIOR = 2.5


def netspec(layout: CellLayout, child: Cells) -> dict[str, Any]:
    return as_netspec(layout.task, wiring(layout, child))


class CellSupernet(nn.Module):
    """The shared cells: one module per (cell, node, slot, op) and per fixed position, and the
    controller (the architecture parameters)."""

    space_name = "micro"

    def __init__(self, cfg: ENASConfig, task: TaskSpec):
        super().__init__()
        self.cfg, self.task = cfg, task
        self.layout = layout = CellLayout(cfg, task)
        add_shared_modules(self, (wiring(layout, layout.uniform(op)) for op in layout.ops))
        self.controller = CellController(
            len(layout.ops), layout.b, cfg,
            op_bias=[SEP_PRIOR if op.startswith("sep") else 0.0 for op in layout.ops])

    def child_of(self, sample) -> Cells:
        ops = self.layout.ops

        def cell(rows):
            return [(a, ops[oa], b, ops[ob]) for a, oa, b, ob in rows]
        return Cells.make(cell(sample.normal), cell(sample.reduce))

    def netspec(self, child: Cells) -> dict[str, Any]:
        return netspec(self.layout, child)

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.choices.parameters()
        yield from self.fixed.parameters()

    def module(self, key: tuple[str, str]) -> nn.Module:
        table, name = key
        return (self.choices if table == "choices" else self.fixed)[name]

    def forward(self, x: torch.Tensor, child: Cells) -> torch.Tensor:
        env = {"input": x}
        for n in wiring(self.layout, child):
            args = [env[i] for i in n["inputs"]]
            if n["key"] is None:  # sum, in the order the netspec's Sum adds; no drop path
                out = args[0]
                for a in args[1:]:
                    out = out + a
                env[n["id"]] = out
            else:
                env[n["id"]] = self.module(n["key"])(*args)
        return env["head"]

    def inherit(self, child: Cells, live: bool = False) -> dict[str, torch.Tensor]:
        """The supernet's tensors for ``child``, keyed by its materialized net's state_dict
        names: copies (the decision owns them), or with ``live`` the supernet's own parameters
        and buffers (``SearchSpace.share``)."""
        out: dict[str, torch.Tensor] = {}
        for n in wiring(self.layout, child):
            if n["key"] is not None:
                for name, t in self.module(n["key"]).state_dict(keep_vars=live).items():
                    out[f"nodes.{n['id']}.{name}"] = t if live else t.detach().clone().cpu()
        return out
