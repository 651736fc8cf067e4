"""DSO-NAS configuration: the space (levels, ops, stages, widths) and the search recipe."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from nas2deploy.errors import UsageError
from nas2deploy.method import PresetConfig
from nas2deploy.netspec import MAX_CHANNELS, MAX_PARAMS

# Candidate ops a DAG level may hold: name -> (nas2deploy.ops op, its parameters besides width).
# Every op is stride 1 and keeps the channel count, Conv-BN-ReLU order (DSO-NAS, Zhang et al.
# 2018, search space).
OP_TABLE: dict[str, tuple[str, dict[str, Any]]] = {
    "sep3": ("sep", {"k": 3}),
    "sep5": ("sep", {"k": 5}),
    "sep7": ("sep", {"k": 7}),
    "conv1": ("conv", {"k": 1}),
    "conv3": ("conv", {"k": 3}),
    "maxpool": ("pool", {"kind": "max", "k": 3}),
    "avgpool": ("pool", {"kind": "avg", "k": 3}),
}

ADAPTIVE_COSTS = ("flops", "mac", "none")

# Generous but finite bounds on the options that size the supernet or the run.
MAX_LEVELS = 16
MAX_BLOCKS_PER_STAGE = 64
MAX_PRUNE_EVERY = 10_000
MAX_STEP_RATIO = 1000


def supernet_params(levels: int, ops: list[str], stages: int, blocks_per_stage: int,
                    base_width: int) -> int:
    """Rough weight count of the supernet, from the options alone, to refuse a space too
    large to build before building it."""
    total = 27 * base_width
    for s in range(stages):
        w = base_width * 2 ** s
        per_op = 0
        for name in ops:
            op, extra = OP_TABLE[name]
            k = extra.get("k", 1)
            per_op += {"sep": w * k * k + w * w, "conv": w * w * k * k}.get(op, 0) + w * w
        total += blocks_per_stage * levels * per_op + w * w  # the DAG's edges, the shortcut
        if s < stages - 1:
            total += 10 * w * 2 * w  # the 1×1 and 3×3 branches of the reduction block
    return total + base_width * 2 ** (stages - 1) * 1000  # a classifier of up to 1000 classes


def _default_ops() -> list[str]:
    return ["sep3", "sep5", "maxpool", "avgpool"]


# The paper's CIFAR-10 search space (DSO-NAS, Zhang et al. 2018, search space and CIFAR-10
# experiments): 3 stages of 8 DAG blocks (two reductions), M = 4 levels of the 4 ops
# (sep 3×3, sep 5×5, max and average pool 3×3) per block, a stride-1 stem on the 32×32 input
# and 48 channels in the first stage (doubled at each reduction). About 24 blocks × 32 ops at up
# to 32×32: a GPU space (the default one is sized for two CPU cores).
CIFAR_SPACE: dict[str, Any] = {
    "levels": 4,
    "ops": ["sep3", "sep5", "maxpool", "avgpool"],
    "stages": 3,
    "blocks_per_stage": 8,
    "base_width": 48,
    "stem_stride": 1,
}

PRESETS: dict[str, dict[str, Any]] = {"cifar": CIFAR_SPACE}


@dataclass
class DSONASConfig(PresetConfig):
    """Options of the DSO-NAS search (all have defaults; see ``validate`` for the ranges).

    The defaults are sized for the project's default run (digits, 1×32×32, ~630 + ~630 search
    images, batch 64, two CPU cores): the paper's CIFAR space is 3 stages × 8 blocks with M=4 at
    width 48, which is two orders of magnitude more compute than that run can afford.
    ``preset = "cifar"`` selects that space; explicitly given space options override a preset's
    values.
    """

    PRESETS = PRESETS
    OWNER = "dsonas"

    preset: str | None = None  # "cifar": the paper's CIFAR-10 space; explicit space options win

    # --- the space (these define the supernet and enter the space fingerprint) ---
    levels: int = 3  # M: levels of the DAG in a block (paper: 4)
    ops: list[str] = field(default_factory=_default_ops)  # N ops per level, names from OP_TABLE
    stages: int = 3  # a reduction block sits between consecutive stages
    blocks_per_stage: int = 1  # normal (DAG) blocks per stage (paper CIFAR: 8)
    base_width: int = 16  # channels of the stem and the first stage; doubled by every reduction
    # Stride of the 3×3 stem. The paper's CIFAR stem has stride 1; 2 quarters the cost of the
    # first (costliest) stage, which is what lets the default search fit a CPU minute, and loses
    # nothing on digits (8×8 images upsampled to 32×32).
    stem_stride: int = 2

    # --- sparsity ---
    gamma: float = 0.02  # ℓ1 weight on λ (per edge, scaled by adaptive_cost)
    # "flops" (paper, adaptive FLOPs): γ_b = γ·FLOPs_b^t / FLOPs_b, the share of block b's
    # FLOPs still alive at step t, the same for every edge of the block; "mac": γ_e = γ·MACs_e /
    # the costliest alive edge's MACs (the paper's adaptive MAC, normalised by what is alive);
    # "none": γ_e = γ.
    adaptive_cost: str = "flops"
    # Not in the paper (which meets its budget by a width multiplier after the search): γ scaled
    # by the decided architecture's estimated latency over ctx.aim × ctx.budget_ms, in
    # [1/4, 4], recomputed every search epoch, so a tighter budget prunes harder. Off by
    # default: with a uniform γ per block a whole block's λ shrink together and a few epochs
    # at 2.6× pruned 144 edges to 8 at once, below a budget the decision cannot grow back to.
    budget_pressure: bool = False
    prune_every: int = 1  # search epochs between rebuilds (dead λ zeroed for good); 0 = never

    # --- schedule ---
    pretrain_fraction: float = 0.3  # share of the epoch budget spent pre-training with λ ≡ 1
    w_steps_per_arch_step: int = 1  # W:λ step ratio (paper: 1 on CIFAR, 4 on ImageNet)

    # --- weights: NAG (SGD, Nesterov) ---
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4

    # --- λ: APG-NAG (proximal, Nesterov) ---
    arch_lr: float = 0.1
    arch_momentum: float = 0.9
    grad_clip: float = 2.0  # element-wise clip of every gradient, W and λ (0 = off)

    # --- derivation ---
    keep_scales: bool = True  # surviving λ become constant coefficients of the derived sums
    # Not in the paper (a width multiplier meets its budget): a decided architecture estimated
    # over ctx.aim × ctx.budget_ms continues the ℓ1 path (the sparser lever's ranking of the
    # surviving edges) until its estimate is just under that; thinning channels stops paying
    # on small nets that per-op overhead dominates.
    land_on_budget: bool = True

    @classmethod
    def cifar(cls, **overrides: Any) -> "DSONASConfig":
        """The paper's CIFAR-10 space (with the search recipe's defaults)."""
        return cls.from_dict({"preset": "cifar", **overrides})

    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise UsageError(f"dsonas: {msg}")

        need(self.preset is None or (isinstance(self.preset, str) and self.preset in PRESETS),
             f"unknown preset {self.preset!r}; choose from {', '.join(PRESETS)}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        need(is_int(self.levels) and 1 <= self.levels <= MAX_LEVELS,
             f"levels must be an integer in 1..{MAX_LEVELS}, not {self.levels!r}")
        need(isinstance(self.ops, (list, tuple)) and len(self.ops) >= 1,
             f"ops must be a non-empty list of op names, not {self.ops!r}")
        for op in self.ops:
            need(isinstance(op, str) and op in OP_TABLE,
                 f"unknown op {op!r}; choose from {', '.join(OP_TABLE)}")
        need(len(set(self.ops)) == len(self.ops), f"ops has duplicates: {self.ops!r}")
        need(is_int(self.stages) and self.stages >= 1, f"stages must be an integer >= 1, not {self.stages!r}")
        need(is_int(self.blocks_per_stage) and 0 <= self.blocks_per_stage <= MAX_BLOCKS_PER_STAGE,
             f"blocks_per_stage must be an integer in 0..{MAX_BLOCKS_PER_STAGE}, not "
             f"{self.blocks_per_stage!r}")
        need(is_int(self.base_width) and 1 <= self.base_width <= MAX_CHANNELS,
             f"base_width must be an integer in 1..{MAX_CHANNELS}, not {self.base_width!r}")
        need(self.stages <= 16 and self.base_width * 2 ** (self.stages - 1) <= MAX_CHANNELS,
             f"{self.stages} stages double base_width {self.base_width} to more than "
             f"{MAX_CHANNELS} channels; use fewer stages or a smaller base_width")
        need(self.stem_stride in (1, 2) and is_int(self.stem_stride),
             f"stem_stride must be 1 or 2, not {self.stem_stride!r}")
        need(is_num(self.gamma) and self.gamma >= 0, f"gamma must be a number >= 0, not {self.gamma!r}")
        need(self.adaptive_cost in ADAPTIVE_COSTS,
             f"adaptive_cost must be one of {', '.join(ADAPTIVE_COSTS)}, not {self.adaptive_cost!r}")
        need(is_int(self.prune_every) and 0 <= self.prune_every <= MAX_PRUNE_EVERY,
             f"prune_every must be an integer in 0..{MAX_PRUNE_EVERY}, not {self.prune_every!r}")
        need(is_num(self.pretrain_fraction) and 0 <= self.pretrain_fraction < 1,
             f"pretrain_fraction must be in [0, 1), not {self.pretrain_fraction!r}")
        need(is_int(self.w_steps_per_arch_step)
             and 1 <= self.w_steps_per_arch_step <= MAX_STEP_RATIO,
             f"w_steps_per_arch_step must be an integer in 1..{MAX_STEP_RATIO}, not "
             f"{self.w_steps_per_arch_step!r}")
        for name in ("lr", "arch_lr"):
            v = getattr(self, name)
            need(is_num(v) and v > 0, f"{name} must be a number > 0, not {v!r}")
        for name in ("momentum", "arch_momentum"):
            v = getattr(self, name)
            need(is_num(v) and 0 <= v < 1, f"{name} must be in [0, 1), not {v!r}")
        need(is_num(self.weight_decay) and self.weight_decay >= 0,
             f"weight_decay must be a number >= 0, not {self.weight_decay!r}")
        need(is_num(self.grad_clip) and self.grad_clip >= 0,
             f"grad_clip must be a number >= 0 (0 = off), not {self.grad_clip!r}")
        need(isinstance(self.keep_scales, bool), f"keep_scales must be true or false, not {self.keep_scales!r}")
        need(isinstance(self.land_on_budget, bool),
             f"land_on_budget must be true or false, not {self.land_on_budget!r}")
        need(isinstance(self.budget_pressure, bool),
             f"budget_pressure must be true or false, not {self.budget_pressure!r}")
        self.ops = list(self.ops)
        params = supernet_params(self.levels, self.ops, self.stages, self.blocks_per_stage,
                                 self.base_width)
        need(params <= MAX_PARAMS,
             f"the space holds ~{params:,} parameters, more than the {MAX_PARAMS:,} a supernet "
             f"may have; use fewer levels, blocks or ops, or a smaller base_width")

    def space_dict(self) -> dict[str, Any]:
        """The fields that define the supernet (and so the space fingerprint)."""
        return {"levels": self.levels, "ops": list(self.ops), "stages": self.stages,
                "blocks_per_stage": self.blocks_per_stage, "base_width": self.base_width,
                "stem_stride": self.stem_stride}
