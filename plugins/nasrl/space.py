"""NAS-RL's layer-wise conv space, a child's netspec, and the "supernet" (the controller).

A child is ``Child(kernels, filters, strides, skips)``: layer i is a ``kernels[i]``-square conv
with ``filters[i]`` filters and stride ``strides[i]``; ``skips[i]`` is a list of i bits over the
states before layer i's input (state 0 is the stem, state j + 1 is layer j's output):
``skips[i][j] = 1`` when state j feeds layer i besides state i, the previous layer.

As a network (the op vocabulary of ``nas2deploy.ops``):

* ``stem``: conv 3x3 to ``stem_width`` channels (BN, ReLU);
* layer i: ``l{i}``, conv k x k (BN, ReLU) on state i, or, with skips, on ``l{i}_in``, the sum of
  state i and the chosen earlier states. An earlier state whose channels or resolution differ is
  first projected (``l{i}_from{j}``: 1x1 conv, BN, no activation, of the stride that brings it
  to state i's resolution, in hops of at most 4).
  The paper concatenates a layer's inputs along depth; a sum keeps to the op vocabulary (no
  concat op) and to a fixed input width per layer, at the cost of the projections. The paper
  also lets the anchor choose every input, feeding the image to a layer that chose none and
  concatenating unused outputs before the classifier; here the previous layer always feeds the
  next (a chain with searched skips, as ENAS's macro space), so no layer is left unused;
* ``head``: global average pool and a linear classifier on the last layer.

There is no weight sharing: the "supernet" holds only the controller; every child is built from
its netspec and trained from scratch (``search.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from nas2deploy.method import TaskSpec
from nas2deploy.netspec import _out_hw

from .config import NASRLConfig
from .controller import Controller, LayerSample


@dataclass(frozen=True)
class Child:
    """One architecture: per layer a kernel size, a filter count and a stride (values, not ids),
    and skip bits over the earlier states."""

    kernels: tuple[int, ...]
    filters: tuple[int, ...]
    strides: tuple[int, ...]
    skips: tuple[tuple[int, ...], ...]

    @classmethod
    def make(cls, kernels, filters, strides, skips) -> "Child":
        return cls(tuple(int(k) for k in kernels), tuple(int(f) for f in filters),
                   tuple(int(s) for s in strides),
                   tuple(tuple(int(b) for b in row) for row in skips))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Child":
        return cls.make(d["kernels"], d["filters"], d["strides"], d["skips"])

    def to_dict(self) -> dict[str, Any]:
        return {"kernels": list(self.kernels), "filters": list(self.filters),
                "strides": list(self.strides), "skips": [list(r) for r in self.skips]}

    @property
    def skip_count(self) -> int:
        return sum(sum(r) for r in self.skips)


class Layout:
    """The options of each layer and the fixed strides, for one task."""

    def __init__(self, cfg: NASRLConfig, task: TaskSpec):
        self.cfg, self.task = cfg, task
        self.n = cfg.layers
        self.kernels = list(cfg.kernels)
        self.filters = list(cfg.filters)
        self.strides = list(cfg.strides) if cfg.search_strides else [1]
        self.reduce = set(cfg.resolved_reduce_layers())

    @property
    def sizes(self) -> dict[str, int]:
        return {"kernel": len(self.kernels), "filters": len(self.filters),
                "stride": len(self.strides)}

    def fixed_stride(self, i: int) -> int:
        return 2 if i in self.reduce else 1

    def child_of(self, s: LayerSample) -> Child:
        strides = ([self.strides[v] for v in s.strides] if self.cfg.search_strides
                   else [self.fixed_stride(i) for i in range(self.n)])
        return Child.make([self.kernels[v] for v in s.kernels],
                          [self.filters[v] for v in s.filters], strides, s.skips)

    def ids_of(self, child: Child) -> dict[str, list]:
        """The controller's ids of ``child`` (for scoring it by teacher forcing)."""
        return {"kernels": [self.kernels.index(k) for k in child.kernels],
                "filters": [self.filters.index(f) for f in child.filters],
                "strides": ([self.strides.index(s) for s in child.strides]
                            if self.cfg.search_strides else [0] * self.n),
                "skips": [list(r) for r in child.skips]}

    def check(self, child: Child) -> None:
        """ValueError unless ``child`` is valid for this space's grammar."""
        n = self.n
        if not (len(child.kernels) == len(child.filters) == len(child.strides)
                == len(child.skips) == n):
            raise ValueError(f"a child of this space has {n} layers")
        for i in range(n):
            if child.kernels[i] not in self.kernels:
                raise ValueError(f"layer {i}: kernel {child.kernels[i]} not in {self.kernels}")
            if child.filters[i] not in self.filters:
                raise ValueError(f"layer {i}: filters {child.filters[i]} not in {self.filters}")
            ok = (child.strides[i] in self.strides if self.cfg.search_strides
                  else child.strides[i] == self.fixed_stride(i))
            if not ok:
                raise ValueError(f"layer {i}: stride {child.strides[i]} is not allowed here")
            row = child.skips[i]
            if len(row) != i or any(b not in (0, 1) for b in row):
                raise ValueError(f"layer {i}: skips must be {i} bits (one per state before "
                                 f"the previous layer), not {list(row)}")

    def extreme(self, which: str) -> Child:
        """The largest (biggest kernel and filters, stride 1, every skip) or the smallest
        (smallest kernel and filters, largest stride, no skip)."""
        big = which == "largest"
        k = max(self.kernels) if big else min(self.kernels)
        f = max(self.filters) if big else min(self.filters)
        return self.uniform(k, f, (min if big else max)(self.strides), 1 if big else 0)

    def uniform(self, k: int, f: int, stride: int | None = None, skip: int = 1) -> Child:
        """Kernel ``k`` and ``f`` filters at every layer (the latency-table cover net)."""
        strides = ([stride if stride is not None else self.strides[0]] * self.n
                   if self.cfg.search_strides else [self.fixed_stride(i) for i in range(self.n)])
        return Child.make([k] * self.n, [f] * self.n, strides,
                          [[skip] * i for i in range(self.n)])


