"""Network specs: the plain-data description of a materialized subnet, and the module built from it.

A spec is JSON-able data::

    {"input": {"channels": 1, "size": [32, 32]}, "num_classes": 10,
     "nodes": [{"id": "stem", "op": "conv", "inputs": ["input"], "c_in": 1, "c_out": 16, ...},
               ...],
     "output": "head"}

Nodes are in topological order; each names its inputs (earlier node ids or ``"input"``). A
``GraphNet`` evaluates them in order. Everything a method decided (which ops, edges, blocks and
channels survive) is in the spec, so ``build_network(spec)`` reproduces the subnet exactly.
The bounds checks and size estimates of a spec are in ``speccheck.py`` (re-exported here).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from .ops import OPS
from .speccheck import (MAX_ACTIVATION, MAX_CHANNELS, MAX_CLASSES, MAX_ID_LENGTH,  # noqa: F401
                        MAX_INPUT_HW, MAX_KERNEL, MAX_NODES, MAX_PARAMS, MAX_STRIDE, POOL_KINDS,
                        SpecError, _out_hw, _show, check_against_safetensors, estimate_params,
                        estimate_state_numel, validate_spec)


@dataclass(frozen=True)
class OpSignature:
    """What latency tables and cost counters key on: an op and the shapes it sees, never its position."""

    type: str
    h: int
    w: int
    c_in: int
    c_out: int
    mid: int = 0
    kernel: int = 0
    stride: int = 1
    se: int = 0
    act: str = "none"

    def key(self) -> str:
        return (f"{self.type}|{self.h}x{self.w}|{self.c_in}>{self.c_out}|mid{self.mid}|k{self.kernel}"
                f"|s{self.stride}|se{self.se}|{self.act}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class GraphNet(nn.Module):
    """A materialized subnet: standard torch modules wired by a spec, evaluated in order."""

    def __init__(self, spec: dict[str, Any]):
        super().__init__()
        validate_spec(spec)
        self.input_channels = int(spec["input"]["channels"])
        self.input_size = tuple(int(s) for s in spec["input"]["size"])
        self.num_classes = int(spec["num_classes"])
        self.order = [n["id"] for n in spec["nodes"]]
        self.wiring = {n["id"]: list(n["inputs"]) for n in spec["nodes"]}
        self.output = spec["output"]
        self.nodes = nn.ModuleDict()
        for n in spec["nodes"]:
            params = {k: v for k, v in n.items() if k not in ("id", "op", "inputs")}
            try:
                self.nodes[n["id"]] = OPS[n["op"]](**params)
            except (TypeError, ValueError) as exc:
                raise SpecError(f"node {n['id']!r} ({n['op']}): {exc}") from exc

    def forward(self, x):
        env = {"input": x}
        for nid in self.order:
            env[nid] = self.nodes[nid](*[env[i] for i in self.wiring[nid]])
        return env[self.output]

    def spec(self) -> dict[str, Any]:
        """The spec of this net as it is now (after any channel surgery)."""
        nodes = []
        for nid in self.order:
            mod = self.nodes[nid]
            nodes.append({"id": nid, "op": mod.op, "inputs": list(self.wiring[nid]), **mod.spec()})
        return {"input": {"channels": self.input_channels, "size": list(self.input_size)},
                "num_classes": self.num_classes, "nodes": nodes, "output": self.output}

    def example_input(self, batch: int = 1) -> torch.Tensor:
        return torch.randn(batch, self.input_channels, *self.input_size)


def build_network(spec: dict[str, Any]) -> GraphNet:
    return GraphNet(spec)


def signatures(spec: dict[str, Any]) -> dict[str, OpSignature]:
    """OpSignature of every node, with the spatial size it sees."""
    spec = GraphNet(spec).spec()  # every op parameter filled in, defaults included
    hw = {"input": tuple(spec["input"]["size"])}
    chans = {"input": spec["input"]["channels"]}
    out: dict[str, OpSignature] = {}
    for n in spec["nodes"]:
        h, w = hw[n["inputs"][0]]
        op = n["op"]
        k, s = int(n.get("k", 0)), int(n.get("stride", 1))
        c_in = int(n.get("c_in", n.get("c", chans[n["inputs"][0]])))
        if op in ("conv", "sep", "mbconv", "pool"):  # spatial ops: output size follows k, stride
            c_out = int(n.get("c_out", n.get("c", c_in)))
            kind = {"pool": f"{n.get('kind')}pool",
                    "mbconv": "mbconv" if n.get("expand", True) else "mbconv_noexpand"}.get(op, op)
            sig = OpSignature(
                type=kind, h=h, w=w, c_in=c_in,
                c_out=c_out, mid=int(n.get("mid", 0)), kernel=k, stride=s, se=int(n.get("se", 0)),
                act=n.get("act", "none"))
            hw[n["id"]] = (_out_hw(h, k, s), _out_hw(w, k, s))
        elif op == "head":
            c_out = int(n["num_classes"])
            sig = OpSignature(type="head", h=h, w=w, c_in=c_in, c_out=c_out)
            hw[n["id"]] = (1, 1)
        else:
            c_out = c_in
            sig = OpSignature(type=op, h=h, w=w, c_in=c_in, c_out=c_out, mid=len(n["inputs"]),
                              act=n.get("act", "none"))
            hw[n["id"]] = (h, w)
        chans[n["id"]] = c_out
        out[n["id"]] = sig
    return out


def node_from_signature(sig: OpSignature, node_id: str = "op") -> dict[str, Any]:
    """A node spec that builds the op a signature describes (for timing or counting it alone)."""
    base = {"id": node_id, "inputs": ["input"]}
    if sig.type == "conv":
        return {**base, "op": "conv", "c_in": sig.c_in, "c_out": sig.c_out, "k": sig.kernel,
                "stride": sig.stride, "act": sig.act}
    if sig.type == "sep":
        return {**base, "op": "sep", "c_in": sig.c_in, "c_out": sig.c_out, "k": sig.kernel,
                "stride": sig.stride, "act": sig.act}
    if sig.type in ("maxpool", "avgpool"):
        return {**base, "op": "pool", "c": sig.c_in, "kind": sig.type[:3], "k": sig.kernel,
                "stride": sig.stride, "act": sig.act}
    if sig.type in ("mbconv", "mbconv_noexpand"):
        return {**base, "op": "mbconv", "c_in": sig.c_in, "c_out": sig.c_out, "mid": sig.mid,
                "k": sig.kernel, "stride": sig.stride, "expand": sig.type == "mbconv",
                "se": sig.se, "act": sig.act}
    if sig.type == "head":
        return {**base, "op": "head", "c_in": sig.c_in, "num_classes": sig.c_out}
    if sig.type == "bn_act":
        return {**base, "op": "bn_act", "c": sig.c_in, "act": sig.act}
    if sig.type in ("sum", "identity"):
        n = max(1, sig.mid) if sig.type == "sum" else 1
        return {**base, "op": sig.type, "inputs": ["input"] * n}
    raise ValueError(f"no op builds signature type {sig.type!r}")


def single_op_spec(sig: OpSignature) -> dict[str, Any]:
    """A one-node network computing just the op of ``sig`` on an input of its shape."""
    return {"input": {"channels": sig.c_in, "size": [sig.h, sig.w]},
            "num_classes": sig.c_out, "nodes": [node_from_signature(sig)], "output": "op"}
