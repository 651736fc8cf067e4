"""The DSO-NAS supernet: stages of fully connected DAG blocks with a scale λ on every edge.

Layout (DSO-NAS, Zhang et al. 2018, search space)::

    stem (3×3 conv-BN-ReLU, C; stride ``stem_stride``)
    stage 1: B normal blocks (width C)      ─ reduction (C → 2C, stride 2)
    stage 2: B normal blocks (width 2C)     ─ reduction (2C → 4C, stride 2)
    ...
    last stage: B normal blocks             ─ GAP → FC

A normal block is a DAG of M levels × N ops. The input of op (m, n) is Σ λ·h over the block
input and the outputs of every op at a lower level; every op output also reaches the block output
through its own λ and its own 1×1 conv; the block output is BN → ReLU of that sum, plus the
shortcut. Units are named ``s{stage}b{block}`` (normal) and ``r{stage}`` (the reduction after a
stage), 1-based, and the derived network's node ids are built from those names.

Every submodule that holds weights is one of ``nas2deploy.ops``' classes, built from the same
parameters the derived network spec gives it, so weights are inherited by copying state dicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nas2deploy.method import TaskSpec
from nas2deploy.ops import OPS, Conv, BNAct, Head

from .config import OP_TABLE, DSONASConfig

# --------------------------------------------------------------------------------------------
# the layout: plain data shared by the supernet and the derivation


@dataclass(frozen=True)
class NormalUnit:
    name: str  # "s1b1"
    width: int
    size: int  # spatial side the block works at
    conv_shortcut: bool  # first block of a stage: 1×1 conv-BN-ReLU shortcut instead of identity


@dataclass(frozen=True)
class ReductionUnit:
    name: str  # "r1"
    c_in: int
    c_out: int
    size_in: int
    size_out: int


def _half(size: int) -> int:
    return (size - 1) // 2 + 1  # a stride-2 conv with "same" padding (1×1 pad 0, 3×3 pad 1)


def layout(cfg: DSONASConfig, task: TaskSpec) -> list[NormalUnit | ReductionUnit]:
    units: list[NormalUnit | ReductionUnit] = []
    width = cfg.base_width
    size = task.input_size if cfg.stem_stride == 1 else _half(task.input_size)
    for s in range(cfg.stages):
        for b in range(cfg.blocks_per_stage):
            units.append(NormalUnit(f"s{s + 1}b{b + 1}", width, size, conv_shortcut=(b == 0)))
        if s < cfg.stages - 1:
            units.append(ReductionUnit(f"r{s + 1}", width, 2 * width, size, _half(size)))
            width, size = 2 * width, _half(size)
    return units


def final_width(cfg: DSONASConfig) -> int:
    return cfg.base_width * 2 ** (cfg.stages - 1)


def op_params(op_name: str, width: int) -> tuple[str, dict[str, Any]]:
    """(nas2deploy op, constructor parameters) of a candidate op at ``width`` channels."""
    op, extra = OP_TABLE[op_name]
    if op == "pool":
        return op, {"c": width, **extra, "stride": 1, "act": "relu"}
    return op, {"c_in": width, "c_out": width, **extra, "stride": 1, "act": "relu"}


# The 1×1 conv of an output edge, the shortcut, the reduction branches and the stem, as
# nas2deploy "conv" parameters. The output-edge conv has no BN; its bias is held at zero (the
# paper's 1×1 has none).
def proj_params(width: int) -> dict[str, Any]:
    return {"c_in": width, "c_out": width, "k": 1, "stride": 1, "bn": False, "act": "none"}


def shortcut_params(width: int) -> dict[str, Any]:
    return {"c_in": width, "c_out": width, "k": 1, "stride": 1, "act": "relu"}


def reduction_params(c_in: int, c_out: int, k: int) -> dict[str, Any]:
    return {"c_in": c_in, "c_out": c_out, "k": k, "stride": 2, "act": "relu"}


def stem_params(c_in: int, width: int, stride: int) -> dict[str, Any]:
    return {"c_in": c_in, "c_out": width, "k": 3, "stride": stride, "act": "relu"}


# --------------------------------------------------------------------------------------------
# modules


class NormalBlock(nn.Module):
    """One DAG block. λ: ``lam_in[m]`` is N × (1 + N·m): row n = op (m, n), column 0 = block
    input, column 1 + N·m' + n' = op (m', n'); ``lam_out`` is M × N, one per op's output edge.

    The paper puts a λ on every edge, the level-1 input edges included (128 per block at M=N=4);
    the authors' code gives level-1 ops no input λ (124). We follow the paper.
    """

    def __init__(self, unit: NormalUnit, op_names: list[str], levels: int):
        super().__init__()
        self.unit = unit
        c = unit.width
        self.levels, self.n_ops = levels, len(op_names)
        self.ops = nn.ModuleList(
            nn.ModuleList(OPS[op](**p) for op, p in (op_params(o, c) for o in op_names))
            for _ in range(levels))
        self.proj = nn.ModuleList(
            nn.ModuleList(Conv(**proj_params(c)) for _ in op_names) for _ in range(levels))
        for row in self.proj:
            for pr in row:
                nn.init.zeros_(pr.conv.bias)
                pr.conv.bias.requires_grad_(False)
        self.bn = BNAct(c, "relu")
        self.shortcut = Conv(**shortcut_params(c)) if unit.conv_shortcut else None
        n = self.n_ops
        self.lam_in = nn.ParameterList(nn.Parameter(torch.ones(n, 1 + n * m)) for m in range(levels))
        self.lam_out = nn.Parameter(torch.ones(levels, n))

    def arch_parameters(self) -> list[nn.Parameter]:
        return [*self.lam_in, self.lam_out]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Features are handled channels-last (NHWC), which is 2-4x faster for these small
        # depthwise convs and pools on CPU; a permuted view costs nothing when the tensor is
        # already stored that way.
        srcs = [x.permute(0, 2, 3, 1)]
        for m in range(self.levels):
            # All inputs of level m at once: (N × S) @ (S × everything), one GEMM instead of
            # N·S scaled adds.
            # (Under autocast the sources can mix float16/bfloat16 op outputs with float32 ones,
            # which the stack promotes; tensordot is no autocast op and wants one dtype: λ is
            # cast to the stack's, a no-op in float32.)
            stacked = torch.stack(srcs, 0)
            inputs = torch.tensordot(self.lam_in[m].to(stacked.dtype), stacked, dims=1).unbind(0)
            for op, inp in zip(self.ops[m], inputs):
                srcs.append(op(inp.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
        # Σ λ_i · conv1x1_i(h_i) (equivalent to DSO-NAS's concat + 1×1, Zhang et al. 2018, search
        # space) as one batched matmul over the op outputs stacked on a new leading axis, then a sum
        # over that axis.
        # (A 1×1 conv over their channel concatenation computes the same, but hands each op a
        # strided slice of its gradient, which sends every last-level op's backward down slow
        # generic kernels.)
        b, hgt, wid, c = srcs[1].shape
        feats = torch.stack([h.reshape(-1, c) for h in srcs[1:]], 0)  # K × (B·H·W) × C
        convs = [pr.conv for row in self.proj for pr in row]
        lam = self.lam_out.reshape(-1, 1, 1)
        kernels = torch.stack([cv.weight.reshape(c, c).t() for cv in convs], 0) * lam  # K × C × C
        bias = (torch.stack([cv.bias for cv in convs], 0) * lam.reshape(-1, 1)).sum(0)
        y = (torch.bmm(feats, kernels).sum(0) + bias).reshape(b, hgt, wid, c).permute(0, 3, 1, 2)
        y = self.bn(y)
        return y + (self.shortcut(x) if self.shortcut is not None else x)


class ReductionBlock(nn.Module):
    """λa·(1×1 conv s2 BN ReLU) + λb·(3×3 conv s2 BN ReLU), doubling the width."""

    def __init__(self, unit: ReductionUnit):
        super().__init__()
        self.unit = unit
        self.a = Conv(**reduction_params(unit.c_in, unit.c_out, 1))
        self.b = Conv(**reduction_params(unit.c_in, unit.c_out, 3))
        self.lam = nn.Parameter(torch.ones(2))  # [λ of the 1×1 branch, λ of the 3×3 branch]

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.lam]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu":
            # The block before hands over a channels-last (NHWC) view. On the CPU, torch
            # 2.13's oneDNN backward of a strided 1x1 conv over a channels-last input corrupted
            # the heap with 2 threads (a batch of 3 or 53, 8 -> 16 channels, 16 x 16: "free():
            # invalid next size"); an NCHW copy of this small map avoids that kernel.
            x = x.contiguous()
        return self.lam[0] * self.a(x) + self.lam[1] * self.b(x)


class DSONASSupernet(nn.Module):
    """The whole supernet. ``arch_parameters()`` (every λ) and ``weight_parameters()`` (every
    trained weight) are disjoint; BN scales are held at 1 and are in neither (DSO-NAS, Zhang et
    al. 2018, optimization and training: a trainable BN scale would absorb the λ)."""

    def __init__(self, cfg: DSONASConfig, task: TaskSpec):
        super().__init__()
        # a private copy: the space must not drift (from_dict: every value explicit, so a preset
        # cannot override a value set to its class default)
        self.cfg = DSONASConfig.from_dict(cfg.to_dict())
        self.task = task
        self.layout = layout(self.cfg, task)
        self.stem = Conv(**stem_params(task.input_channels, self.cfg.base_width, self.cfg.stem_stride))
        self.units = nn.ModuleList(
            NormalBlock(u, self.cfg.ops, self.cfg.levels) if isinstance(u, NormalUnit)
            else ReductionBlock(u) for u in self.layout)
        self.head = Head(final_width(self.cfg), task.num_classes)
        for mod in self.modules():
            if isinstance(mod, nn.BatchNorm2d):
                nn.init.ones_(mod.weight)
                mod.weight.requires_grad_(False)
        self.seed: int | None = None  # the seed of the last search (recorded in the Architecture)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for unit in self.units:
            x = unit(x)
        return self.head(x)

    def arch_parameters(self) -> list[nn.Parameter]:
        return [p for u in self.units for p in u.arch_parameters()]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch and p.requires_grad]

    def node_modules(self) -> dict[str, nn.Module]:
        """Derived-network node id -> the supernet module whose weights it inherits."""
        out: dict[str, nn.Module] = {"stem": self.stem, "head": self.head}
        for unit in self.units:
            name = unit.unit.name
            if isinstance(unit, NormalBlock):
                for m in range(unit.levels):
                    for n in range(unit.n_ops):
                        out[f"{name}_op_{m + 1}_{n + 1}"] = unit.ops[m][n]
                        out[f"{name}_proj_{m + 1}_{n + 1}"] = unit.proj[m][n]
                out[f"{name}_bn"] = unit.bn
                if unit.shortcut is not None:
                    out[f"{name}_short"] = unit.shortcut
            else:
                out[f"{name}_c1"] = unit.a
                out[f"{name}_c3"] = unit.b
        return out

    def lambda_values(self) -> list[Any]:
        """λ as plain nested lists, one entry per unit: (lam_in list, lam_out) or [λa, λb]."""
        vals: list[Any] = []
        for unit in self.units:
            if isinstance(unit, NormalBlock):
                vals.append(([t.detach().tolist() for t in unit.lam_in], unit.lam_out.detach().tolist()))
            else:
                vals.append(unit.lam.detach().tolist())
        return vals


# --------------------------------------------------------------------------------------------
# cost of every edge (for the adaptive γ)


def _macs(module: nn.Module, c: int, size: int, device: torch.device | str = "cpu") -> int:
    """MACs of one forward of ``module`` (on ``device``) on a 1×c×size×size input, by torch's
    FLOP counter.

    The counter leaves pooling out (as MAC figures in the literature do), which would exempt
    pool ops from any cost-weighted penalty; a pool is charged one accumulate/compare per window
    element per output value instead.
    """
    was = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            out = module(torch.zeros(1, c, size, size, device=device))
    finally:
        module.train(was)
    macs = int(counter.get_total_flops() // 2)
    pool = getattr(module, "pool", None)
    if isinstance(pool, (nn.MaxPool2d, nn.AvgPool2d)):
        k = pool.kernel_size if isinstance(pool.kernel_size, int) else pool.kernel_size[0]
        macs += k * k * out.numel()
    return macs


def edge_costs(supernet: DSONASSupernet) -> list[torch.Tensor]:
    """MACs of every edge, shaped like ``supernet.arch_parameters()``.

    An input edge costs the MACs of the op it feeds; an output edge the MACs of its 1×1 conv; a
    reduction edge the MACs of its branch's conv. Computed once per distinct (op, width, size),
    on the supernet's device; the costs are CPU tensors.
    """
    cache: dict[tuple, int] = {}
    device = next(supernet.parameters()).device

    def cost(key: tuple, module: nn.Module, c: int, size: int) -> int:
        if key not in cache:
            cache[key] = _macs(module, c, size, device)
        return cache[key]

    costs: list[torch.Tensor] = []
    for unit in supernet.units:
        u = unit.unit
        if isinstance(unit, NormalBlock):
            op_cost = [[cost((name, u.width, u.size), unit.ops[m][n], u.width, u.size)
                        for n, name in enumerate(supernet.cfg.ops)] for m in range(unit.levels)]
            for m in range(unit.levels):
                costs.append(torch.tensor(op_cost[m], dtype=torch.float32)[:, None]
                             .expand(unit.n_ops, 1 + unit.n_ops * m).clone())
            pc = cost(("proj", u.width, u.size), unit.proj[0][0], u.width, u.size)
            costs.append(torch.full((unit.levels, unit.n_ops), float(pc)))
        else:
            costs.append(torch.tensor([
                float(cost(("red1", u.c_in, u.c_out, u.size_in), unit.a, u.c_in, u.size_in)),
                float(cost(("red3", u.c_in, u.c_out, u.size_in), unit.b, u.c_in, u.size_in))]))
    return costs
