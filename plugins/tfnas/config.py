"""TF-NAS configuration: the macro space (stem, searchable stages, tail) and the search recipe."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from nas2deploy.errors import UsageError
from nas2deploy.method import PresetConfig, SearchContext
from nas2deploy.netspec import MAX_CHANNELS, MAX_PARAMS
from nas2deploy.ops import ACTS

# The eight candidate ops of every searchable block (TF-NAS, Hu et al., ECCV 2020, search space):
# MBConv with kernel k, expansion e (3 or 6) and with or without squeeze-excitation. There is no
# skip op.
OP_NAMES: tuple[str, ...] = ("k3_e3", "k3_e3_se", "k3_e6", "k3_e6_se",
                             "k5_e3", "k5_e3_se", "k5_e6", "k5_e6_se")


def op_def(name: str) -> tuple[int, int, bool]:
    """(kernel, expansion, se) of a candidate op name such as ``"k5_e6_se"``."""
    parts = name.split("_")
    return int(parts[0][1:]), int(parts[1][1:]), len(parts) == 3


# The paper's ImageNet-224 space (TF-NAS, Hu et al., ECCV 2020, search space). The paper's "swish"
# is ``hswish`` here: the op vocabulary every materialized net is built from (nas2deploy.ops) has no
# plain swish.
IMAGENET_SPACE: dict[str, Any] = {
    "stem_channels": 32,
    "stem_stride": 2,
    "stem_block_channels": 16,
    "stem_se": 8,
    "stages": [[2, 24, 2, "relu"], [3, 40, 2, "hswish"], [4, 80, 2, "hswish"],
               [4, 112, 1, "hswish"], [4, 192, 2, "hswish"], [1, 320, 1, "hswish"]],
    "tail_channels": 1280,
}

PRESETS: dict[str, dict[str, Any]] = {"imagenet": IMAGENET_SPACE}

SPACE_FIELDS = ("stem_channels", "stem_stride", "stem_block_channels", "stem_se", "stages",
                "tail_channels")

# Generous but finite bounds on the options that size the supernet or the run.
MAX_STAGES = 32
MAX_ROUNDS = 100
MAX_STEP_RATIO = 1000


def supernet_params(stem_channels: int, stem_block_channels: int, stem_se: int,
                    stages: list[list[Any]], tail_channels: int) -> int:
    """Rough weight count of the supernet (every candidate op at its widest), from the options
    alone, to refuse a space too large to build before building it."""
    c = stem_block_channels
    total = 27 * stem_channels + stem_channels * (9 + c + 2 * stem_se) + c * tail_channels
    for n, c_out, _, _ in stages:
        for b in range(n):
            for name in OP_NAMES:
                k, e, se = op_def(name)
                hi = (4 if e == 3 else 8) * c
                se_c = 0 if not se else (c if e == 3 else 2 * c)
                total += hi * (c + k * k + c_out + 2 * se_c)
            c = c_out
    return total + tail_channels * 1000  # a classifier of up to a thousand classes


def _small_stages() -> list[list[Any]]:
    return [[2, 16, 2, "relu"], [3, 24, 2, "hswish"], [3, 40, 2, "hswish"], [1, 64, 1, "hswish"]]


# The pipeline's aim and re-size band as SearchContext declares them (not copied here): the
# defaults of ``target_fraction`` and ``landing_tolerance``, which follow ``ctx`` when left alone.
_CONTEXT_DEFAULTS = {f.name: f.default for f in dataclasses.fields(SearchContext)}


@dataclass
class TFNASConfig(PresetConfig):
    """Options of the TF-NAS search (all have defaults; ``validate`` gives the ranges).

    The default space is a small EfficientNet-B0-like space sized for the project's default run
    (digits, 1×32×32, ~630 + ~630 search images, batch 64, two CPU cores): four searchable stages
    of at most 2/3/3/1 blocks. ``preset = "imagenet"`` selects the paper's ImageNet-224 space (six
    stages, 18 blocks, tail 1280); explicitly given space options override a preset's values.
    """

    PRESETS = PRESETS
    OWNER = "tfnas"

    preset: str | None = None  # "imagenet": the paper's space; explicit space options win

    # --- the space (these define the supernet and enter the space fingerprint) ---
    stem_channels: int = 16  # 3×3 stem conv (ReLU)
    stem_stride: int = 2
    stem_block_channels: int = 8  # fixed MBConv(k3, e1, SE) after the stem
    stem_se: int = 4  # its SE bottleneck (paper: 8 for a 32-channel stem)
    # searchable stages: [max blocks, output channels, first stride, activation]
    stages: list[list[Any]] = field(default_factory=_small_stages)
    tail_channels: int = 256  # 1×1 conv (hswish) before global pooling and the classifier
    # The ops of a block start from nested slices of one random draw, so all paths agree at
    # the start (not in the paper; it makes single-path training converge within a CPU budget).
    shared_init: bool = True

    # --- latency objective ---
    # λ of λ·|LAT/T − 1|. The paper's 0.1 acts over ~80 epochs × thousands of arch steps; the
    # default run here has ~60 arch steps, and at 0.1 the CE gradient keeps the parsed depth at 1
    # (its latency at max widths then stays far under T, which widths alone cannot fix).
    lam: float = 1.0
    # T = target_fraction × ctx.budget_ms. Left at its default, T follows the pipeline's own aim
    # (``ctx.aim``, where its width loop aims too: measurement noise on a shared CPU needs the
    # margin); set, it overrides it.
    target_fraction: float = _CONTEXT_DEFAULTS["aim"]
    elastic: bool = True  # elastic width scaling after every post-warm-up epoch
    # after the paper's passes, per-stage fill passes and a channel trade (see elastic.py); they
    # only ever move the parsed latency closer to T from below
    elastic_refine: bool = True
    # Measured landing: where the target runtime can be timed here (ctx.measure), the parsed
    # architecture is measured after every post-warm-up elastic step and T, in the cost table's
    # units, is corrected by measured / predicted; after the last epoch up to ``landing_rounds``
    # more elastic steps re-aim until the measured latency is within ``landing_tolerance`` of T.
    # A per-op estimate is biased on a compiled runtime (the FLOPs proxy over-predicted this
    # space's parsed nets by ~23% on OpenVINO), and the elastic step lands the *estimate* on T.
    measured_landing: bool = True
    landing_rounds: int = 3
    # Left at its default, the window follows the pipeline's re-size band (``ctx.resize_band``).
    landing_tolerance: float = _CONTEXT_DEFAULTS["resize_band"]

    # --- schedule ---
    warmup_fraction: float = 0.25  # share of the epochs that train weights only (paper 10/90)
    w_steps_per_arch_step: int = 2  # one arch step after every second weight step (paper)
    # Gumbel temperature: tau_start during warm-up and the first search epoch, then geometric
    # decay reaching tau_end at the last epoch (paper: 5 × 0.96 per epoch ≈ 0.19 after 80).
    tau_start: float = 5.0
    tau_end: float = 0.2

    # --- weights: SGD (momentum), cosine decay, gradient-norm clipping ---
    lr: float = 0.05  # paper 0.025 over 90 epochs at batch 32
    momentum: float = 0.9
    weight_decay: float = 1e-5
    grad_clip: float = 5.0  # 0 = off

    # --- architecture (α, β): Adam ---
    # paper 0.01 over ~100k arch steps; the default run has ~60, and at 0.01 α stays so diffuse
    # that the parsed (argmax) architecture is far from the expectation the penalty steers
    arch_lr: float = 0.1
    arch_betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    arch_weight_decay: float = 5e-4
    arch_grad_clip: float = 5.0  # 0 = off

    @classmethod
    def imagenet(cls, **overrides: Any) -> "TFNASConfig":
        """The paper's ImageNet-224 space (with the search recipe's defaults)."""
        return cls.from_dict({"preset": "imagenet", **overrides})

    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise UsageError(f"tfnas: {msg}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        need(self.preset is None or self.preset in PRESETS,
             f"unknown preset {self.preset!r}; choose from {', '.join(PRESETS)}")
        for name in ("stem_channels", "stem_block_channels", "tail_channels"):
            v = getattr(self, name)
            need(is_int(v) and 1 <= v <= MAX_CHANNELS,
                 f"{name} must be an integer in 1..{MAX_CHANNELS}, not {v!r}")
        need(is_int(self.stem_se) and 0 <= self.stem_se <= MAX_CHANNELS,
             f"stem_se must be an integer in 0..{MAX_CHANNELS} (0 = no SE), not {self.stem_se!r}")
        need(is_int(self.stem_stride) and self.stem_stride in (1, 2),
             f"stem_stride must be 1 or 2, not {self.stem_stride!r}")
        need(isinstance(self.stages, (list, tuple)) and 1 <= len(self.stages) <= MAX_STAGES,
             f"stages must be a list of 1..{MAX_STAGES} [blocks, channels, stride, act], not "
             f"{self.stages!r:.80}")
        stages = []
        for i, st in enumerate(self.stages):
            if isinstance(st, dict):
                unknown = set(st) - {"blocks", "channels", "stride", "act"}
                need(not unknown, f"stage {i + 1} has unknown key(s) {sorted(unknown)}")
                st = [st.get("blocks"), st.get("channels"), st.get("stride", 1), st.get("act", "hswish")]
            need(isinstance(st, (list, tuple)) and len(st) == 4,
                 f"stage {i + 1} must be [blocks, channels, stride, act], not {st!r}")
            n, c, s, act = st
            need(is_int(n) and 1 <= n <= 16, f"stage {i + 1}: blocks must be an integer in 1..16, not {n!r}")
            need(is_int(c) and 1 <= c <= MAX_CHANNELS,
                 f"stage {i + 1}: channels must be an integer in 1..{MAX_CHANNELS}, not {c!r}")
            need(is_int(s) and s in (1, 2), f"stage {i + 1}: stride must be 1 or 2, not {s!r}")
            need(act in ACTS, f"stage {i + 1}: act must be one of {', '.join(ACTS)}, not {act!r} "
                              f"(the paper's swish is hswish here)")
            stages.append([n, c, s, act])
        self.stages = stages
        params = supernet_params(self.stem_channels, self.stem_block_channels, self.stem_se,
                                 stages, self.tail_channels)
        need(params <= MAX_PARAMS,
             f"the space holds ~{params:,} parameters, more than the {MAX_PARAMS:,} a supernet "
             f"may have; use fewer or narrower stages")
        need(is_num(self.lam) and self.lam >= 0, f"lam must be a number >= 0, not {self.lam!r}")
        need(is_num(self.target_fraction) and 0 < self.target_fraction <= 1,
             f"target_fraction must be in (0, 1], not {self.target_fraction!r}")
        need(isinstance(self.shared_init, bool),
             f"shared_init must be true or false, not {self.shared_init!r}")
        need(isinstance(self.elastic_refine, bool),
             f"elastic_refine must be true or false, not {self.elastic_refine!r}")
        need(isinstance(self.elastic, bool), f"elastic must be true or false, not {self.elastic!r}")
        need(isinstance(self.measured_landing, bool),
             f"measured_landing must be true or false, not {self.measured_landing!r}")
        need(is_int(self.landing_rounds) and 0 <= self.landing_rounds <= MAX_ROUNDS,
             f"landing_rounds must be an integer in 0..{MAX_ROUNDS}, not {self.landing_rounds!r}")
        need(is_num(self.landing_tolerance) and 0 < self.landing_tolerance < 1,
             f"landing_tolerance must be in (0, 1), not {self.landing_tolerance!r}")
        need(is_num(self.warmup_fraction) and 0 <= self.warmup_fraction < 1,
             f"warmup_fraction must be in [0, 1), not {self.warmup_fraction!r}")
        need(is_int(self.w_steps_per_arch_step)
             and 1 <= self.w_steps_per_arch_step <= MAX_STEP_RATIO,
             f"w_steps_per_arch_step must be an integer in 1..{MAX_STEP_RATIO}, not "
             f"{self.w_steps_per_arch_step!r}")
        need(is_num(self.tau_start) and self.tau_start > 0,
             f"tau_start must be a number > 0, not {self.tau_start!r}")
        need(is_num(self.tau_end) and 0 < self.tau_end <= self.tau_start,
             f"tau_end must be in (0, tau_start], not {self.tau_end!r}")
        for name in ("lr", "arch_lr"):
            v = getattr(self, name)
            need(is_num(v) and v > 0, f"{name} must be a number > 0, not {v!r}")
        need(is_num(self.momentum) and 0 <= self.momentum < 1,
             f"momentum must be in [0, 1), not {self.momentum!r}")
        for name in ("weight_decay", "arch_weight_decay", "grad_clip", "arch_grad_clip"):
            v = getattr(self, name)
            need(is_num(v) and v >= 0, f"{name} must be a number >= 0, not {v!r}")
        b = self.arch_betas
        need(isinstance(b, (list, tuple)) and len(b) == 2 and all(is_num(x) and 0 <= x < 1 for x in b),
             f"arch_betas must be two numbers in [0, 1), not {b!r}")
        self.arch_betas = [float(x) for x in b]

    def space_dict(self) -> dict[str, Any]:
        """The fields that define the supernet (and so the space fingerprint)."""
        return {"stem_channels": self.stem_channels, "stem_stride": self.stem_stride,
                "stem_block_channels": self.stem_block_channels, "stem_se": self.stem_se,
                "stages": [list(s) for s in self.stages], "tail_channels": self.tail_channels,
                "ops": list(OP_NAMES)}
