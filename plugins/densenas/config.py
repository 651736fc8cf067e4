"""DenseNAS configuration: the routing space (preset or the user's own) and the search recipe."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from nas2deploy.errors import UsageError
from nas2deploy.method import MethodConfig
from nas2deploy.netspec import MAX_CHANNELS, MAX_KERNEL, MAX_PARAMS

# The spaces a user can name with ``space = "..."``. Any field also given in the config overrides
# the preset's value. ``reductions`` is each routing block's total downsampling relative to the
# input (the stem's stride included), so a space is defined independently of the input size.
PRESETS: dict[str, dict[str, Any]] = {
    # The MobileNetV2-based ImageNet space of DenseNAS (Fang et al., CVPR 2020; groups, edges and
    # paths as in the authors' code's config): 16 routing blocks, feature maps 56, 28×3, 14×6, 7×6
    # at 224², groups 1 | 2,2,2 | 3,3,3 | 4,4,4 | 5,5,5 | 6,6,6 (the stem is group 0 and the final
    # 1×1 conv group 7), 3 stacked layers in blocks 1–13, none in 14–16, tail 1×1 conv to 1984. 54
    # edges, 15,456 stem-to-output paths.
    "imagenet": {
        "widths": [24, 32, 40, 48, 56, 64, 72, 96, 112, 128, 160, 176, 192, 320, 352, 384],
        "groups": [1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5, 6, 6, 6],
        "reductions": [4, 8, 8, 8, 16, 16, 16, 16, 16, 16, 32, 32, 32, 32, 32, 32],
        "layers": [3] * 13 + [0] * 3,
        "stem_channels": 16, "stem_stride": 2, "final_channels": 1984, "max_successors": 4,
    },
    # A small space for 32×32 inputs (the project's default run: digits, two CPU cores). The same
    # rules, scaled down: the stem and group 1 halve the input once each (to 8×8, the digits'
    # native resolution), group 2 offers more width there, group 3 halves it once more and
    # group 4 offers more width (and depth) at that last resolution. With up to 4 successors
    # this gives 16 edges and 27 paths; one stacked layer (six MBConvs or skip) in blocks 1–5.
    "small": {
        "widths": [16, 24, 32, 40, 48, 64, 80],
        "groups": [1, 2, 2, 3, 3, 4, 4],
        "reductions": [4, 4, 4, 8, 8, 8, 8],
        "layers": [1, 1, 1, 1, 1, 0, 0],
        "stem_channels": 16, "stem_stride": 2, "final_channels": 192, "max_successors": 4,
    },
}

PENALTIES = ("target", "paper", "hinge")

# Generous but finite bounds on the options that size the supernet or the run.
MAX_BLOCKS = 64
MAX_GROUP = 64
MAX_REDUCTION = 1024
MAX_LAYERS = 16
MAX_SUCCESSORS = 16
MAX_EXPANSION = 16
MAX_TOP_K = 100
# Arch steps of the paper's schedule (≈100 arch epochs × ≈74 steps of 352 images on the 20% of
# ImageNet-100 it validates on): the reference the automatic arch learning rate is scaled from.
PAPER_ARCH_STEPS = 7400
PAPER_ARCH_LR = 3e-4
PAPER_LR, PAPER_BATCH = 0.2, 352


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def supernet_params(p: dict[str, Any]) -> int:
    """Rough weight count of the supernet of a resolved space (every incoming edge and stacked
    layer holding every MBConv candidate at its block's width), from the options alone, to
    refuse a space too large to build before building it."""
    per_width = [sum(c * t * (2 * c + k * k) for k in p["kernels"] for t in p["expansions"])
                 for c in p["widths"]]
    total = sum((p["max_successors"] + n) * w for w, n in zip(per_width, p["layers"]))
    stem, final = p["stem_channels"], p["final_channels"]
    return total + stem * (27 + 9 + stem) + max(p["widths"]) * final + final * 1000


def _default_kernels() -> list[int]:
    return [3, 5, 7]


def _default_expansions() -> list[int]:
    return [3, 6]


@dataclass
class DenseNASConfig(MethodConfig):
    """Options of the DenseNAS search. Every field has a default; ``validate`` checks ranges.

    Space fields left at ``None`` take the preset's value (see ``PRESETS``).
    """

    # --- the space (enters the space fingerprint) ---
    space: str = "small"  # preset: "small" (32×32, CPU) or "imagenet" (the paper's, 224×224)
    widths: list[int] | None = None  # channels of each routing block, in order
    groups: list[int] | None = None  # group id of each block: starts at 1, steps by 0 or 1
    reductions: list[int] | None = None  # total downsampling of each block (stem included)
    layers: list[int] | int | None = None  # stacked (searchable-depth) layers per block
    stem_channels: int | None = None
    stem_stride: int | None = None  # 1 or 2
    final_channels: int | None = None  # the tail's 1×1 conv (paper: 1984)
    max_successors: int | None = None  # edges per block under the paper's rule (paper: 4)
    kernels: list[int] = field(default_factory=_default_kernels)  # MBConv candidates: k × t
    expansions: list[int] = field(default_factory=_default_expansions)
    bn_affine: bool = False  # paper: BN without affine parameters during search
    # Candidates of a mixed op start as one function (see DenseNASSupernet.nest_candidates);
    # not in the paper, and what lets single-path sampling train in a few hundred steps.
    nested_init: bool = True

    # --- cost term: CE + λ·log_τ(latency) ---
    latency_lambda: float = 0.15  # paper (MBV2, ms): λ = 0.15, τ = 15
    latency_tau: float = 15.0
    # "target": λ·|log_τ(C / T)|, T = ctx.aim × ctx.budget_ms: the paper's pull above T and the
    # same pull upwards below it, so the searched path follows the budget both ways (a one-sided
    # term left the search on cross-entropy alone under the budget: one path at every budget).
    # "paper": λ·log_τ(C) always, whatever the budget. "hinge": λ·log_τ(max(C, budget)): the
    # paper's pull above the budget, none below it. Without a budget (or with MACs as costs)
    # all three are the paper's.
    penalty: str = "target"
    skip_cost_fraction: float = 0.1  # skip costs this share of the layer's cheapest MBConv

    # --- schedule (fractions of ctx.epochs; paper: 50 warm-up, selection from 120, of 150) ---
    warmup_fraction: float = 1 / 3
    select_from: float = 0.8
    top_k: int = 2  # derived architectures of the best supernet-validation epochs kept

    # --- weights: SGD with momentum, cosine to lr·lr_min_ratio (paper 0.2 → 1e-4 at batch 352) ---
    lr: float | None = None  # None: the paper's 0.2 at batch 352, scaled linearly to the batch
    lr_min_ratio: float = 5e-4
    momentum: float = 0.9
    weight_decay: float = 4e-5

    # --- architecture: Adam, betas (0.5, 0.999), weight decay 1e-3 (paper) ---
    # None: the paper's 3e-4 scaled by (paper's ≈7,400 arch steps / this run's), kept in
    # [3e-4, 0.05]: a short run needs a larger step to move the distribution as far.
    arch_lr: float | None = None
    arch_weight_decay: float = 1e-3

    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise UsageError(f"densenas: {msg}")

        need(isinstance(self.space, str) and self.space in PRESETS,
             f"space must be one of {', '.join(PRESETS)}, not {self.space!r}")

        def int_list(name: str, lo: int, hi: int) -> None:
            v = getattr(self, name)
            if v is None:
                return
            need(isinstance(v, (list, tuple)) and 1 <= len(v) <= MAX_BLOCKS
                 and all(_is_int(x) and lo <= x <= hi for x in v),
                 f"{name} must be a list of 1..{MAX_BLOCKS} integers in {lo}..{hi}, not {v!r:.80}")
            setattr(self, name, [int(x) for x in v])

        int_list("widths", 1, MAX_CHANNELS)
        int_list("groups", 1, MAX_GROUP)
        int_list("reductions", 1, MAX_REDUCTION)
        if self.layers is not None and not (_is_int(self.layers)
                                            and 0 <= self.layers <= MAX_LAYERS):
            int_list("layers", 0, MAX_LAYERS)
        for name, hi in (("stem_channels", MAX_CHANNELS), ("final_channels", MAX_CHANNELS),
                         ("max_successors", MAX_SUCCESSORS)):
            v = getattr(self, name)
            need(v is None or (_is_int(v) and 1 <= v <= hi),
                 f"{name} must be an integer in 1..{hi}, not {v!r}")
        need(self.stem_stride is None or self.stem_stride in (1, 2) and _is_int(self.stem_stride),
             f"stem_stride must be 1 or 2, not {self.stem_stride!r}")
        need(isinstance(self.kernels, (list, tuple)) and len(self.kernels) >= 1
             and all(_is_int(k) and 1 <= k <= MAX_KERNEL and k % 2 == 1 for k in self.kernels)
             and len(set(self.kernels)) == len(self.kernels),
             f"kernels must be distinct odd integers in 1..{MAX_KERNEL}, not {self.kernels!r:.80}")
        need(isinstance(self.expansions, (list, tuple)) and len(self.expansions) >= 1
             and all(_is_int(t) and 1 <= t <= MAX_EXPANSION for t in self.expansions)
             and len(set(self.expansions)) == len(self.expansions),
             f"expansions must be distinct integers in 1..{MAX_EXPANSION}, not "
             f"{self.expansions!r:.80}")
        self.kernels, self.expansions = [int(k) for k in self.kernels], [int(t) for t in self.expansions]
        for name in ("bn_affine", "nested_init"):
            need(isinstance(getattr(self, name), bool), f"{name} must be true or false, not {getattr(self, name)!r}")

        need(_is_num(self.latency_lambda) and self.latency_lambda >= 0,
             f"latency_lambda must be a number >= 0, not {self.latency_lambda!r}")
        need(_is_num(self.latency_tau) and self.latency_tau > 1,
             f"latency_tau must be a number > 1 (the base of the log), not {self.latency_tau!r}")
        need(self.penalty in PENALTIES, f"penalty must be one of {', '.join(PENALTIES)}, not {self.penalty!r}")
        need(_is_num(self.skip_cost_fraction) and 0 < self.skip_cost_fraction <= 1,
             f"skip_cost_fraction must be in (0, 1], not {self.skip_cost_fraction!r}")
        need(_is_num(self.warmup_fraction) and 0 <= self.warmup_fraction < 1,
             f"warmup_fraction must be in [0, 1), not {self.warmup_fraction!r}")
        need(_is_num(self.select_from) and 0 <= self.select_from <= 1,
             f"select_from must be in [0, 1], not {self.select_from!r}")
        need(_is_int(self.top_k) and 1 <= self.top_k <= MAX_TOP_K,
             f"top_k must be an integer in 1..{MAX_TOP_K}, not {self.top_k!r}")
        need(self.lr is None or (_is_num(self.lr) and self.lr > 0),
             f"lr must be a number > 0 (or left out for automatic), not {self.lr!r}")
        need(_is_num(self.lr_min_ratio) and 0 <= self.lr_min_ratio <= 1,
             f"lr_min_ratio must be in [0, 1], not {self.lr_min_ratio!r}")
        need(_is_num(self.momentum) and 0 <= self.momentum < 1, f"momentum must be in [0, 1), not {self.momentum!r}")
        for name in ("weight_decay", "arch_weight_decay"):
            v = getattr(self, name)
            need(_is_num(v) and v >= 0, f"{name} must be a number >= 0, not {v!r}")
        need(self.arch_lr is None or (_is_num(self.arch_lr) and self.arch_lr > 0),
             f"arch_lr must be a number > 0 (or left out for automatic), not {self.arch_lr!r}")
        p = self.resolved()  # the space itself: lengths, group and resolution rules
        params = supernet_params(p)
        need(params <= MAX_PARAMS,
             f"the space holds ~{params:,} parameters, more than the {MAX_PARAMS:,} a supernet "
             f"may have; use fewer or narrower blocks, kernels or expansions")

    # ------------------------------------------------------------------------------------

    def resolved(self) -> dict[str, Any]:
        """The space's defining values: the preset with this config's overrides, checked."""
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise UsageError(f"densenas: {msg}")

        p = dict(PRESETS[self.space])
        for name in ("widths", "groups", "reductions", "layers", "stem_channels", "stem_stride",
                     "final_channels", "max_successors"):
            v = getattr(self, name)
            if v is not None:
                p[name] = v
        n = len(p["widths"])
        if _is_int(p["layers"]):
            p["layers"] = [int(p["layers"])] * n
        p["layers"] = list(p["layers"])
        for name in ("groups", "reductions", "layers"):
            need(len(p[name]) == n, f"{name} has {len(p[name])} entries for {n} widths "
                 f"(one per routing block; override them together)")
        g, r = p["groups"], p["reductions"]
        need(g[0] == 1, f"groups must start at 1 (the stem is group 0), not {g[0]}")
        for a, b in zip(g, g[1:]):
            need(b - a in (0, 1), f"groups must step by 0 or 1 from block to block, not {g}")
        for red in r:
            need(red & (red - 1) == 0, f"reductions must be powers of 2, not {r}")
        need(r[0] // p["stem_stride"] in (1, 2) and r[0] % p["stem_stride"] == 0,
             f"the first block's reduction ({r[0]}) must be 1 or 2 times the stem stride "
             f"({p['stem_stride']})")
        for i in range(1, n):
            need(r[i] % r[i - 1] == 0 and r[i] // r[i - 1] in (1, 2),
                 f"reductions must stay or double from block to block, not {r}")
            if g[i] == g[i - 1]:
                need(r[i] == r[i - 1], f"blocks of one group must share a resolution ({g}, {r})")
        p["kernels"], p["expansions"] = list(self.kernels), list(self.expansions)
        p["bn_affine"] = bool(self.bn_affine)
        return p

    def space_dict(self) -> dict[str, Any]:
        return {"space": self.space, **self.resolved()}
