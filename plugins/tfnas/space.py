"""The TF-NAS supernet: fixed stem, searchable MBConv stages with sink-connected depth, fixed tail.

Layout (TF-NAS, Hu et al., ECCV 2020, search space)::

    stem    3×3 conv-BN-ReLU (stride ``stem_stride``) → MBConv(k3, e1, SE) ``stem_mb``
    stage s blocks s{s}_b1 … s{s}_b{n}: each holds the 8 candidate ops (MBConv k{3,5} × e{3,6} ×
            {no SE, SE}); the first block has the stage's stride and channel change
    tail    1×1 conv-BN-hswish → global average pool → linear (``head``)

Every candidate op keeps its weights at the *largest* width (mid = 4·c_in for e3, 8·c_in for e6)
and computes with an index set of active mid channels (``ElasticMBConv.active``): expand rows,
depthwise filters, SE columns/rows and project columns are gathered by index, so a masked
channel is not computed, not trained, and comes back bit-exactly when it is re-activated. The
fixed parts (stem, stem block, tail, head) are ``nas2deploy.ops`` modules built from the very
parameters the derived network spec gives them, so their weights are inherited by copying.

Node ids of the derived network: ``stem``, ``stem_mb``, ``s{stage}_b{block}`` (1-based), ``tail``,
``head``.
"""

from __future__ import annotations

import contextlib

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nas2deploy.method import TaskSpec
from nas2deploy.netspec import OpSignature, _out_hw
from nas2deploy.ops import Conv, Head, MBConv, SqueezeExcite, make_act

from .config import OP_NAMES, TFNASConfig, op_def

# --------------------------------------------------------------------------------------------
# layout: plain data shared by the supernet, the latency tables and the derivation


