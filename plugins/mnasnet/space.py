"""MnasNet's factorized hierarchical space and its shared-weight supernet.

A child is one ``Choice`` per block: conv op, kernel, SE ratio, skip op and layer count (the
block's base + a delta, at least 1); the layers of a block share it. The first layer of block
i takes block i-1's channels and block i's stride, the others keep block i's channels at
stride 1. As a network (the op vocabulary of ``nas2deploy.ops``):

* ``stem``: conv 3x3 to ``stem_channels``;
* layer ``b{i}_{j}`` of a block: a regular conv (``conv``: k x k, BN, act) or an ``mbconv``
  (expansion 1 for the separable conv, 3 or 6; its SE reduces to ``max(1, round(c_in x
  ratio))`` channels). The identity skip is added where shapes allow (stride 1, same
  channels): ``mbconv`` adds it itself, a conv through a ``sum`` node ``b{i}_{j}_add``. With
  the skip op "none" an mbconv whose shapes allow a residual is written as its parts, three
  plain convs (``_e`` the 1x1 expansion, ``_d`` the depthwise k x k, then the 1x1 projection
  without act), which the runtime runs as the same kernels without the add;
* ``head``: global average pool and a linear classifier.

Two choices the vocabulary cannot express are folded (``canonical``): a regular conv has no SE
(``ops.Conv`` has none; SE lives only inside ``ops.MBConv``), and an mbconv with SE keeps its
residual where shapes allow (it cannot be written as parts). The controller still samples every
choice; a child is identified by its canonical form.

The supernet holds ONE module per (block, layer, op, kernel, SE) (``layers["b{i}_{j}_{op}_k{k}
_se{r}"]``: an ``ops.Conv`` or an ``ops.MBConv``) and one per fixed position (stem, head). A
child's mbconv layer written as parts runs the parts of the same module (``expand``, ``dw``,
``project``), so both skip ops share it. ``wiring`` is the single description the supernet's
forward, the netspec and the inherited/shared weights are built from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from nas2deploy.method import TaskSpec
from nas2deploy.ops import OPS as OP_CLASSES

from .config import CONV_OPS, MnasNetConfig
from .controller import Controller

# a part of an ops.MBConv run as a plain conv: (its Sequential, the Conv node's names for it)
PARTS = {"expand": ("conv", "bn"), "dw": ("conv", "bn"), "project": ("conv", "bn")}


@dataclass(frozen=True)
class Choice:
    """One block's decisions."""

    op: str
    k: int
    se: float
    skip: str
    layers: int

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "k": self.k, "se": self.se, "skip": self.skip,
                "layers": self.layers}


Child = tuple[Choice, ...]


def se_key(ratio: float) -> str:
    return f"{ratio:g}".replace(".", "p")


class Layout:
    """Blocks, channels and the choice lists of the space for one task."""

    # the factorized decisions per block, in the order the controller takes them
    DECISIONS = ("op", "k", "se", "skip", "layers")

    def __init__(self, cfg: MnasNetConfig, task: TaskSpec):
        self.cfg, self.task = cfg, task
        self.blocks = [tuple(b) for b in cfg.blocks]
        self.options: dict[str, list[Any]] = {
            "op": list(cfg.ops), "k": list(cfg.kernels), "se": [float(r) for r in cfg.se_ratios],
            "skip": list(cfg.skips), "layers": list(cfg.layer_deltas)}

    def layer_counts(self, i: int) -> list[int]:
        """The layer counts block i can take (base + each delta, at least 1), ascending."""
        base = self.blocks[i][0]
        return sorted({max(1, base + d) for d in self.options["layers"]})

    def max_layers(self, i: int) -> int:
        return self.layer_counts(i)[-1]

    def choice(self, i: int, idx: list[int]) -> Choice:
        """Block i's canonical Choice from decision indices (one per ``DECISIONS``)."""
        o = self.options
        layers = max(1, self.blocks[i][0] + o["layers"][idx[4]])
        return canonical(Choice(o["op"][idx[0]], o["k"][idx[1]], o["se"][idx[2]],
                                o["skip"][idx[3]], layers))

    def check(self, child: Child) -> None:
        """ValueError unless ``child`` is a canonical child of this space."""
        if len(child) != len(self.blocks):
            raise ValueError(f"a child of this space has {len(self.blocks)} blocks, not "
                             f"{len(child)}")
        o = self.options
        for i, c in enumerate(child):
            ok = (c.op in o["op"] and c.k in o["k"] and c.se in o["se"] + [0.0]
                  and c.skip in o["skip"] + ["identity"] and c.layers in self.layer_counts(i))
            if not ok or canonical(c) != c:
                raise ValueError(f"block {i}: {c.to_dict()} is not a choice of this space")

    def uniform(self, op: str, k: int, se: float, skip: str, deepest: bool = True) -> Child:
        return tuple(canonical(Choice(op, k, se, skip, self.max_layers(i) if deepest
                                      else self.layer_counts(i)[0]))
                     for i in range(len(self.blocks)))

    def uniforms(self, deepest: bool = True) -> list[Child]:
        """Every uniform child (one choice in every block), canonical, without repeats."""
        o, seen = self.options, {}
        for op in o["op"]:
            for k in o["k"]:
                for se in o["se"]:
                    for skip in o["skip"]:
                        seen.setdefault(self.uniform(op, k, se, skip, deepest), None)
        return list(seen)