def netspec(layout: Layout, child: Child) -> dict[str, Any]:
    layout.check(child)
    task, cfg = layout.task, layout.cfg
    hw = _out_hw(task.input_size, 3, cfg.stem_stride)
    nodes: list[dict[str, Any]] = [
        {"id": "stem", "op": "conv", "inputs": ["input"], "c_in": task.input_channels,
         "c_out": cfg.stem_width, "k": 3, "stride": cfg.stem_stride, "act": "relu"}]
    # per state: (node id, channels, resolution, stride from the stem)
    states = [("stem", cfg.stem_width, hw, 1)]
    for i in range(layout.n):
        main, c, h, total = states[i]
        inputs = [main]
        for j, bit in enumerate(child.skips[i]):
            if not bit:
                continue
            sid, cj, hj, tj = states[j]
            ratio = total // tj
            if cj == c and ratio == 1:
                inputs.append(sid)
                continue
            src, c_src, hop = sid, cj, 0
            while True:  # 1x1 convs of stride <= 4 (the netspec bound); the first sets channels
                s = min(ratio, 4)
                nid = f"l{i}_from{j}" + (f"_{hop}" if hop else "")
                nodes.append({"id": nid, "op": "conv", "inputs": [src], "c_in": c_src,
                              "c_out": c, "k": 1, "stride": s, "act": "none"})
                hj, src, c_src, ratio, hop = _out_hw(hj, 1, s), nid, c, ratio // s, hop + 1
                if ratio == 1:
                    break
            if hj != h:  # odd kernels and power-of-2 strides: ceil(ceil(h/a)/b) = ceil(h/ab)
                raise AssertionError(f"layer {i}: skip from state {j} lands at {hj}, not {h}")
            inputs.append(src)
        x = main
        if len(inputs) > 1:
            x = f"l{i}_in"
            nodes.append({"id": x, "op": "sum", "inputs": inputs})
        k, f, s = child.kernels[i], child.filters[i], child.strides[i]
        nodes.append({"id": f"l{i}", "op": "conv", "inputs": [x], "c_in": c, "c_out": f,
                      "k": k, "stride": s, "act": "relu"})
        states.append((f"l{i}", f, _out_hw(h, k, s), total * s))
    last, c_last = states[-1][0], states[-1][1]
    nodes.append({"id": "head", "op": "head", "inputs": [last], "c_in": c_last,
                  "num_classes": task.num_classes})
    return {"input": {"channels": task.input_channels, "size": [task.input_size] * 2},
            "num_classes": task.num_classes, "nodes": nodes, "output": "head"}


class ControllerNet(nn.Module):
    """NAS-RL's "supernet": the controller (the architecture parameters) and the layout. No
    child weights live here (no weight sharing); ``record`` is the search's record of the
    children it trained (a plain attribute, set by ``search``: not part of the state_dict)."""

    def __init__(self, cfg: NASRLConfig, task: TaskSpec):
        super().__init__()
        self.cfg, self.task = cfg, task
        self.layout = Layout(cfg, task)
        self.controller = Controller(self.layout.sizes, self.layout.n, cfg)
        self.record = None

    def forward(self, *args, **kwargs):
        raise RuntimeError("NAS-RL's supernet holds no child weights: materialize a child's "
                           "netspec instead")