@dataclass(frozen=True)
class BlockInfo:
    name: str  # "s1_b1"
    stage: int  # 0-based
    index: int  # 0-based within the stage (global block order is the list order)
    c_in: int
    c_out: int
    stride: int
    act: str
    h: int  # input spatial size the block sees
    w: int

    def mid_range(self, op: int) -> tuple[int, int, int]:
        """(min, initial, max) mid channels of candidate ``op`` (TF-NAS, Hu et al., ECCV 2020,
        search space)."""
        _, e, _ = op_def(OP_NAMES[op])
        hi = (4 if e == 3 else 8) * self.c_in
        return max(1, hi // 2), e * self.c_in, hi

    def se_channels(self, op: int) -> int:
        _, e, se = op_def(OP_NAMES[op])
        return 0 if not se else (self.c_in if e == 3 else 2 * self.c_in)

    def signature(self, op: int, mid: int) -> OpSignature:
        k, _, _ = op_def(OP_NAMES[op])
        return OpSignature(type="mbconv", h=self.h, w=self.w, c_in=self.c_in, c_out=self.c_out,
                           mid=int(mid), kernel=k, stride=self.stride, se=self.se_channels(op),
                           act=self.act)

    def node(self, op: int, mid: int, inputs: list[str]) -> dict[str, Any]:
        k, _, _ = op_def(OP_NAMES[op])
        return {"id": self.name, "op": "mbconv", "inputs": inputs, "c_in": self.c_in,
                "c_out": self.c_out, "mid": int(mid), "k": k, "stride": self.stride,
                "expand": True, "se": self.se_channels(op), "act": self.act}


@dataclass(frozen=True)
class Layout:
    input_channels: int
    input_size: int
    num_classes: int
    fixed_nodes: tuple[dict[str, Any], ...]  # stem, stem_mb (before the stages)
    tail_nodes: tuple[dict[str, Any], ...]  # tail, head (after the stages); inputs filled later
    stages: tuple[tuple[BlockInfo, ...], ...]

    @property
    def blocks(self) -> list[BlockInfo]:
        return [b for st in self.stages for b in st]

    def fixed_signatures(self) -> list[OpSignature]:
        """Signatures of the always-present nodes (stem, stem block, tail conv, head)."""
        cin = self.input_channels
        s0 = self.fixed_nodes[0]
        h = self.input_size
        sigs = [OpSignature("conv", h, h, cin, s0["c_out"], 0, 3, s0["stride"], 0, "relu")]
        h = _out_hw(h, 3, s0["stride"])
        sb = self.fixed_nodes[1]
        sigs.append(OpSignature("mbconv_noexpand", h, h, sb["c_in"], sb["c_out"], sb["mid"], 3, 1,
                                sb["se"], "relu"))
        last = self.stages[-1][-1]
        h = _out_hw(last.h, 3, last.stride)
        t = self.tail_nodes[0]
        sigs.append(OpSignature("conv", h, h, t["c_in"], t["c_out"], 0, 1, 1, 0, "hswish"))
        sigs.append(OpSignature("head", h, h, t["c_out"], self.num_classes))
        return sigs


def make_layout(cfg: TFNASConfig, task: TaskSpec) -> Layout:
    size = task.input_size
    stem = {"id": "stem", "op": "conv", "inputs": ["input"], "c_in": task.input_channels,
            "c_out": cfg.stem_channels, "k": 3, "stride": cfg.stem_stride, "act": "relu"}
    size = _out_hw(size, 3, cfg.stem_stride)
    stem_mb = {"id": "stem_mb", "op": "mbconv", "inputs": ["stem"], "c_in": cfg.stem_channels,
               "c_out": cfg.stem_block_channels, "mid": cfg.stem_channels, "k": 3, "stride": 1,
               "expand": False, "se": cfg.stem_se, "act": "relu"}
    c = cfg.stem_block_channels
    stages = []
    for s, (n, c_out, stride, act) in enumerate(cfg.stages):
        blocks = []
        for b in range(n):
            st = stride if b == 0 else 1
            blocks.append(BlockInfo(f"s{s + 1}_b{b + 1}", s, b, c, c_out, st, act, size, size))
            size, c = _out_hw(size, 3, st), c_out
        stages.append(tuple(blocks))
    tail = {"id": "tail", "op": "conv", "c_in": c, "c_out": cfg.tail_channels, "k": 1, "stride": 1,
            "act": "hswish"}
    head = {"id": "head", "op": "head", "inputs": ["tail"], "c_in": cfg.tail_channels,
            "num_classes": task.num_classes}
    return Layout(task.input_channels, task.input_size, task.num_classes, (stem, stem_mb),
                  (tail, head), tuple(stages))


# --------------------------------------------------------------------------------------------
# modules


def _bn(x: torch.Tensor, bn: nn.BatchNorm2d, idx: torch.Tensor | None) -> torch.Tensor:
    """BatchNorm over the channels ``idx`` of ``bn`` only; only their running stats are updated."""
    if idx is None:
        return bn(x)
    rm, rv = bn.running_mean[idx], bn.running_var[idx]  # copies, updated in place below
    w = bn.weight[idx] if bn.weight is not None else None
    b = bn.bias[idx] if bn.bias is not None else None
    out = F.batch_norm(x, rm, rv, w, b, bn.training, bn.momentum if bn.momentum is not None else 0.1,
                       bn.eps)
    if bn.training:
        with torch.no_grad():
            bn.running_mean[idx] = rm
            bn.running_var[idx] = rv
            bn.num_batches_tracked += 1
    return out


class ElasticMBConv(nn.Module):
    """One candidate op at full width, computing with its active mid channels only.

    Submodule names follow ``nas2deploy.ops.MBConv`` (``expand.0``, ``dw.0``, ``se.reduce``, ...),
    which ``export_state`` slices into. BN is ``affine=False`` during search (TF-NAS, Hu et al.,
    ECCV 2020, search space).
    """

    def __init__(self, info: BlockInfo, op: int, affine: bool = False):
        super().__init__()
        k, e, _ = op_def(OP_NAMES[op])
        self.info, self.op_index, self.k, self.e = info, op, k, e
        self.stride, self.act_name = info.stride, info.act
        self.mid_min, mid0, self.mid_max = info.mid_range(op)
        self.se_ch = info.se_channels(op)
        c_in, c_out, m = info.c_in, info.c_out, self.mid_max
        self.residual = info.stride == 1 and c_in == c_out
        self.expand = nn.Sequential(nn.Conv2d(c_in, m, 1, bias=False), nn.BatchNorm2d(m, affine=affine),
                                    make_act(info.act))
        self.dw = nn.Sequential(nn.Conv2d(m, m, k, info.stride, k // 2, groups=m, bias=False),
                                nn.BatchNorm2d(m, affine=affine), make_act(info.act))
        self.se = SqueezeExcite(m, self.se_ch) if self.se_ch else None
        self.project = nn.Sequential(nn.Conv2d(m, c_out, 1, bias=False),
                                     nn.BatchNorm2d(c_out, affine=affine))
        self.register_buffer("active", torch.arange(mid0), persistent=False)
        self.set_width(mid0)

    # --- width -------------------------------------------------------------------------------

    @property
    def mid(self) -> int:
        return int(self.active.numel())

    def importance(self) -> torch.Tensor:
        """L1 norm of every depthwise filter (the channel ranking of TF-NAS's elasticity-scaling
        strategy, Hu et al., ECCV 2020)."""
        return self.dw[0].weight.detach().abs().sum((1, 2, 3))

    @torch.no_grad()
    def channels(self, mid: int) -> torch.Tensor:
        """The ``mid`` channels with the largest depthwise L1 norm (ties: lower index), sorted."""
        mid = int(mid)
        if not self.mid_min <= mid <= self.mid_max:
            raise ValueError(f"width {mid} outside [{self.mid_min}, {self.mid_max}]")
        # stable descending order: a stable sort of -importance keeps lower indices first on ties
        order = torch.sort(-self.importance(), stable=True).indices
        return torch.sort(order[:mid]).values

    @torch.no_grad()
    def set_width(self, mid: int) -> None:
        """Keep the ``mid`` channels ``channels`` ranks first."""
        self.active = self.channels(mid)

    def inactive(self) -> torch.Tensor:
        keep = torch.ones(self.mid_max, dtype=torch.bool, device=self.active.device)
        keep[self.active] = False
        return keep.nonzero().flatten()

    def mid_tensors(self) -> list[tuple[torch.Tensor, int]]:
        """(tensor, dim) of every parameter indexed by mid channels."""
        out = [(self.expand[0].weight, 0), (self.dw[0].weight, 0), (self.project[0].weight, 1)]
        for bn in (self.expand[1], self.dw[1]):
            if bn.weight is not None:
                out += [(bn.weight, 0), (bn.bias, 0)]
        if self.se is not None:
            out += [(self.se.reduce.weight, 1), (self.se.expand.weight, 0), (self.se.expand.bias, 0)]
        return out

    # --- forward -----------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = None if self.mid == self.mid_max else self.active
        w1 = self.expand[0].weight
        h = F.conv2d(x, w1 if idx is None else w1.index_select(0, idx))
        h = self.expand[2](_bn(h, self.expand[1], idx))
        w2 = self.dw[0].weight
        w2 = w2 if idx is None else w2.index_select(0, idx)
        h = F.conv2d(h, w2, None, self.stride, self.k // 2, 1, w2.shape[0])
        h = self.dw[2](_bn(h, self.dw[1], idx))
        if self.se is not None:
            r, e = self.se.reduce, self.se.expand
            s = h.mean((2, 3), keepdim=True)
            rw = r.weight if idx is None else r.weight.index_select(1, idx)
            s = torch.relu(F.conv2d(s, rw, r.bias))
            ew, eb = (e.weight, e.bias) if idx is None else (e.weight.index_select(0, idx),
                                                             e.bias.index_select(0, idx))
            h = h * torch.sigmoid(F.conv2d(s, ew, eb))
        w3 = self.project[0].weight
        h = F.conv2d(h, w3 if idx is None else w3.index_select(1, idx))
        h = _bn(h, self.project[1], None)
        return x + h if self.residual else h

    # --- materialization ---------------------------------------------------------------------

    def export_state(self, mid: int | None = None, live: bool = False) -> dict[str, torch.Tensor]:
        """State dict of the ``nas2deploy.ops.MBConv`` this op becomes at its active width (or
        at ``mid``: the channels ``channels(mid)`` ranks first): those channels index-selected
        out of every mid-indexed tensor. Copies; ``live``: differentiable selections of the
        supernet's own tensors (``SearchSpace.share``)."""
        idx = self.active if mid is None or int(mid) == self.mid else self.channels(mid)
        with contextlib.nullcontext() if live else torch.no_grad():
            out = self._state(idx)
        return out if live else {k: v.detach().clone() for k, v in out.items()}

    def _state(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}

        def bn_state(prefix: str, bn: nn.BatchNorm2d, sel: torch.Tensor | None) -> None:
            n = bn.num_features if sel is None else len(sel)
            take = (lambda t: t) if sel is None else (lambda t: t.index_select(0, sel))
            dev = bn.running_mean.device
            out[f"{prefix}.weight"] = take(bn.weight) if bn.weight is not None else torch.ones(n, device=dev)
            out[f"{prefix}.bias"] = take(bn.bias) if bn.bias is not None else torch.zeros(n, device=dev)
            out[f"{prefix}.running_mean"] = take(bn.running_mean)
            out[f"{prefix}.running_var"] = take(bn.running_var)
            out[f"{prefix}.num_batches_tracked"] = bn.num_batches_tracked

        out["expand.0.weight"] = self.expand[0].weight.index_select(0, idx)
        bn_state("expand.1", self.expand[1], idx)
        out["dw.0.weight"] = self.dw[0].weight.index_select(0, idx)
        bn_state("dw.1", self.dw[1], idx)
        if self.se is not None:
            out["se.reduce.weight"] = self.se.reduce.weight.index_select(1, idx)
            out["se.reduce.bias"] = self.se.reduce.bias
            out["se.expand.weight"] = self.se.expand.weight.index_select(0, idx)
            out["se.expand.bias"] = self.se.expand.bias.index_select(0, idx)
        out["project.0.weight"] = self.project[0].weight.index_select(1, idx)
        bn_state("project.1", self.project[1], None)
        return out


class SearchBlock(nn.Module):
    """The eight candidate ops of one block position."""

    def __init__(self, info: BlockInfo, affine: bool = False):
        super().__init__()
        self.info = info
        self.ops = nn.ModuleList(ElasticMBConv(info, o, affine) for o in range(len(OP_NAMES)))

    @torch.no_grad()
    def nested_init(self) -> None:
        """Start every op from slices of one random draw (the largest op's): the expand rows,
        depthwise filters (centre-cropped for k3), SE and project columns an op has are the first
        ones of the largest op, copied. At the start every path through the supernet then computes
        nearly the same function, and single-path training gets going in tens of steps instead of
        thousands (the TF-NAS paper's search runs 90 ImageNet-100 epochs and needs no such thing;
        the CPU budget here is a few hundred steps)."""
        src = max(self.ops, key=lambda o: (o.mid_max, o.k, o.se_ch))
        for op in self.ops:
            if op is src:
                continue
            n, pad = op.mid_max, (src.k - op.k) // 2
            op.expand[0].weight.copy_(src.expand[0].weight[:n])
            dw = src.dw[0].weight[:n]
            op.dw[0].weight.copy_(dw[:, :, pad:pad + op.k, pad:pad + op.k])
            op.project[0].weight.copy_(src.project[0].weight[:, :n])
            if op.se is not None and src.se is not None:
                r = op.se_ch
                op.se.reduce.weight.copy_(src.se.reduce.weight[:r, :n])
                op.se.reduce.bias.copy_(src.se.reduce.bias[:r])
                op.se.expand.weight.copy_(src.se.expand.weight[:n, :r])
                op.se.expand.bias.copy_(src.se.expand.bias[:n])
            op.set_width(op.mid)

    def forward(self, x: torch.Tensor, op: int | None = None,
                weights: torch.Tensor | None = None) -> torch.Tensor:
        if weights is None:
            return self.ops[op](x)
        out = None
        for o, w in enumerate(weights):
            if not w.requires_grad and float(w) == 0.0:
                continue
            y = w * self.ops[o](x)
            out = y if out is None else out + y
        return out


class TFNASSupernet(nn.Module):
    """The whole supernet with α (per block, 8 log-probabilities) and β (per stage, depth logits).

    ``forward(x)`` runs the parsed architecture (argmax α, depth argmax β + 1); pass ``ops``
    (one op index per block: a single path) or ``weights`` (n_blocks × 8: all ops mixed) and
    ``depth_probs`` (per stage, probabilities over depths 1..n: the sink-connected output
    Σ_d p_d · x_d) for the search's forwards.
    """

    def __init__(self, cfg: TFNASConfig, task: TaskSpec):
        super().__init__()
        self.cfg = TFNASConfig.from_dict({k: v for k, v in cfg.to_dict().items()})  # private copy
        self.task = task
        self.layout = make_layout(self.cfg, task)
        self.seed: int | None = None
        fixed = {n["id"]: {k: v for k, v in n.items() if k not in ("id", "op", "inputs")}
                 for n in (*self.layout.fixed_nodes, *self.layout.tail_nodes)}
        self.stem = Conv(**fixed["stem"])
        self.stem_mb = MBConv(**fixed["stem_mb"])
        self.stages = nn.ModuleList(nn.ModuleList(SearchBlock(b) for b in st) for st in self.layout.stages)
        self.tail = Conv(**fixed["tail"])
        self.head = Head(**fixed["head"])
        n_blocks = len(self.layout.blocks)
        self.alpha = nn.Parameter(torch.full((n_blocks, len(OP_NAMES)), math.log(1.0 / len(OP_NAMES))))
        self.betas = nn.ParameterList(nn.Parameter(torch.zeros(len(st))) for st in self.layout.stages)
        if self.cfg.shared_init:
            for blk in self.blocks():
                blk.nested_init()
        # Channels-last weights and activations: depthwise convolutions and their backward run
        # 1.5-2x faster on CPU that way.
        self.to(memory_format=torch.channels_last)

    # --- parameter groups --------------------------------------------------------------------

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alpha, *self.betas]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def blocks(self) -> list[SearchBlock]:
        return [b for st in self.stages for b in st]

    def fixed_modules(self) -> dict[str, nn.Module]:
        return {"stem": self.stem, "stem_mb": self.stem_mb, "tail": self.tail, "head": self.head}

    # --- the parsed architecture -------------------------------------------------------------

    @torch.no_grad()
    def parsed_ops(self) -> list[int]:
        return self.alpha.argmax(1).tolist()  # one read (a GPU sync), not one per block

    @torch.no_grad()
    def parsed_depths(self) -> list[int]:
        return [int(b.argmax()) + 1 for b in self.betas]

    def mids(self) -> list[list[int]]:
        """Current width of every op of every block."""
        return [[op.mid for op in b.ops] for b in self.blocks()]

    def one_hot_depths(self, depths: list[int]) -> list[torch.Tensor]:
        out = []
        for beta, d in zip(self.betas, depths):
            p = torch.zeros(len(beta), device=beta.device)
            p[d - 1] = 1.0
            out.append(p)
        return out

    # --- forward -----------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, ops: list[int] | None = None,
                weights: torch.Tensor | None = None,
                depth_probs: list[torch.Tensor] | None = None) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        if ops is None and weights is None:
            ops = self.parsed_ops()
            if depth_probs is None:
                depth_probs = self.one_hot_depths(self.parsed_depths())
        if depth_probs is None:
            depth_probs = [torch.softmax(b, 0) for b in self.betas]
        h = self.stem_mb(self.stem(x))
        i = 0
        for stage, p in zip(self.stages, depth_probs):
            h = self.stage_forward(stage, h, p, i, ops, weights)
            i += len(stage)
        return self.head(self.tail(h))

    def stage_forward(self, stage: nn.ModuleList, x: torch.Tensor, p: torch.Tensor, first: int,
                      ops: list[int] | None, weights: torch.Tensor | None) -> torch.Tensor:
        """Sink-connected stage: Σ_d p_d · x_d, x_d the output after d blocks. Blocks past the
        last depth of non-zero probability are not run, and a zero-probability term (when p
        carries no gradient) is left out, so a one-hot p gives exactly x_d."""
        nz = [d for d in range(len(stage)) if p.requires_grad or float(p[d]) != 0.0]
        last = max(nz) if nz else 0
        h, out = x, None
        for d in range(last + 1):
            j = first + d
            h = stage[d](h, op=None if ops is None else ops[j],
                         weights=None if weights is None else weights[j])
            if d in nz:
                if not p.requires_grad and float(p[d]) == 1.0:
                    term = h
                else:
                    term = p[d] * h
                out = term if out is None else out + term
        return out