def canonical(c: Choice) -> Choice:
    """The choice as the op vocabulary builds it (see the module docstring)."""
    if CONV_OPS[c.op] is None and c.se:
        c = Choice(c.op, c.k, 0.0, c.skip, c.layers)
    if CONV_OPS[c.op] is not None and c.se and c.skip == "none":
        c = Choice(c.op, c.k, c.se, "identity", c.layers)
    return c


def child_dict(child: Child) -> list[dict[str, Any]]:
    return [c.to_dict() for c in child]


def child_from(blocks: Any) -> Child:
    """A child from its JSON record (``decisions["blocks"]``); ValueError/KeyError/TypeError
    when it is not one."""
    return tuple(Choice(str(b["op"]), int(b["k"]), float(b["se"]), str(b["skip"]),
                        int(b["layers"])) for b in blocks)


def layer_key(i: int, j: int, c: Choice) -> str:
    return f"b{i}_{j}_{c.op}_k{c.k}_se{se_key(c.se)}"


def wiring(layout: Layout, child: Child) -> list[dict[str, Any]]:
    """The child's nodes in order: netspec fields plus ``key``: (supernet module name, part or
    None for the whole module), or None for a parameter-free sum."""
    layout.check(child)
    cfg, task = layout.cfg, layout.task
    act = cfg.act
    nodes = [{"id": "stem", "op": "conv", "inputs": ["input"], "c_in": task.input_channels,
              "c_out": cfg.stem_channels, "k": 3, "stride": cfg.stem_stride, "act": act,
              "key": ("stem", None)}]
    x, c_prev = "stem", cfg.stem_channels
    for i, (c, (_, c_out, stride)) in enumerate(zip(child, layout.blocks)):
        for j in range(c.layers):
            s, c_in = (stride, c_prev) if j == 0 else (1, c_out)
            key, nid = layer_key(i, j, c), f"b{i}_{j}"
            residual = s == 1 and c_in == c_out
            e = CONV_OPS[c.op]
            if e is None:
                nodes.append({"id": nid, "op": "conv", "inputs": [x], "c_in": c_in,
                              "c_out": c_out, "k": c.k, "stride": s, "act": act,
                              "key": (key, None)})
                if residual and c.skip == "identity":
                    nodes.append({"id": f"{nid}_add", "op": "sum", "inputs": [nid, x],
                                  "key": None})
                    nid = f"{nid}_add"
            elif residual and c.skip == "none":  # an mbconv without its add: its parts
                mid = c_in * e
                if e > 1:
                    nodes.append({"id": f"{nid}_e", "op": "conv", "inputs": [x], "c_in": c_in,
                                  "c_out": mid, "k": 1, "stride": 1, "act": act,
                                  "key": (key, "expand")})
                    x = f"{nid}_e"
                nodes.append({"id": f"{nid}_d", "op": "conv", "inputs": [x], "c_in": mid,
                              "c_out": mid, "k": c.k, "stride": s, "groups": mid, "act": act,
                              "key": (key, "dw")})
                nodes.append({"id": nid, "op": "conv", "inputs": [f"{nid}_d"], "c_in": mid,
                              "c_out": c_out, "k": 1, "stride": 1, "act": "none",
                              "key": (key, "project")})
            else:
                nodes.append({"id": nid, "op": "mbconv", "inputs": [x], "c_in": c_in,
                              "c_out": c_out, "mid": c_in * e, "k": c.k, "stride": s,
                              "expand": e > 1, "se": se_channels(c_in, c.se), "act": act,
                              "key": (key, None)})
            x = nid
        c_prev = c_out
    nodes.append({"id": "head", "op": "head", "inputs": [x], "c_in": c_prev,
                  "num_classes": task.num_classes, "key": ("head", None)})
    return nodes


def se_channels(c_in: int, ratio: float) -> int:
    """SE's reduced width, on the layer's input channels as in the paper's code."""
    return max(1, round(c_in * ratio)) if ratio > 0 else 0


def netspec(layout: Layout, child: Child) -> dict[str, Any]:
    task = layout.task
    nodes = [{k: v for k, v in n.items() if k != "key"} for n in wiring(layout, child)]
    return {"input": {"channels": task.input_channels, "size": [task.input_size] * 2},
            "num_classes": task.num_classes, "nodes": nodes, "output": "head"}


def _module(n: dict[str, Any]) -> nn.Module:
    params = {k: v for k, v in n.items() if k not in ("id", "op", "inputs", "key")}
    return OP_CLASSES[n["op"]](**params)


class MnasSupernet(nn.Module):
    """The shared modules and the controller (the architecture parameters)."""

    def __init__(self, cfg: MnasNetConfig, task: TaskSpec):
        super().__init__()
        self.cfg, self.task = cfg, task
        self.layout = layout = Layout(cfg, task)
        self.layers = nn.ModuleDict()
        self.fixed = nn.ModuleDict()
        # skip "identity" builds every (block, layer, op, kernel, SE) as a whole module
        for child in layout.uniforms():
            for n in wiring(layout, tuple(canonical(Choice(c.op, c.k, c.se, "identity", c.layers))
                                          for c in child)):
                if n["key"] is None:
                    continue
                name, _ = n["key"]
                target = self.fixed if name in ("stem", "head") else self.layers
                if name not in target:
                    target[name] = _module(n)
        self.controller = Controller(layout, cfg)
        self._extremes: tuple[Child, Child] | None = None

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.layers.parameters()
        yield from self.fixed.parameters()

    def module(self, key: tuple[str, str | None]) -> nn.Module:
        name, part = key
        m = self.fixed[name] if name in ("stem", "head") else self.layers[name]
        return m if part is None else getattr(m, part)

    def forward(self, x: torch.Tensor, child: Child) -> torch.Tensor:
        env = {"input": x}
        for n in wiring(self.layout, child):
            args = [env[i] for i in n["inputs"]]
            if n["key"] is None:  # sum, in the order the netspec's Sum adds
                env[n["id"]] = args[0] + args[1]
            else:
                env[n["id"]] = self.module(n["key"])(*args)
        return env["head"]

    def tensors(self, child: Child, live: bool = False) -> dict[str, torch.Tensor]:
        """The supernet's tensors for ``child`` keyed by its materialized net's state_dict names
        (``nodes.{id}.{param}``): CPU copies, or with ``live`` the supernet's own parameters and
        buffers (training the materialized net through them trains the supernet)."""
        out: dict[str, torch.Tensor] = {}
        for n in wiring(self.layout, child):
            if n["key"] is None:
                continue
            mod = self.module(n["key"])
            part = n["key"][1]
            for name, t in mod.state_dict(keep_vars=live).items():
                if part is not None:  # Sequential(conv, bn[, act]) -> Conv's conv / bn
                    idx, rest = name.split(".", 1)
                    name = f"{PARTS[part][int(idx)]}.{rest}"
                out[f"nodes.{n['id']}.{name}"] = t if live else t.detach().clone().cpu()
        return out
