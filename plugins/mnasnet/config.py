"""MnasNet configuration: the factorized hierarchical space, the controller, the search recipe
and the verification by measurement.

The space's defaults are sized for the embedded digits (32x32, 10 classes) on two CPU cores: a
stem, five blocks of 1-2 base layers with 16-64 channels (the paper's ImageNet backbone has
seven blocks of 1-4 layers and 16-320 channels), a classifier head. Per block the controller
picks the conv op, kernel, squeeze-excite ratio, skip op and the layer count (base + delta), as
in the paper's §4.1; the filter-size ratio is not searched.

The controller follows ENAS's settings (LSTM of 100 units, temperature 5, tanh constant 2.5,
Adam with lr 3e-3, EMA baseline 0.95, entropy bonus 1e-4): the paper trains with PPO and gives
no controller constants beyond the 100-unit LSTM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from nas2deploy.errors import UsageError
from nas2deploy.method import MethodConfig

# conv op -> MBConv expansion (None: a regular k x k conv; 1: depthwise-separable, the paper's
# SepConv, which its code builds as an MBConv block without the expansion)
CONV_OPS: dict[str, int | None] = {"conv": None, "sep": 1, "mbconv3": 3, "mbconv6": 6}
SKIPS = ("identity", "none")
REWARDS = ("soft", "hard", "accuracy")
MAX_BLOCKS = 32
MAX_LAYERS = 16
MAX_CHANNELS = 1024


@dataclass
class MnasNetConfig(MethodConfig):
    # --- space ---
    stem_channels: int = 16
    stem_stride: int = 2  # digits are 8x8 images upsampled: 16x16 after the stem loses nothing
    # per block: [base layers, output channels, stride of its first layer]
    blocks: list[list[int]] = field(default_factory=lambda: [
        [1, 16, 1], [2, 24, 2], [2, 32, 2], [2, 48, 1], [1, 64, 1]])
    ops: list[str] = field(default_factory=lambda: list(CONV_OPS))
    kernels: list[int] = field(default_factory=lambda: [3, 5])
    se_ratios: list[float] = field(default_factory=lambda: [0.0, 0.25])
    skips: list[str] = field(default_factory=lambda: list(SKIPS))
    layer_deltas: list[int] = field(default_factory=lambda: [-1, 0, 1])
    act: str = "relu"  # the paper's blocks use ReLU
    # --- controller (REINFORCE; see controller.py) ---
    lstm_size: int = 100
    temperature: float = 5.0
    tanh_constant: float = 2.5
    controller_lr: float = 3e-3
    controller_steps: int = 10  # REINFORCE updates per epoch
    controller_samples: int = 1  # architectures averaged per update
    entropy_weight: float = 1e-4
    baseline_decay: float = 0.95
    # --- reward, candidates and their verification ---
    reward: str = "soft"  # with a budget: the MnasNet reward (soft or hard); "accuracy" ignores it
    reward_batch: int = 128  # images of the arch split behind one reward
    derive_samples: int = 24  # candidates sampled from the controller at the end and scored
    top_k: int = 3  # the best of them by estimated reward measured on the target
    # A candidate lands when its latency is in [landing_band, 1] x the aim (ctx.aim x budget);
    # the pick is the best reward among landed candidates, else the slowest under the aim, else
    # the fastest. 0: the best reward under the aim.
    landing_band: float = 0.75
    # --- shared-weight training ---
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: float = 5.0

    skip_weight: ClassVar[float] = 0.0  # ENAS's skip-rate KL: no such term here

    def space_dict(self) -> dict[str, Any]:
        """What defines the space (its fingerprint): not the search recipe."""
        return {"stem_channels": self.stem_channels, "stem_stride": self.stem_stride,
                "blocks": [list(b) for b in self.blocks], "ops": list(self.ops),
                "kernels": list(self.kernels), "se_ratios": list(self.se_ratios),
                "skips": list(self.skips), "layer_deltas": list(self.layer_deltas),
                "act": self.act}

    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise UsageError(f"mnasnet: {msg}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        for name, lo, hi in (("stem_channels", 1, MAX_CHANNELS), ("stem_stride", 1, 2),
                             ("lstm_size", 1, 1024), ("controller_steps", 0, 100_000),
                             ("controller_samples", 1, 1000), ("reward_batch", 2, 65_536),
                             ("derive_samples", 1, 10_000), ("top_k", 1, 100)):
            v = getattr(self, name)
            need(is_int(v) and lo <= v <= hi, f"{name} must be an integer in {lo}..{hi}, not {v!r}")
        b = self.blocks
        need(isinstance(b, list) and 1 <= len(b) <= MAX_BLOCKS
             and all(isinstance(r, list) and len(r) == 3 and all(is_int(v) for v in r) for r in b),
             f"blocks must be a list of 1..{MAX_BLOCKS} [layers, channels, stride] integer "
             f"triples, not {b!r:.80}")
        for i, (n, c, s) in enumerate(b):
            need(1 <= n <= MAX_LAYERS and 1 <= c <= MAX_CHANNELS and s in (1, 2),
                 f"block {i} [layers, channels, stride] = {[n, c, s]}: layers must be in "
                 f"1..{MAX_LAYERS}, channels in 1..{MAX_CHANNELS}, stride 1 or 2")

        def choices(name: str, allowed, what: str) -> None:
            v = getattr(self, name)
            need(isinstance(v, list) and len(v) >= 1 and all(allowed(x) for x in v),
                 f"{name} must be a non-empty list of {what}, not {v!r:.80}")
            need(len(set(v)) == len(v), f"{name} lists a value twice: {v}")

        choices("ops", lambda o: o in CONV_OPS, ", ".join(CONV_OPS))
        choices("kernels", lambda k: is_int(k) and k in (1, 3, 5, 7), "kernel sizes in 1, 3, 5, 7")
        choices("se_ratios", lambda r: is_num(r) and 0 <= r <= 1, "ratios in [0, 1]")
        choices("skips", lambda s: s in SKIPS, ", ".join(SKIPS))
        choices("layer_deltas", lambda d: is_int(d) and -MAX_LAYERS < d < MAX_LAYERS,
                f"integers in -{MAX_LAYERS - 1}..{MAX_LAYERS - 1}")
        need(all(n + max(self.layer_deltas) <= MAX_LAYERS for n, _, _ in b),
             f"a block's base layers + {max(self.layer_deltas)} exceeds {MAX_LAYERS}")
        need(self.act in ("relu", "relu6", "hswish"),
             f"act must be relu, relu6 or hswish, not {self.act!r}")
        for name, lo, hi, lo_open in (("temperature", 0.0, 1e6, True),
                                      ("tanh_constant", 0.0, 1e6, True),
                                      ("controller_lr", 0.0, 10.0, True),
                                      ("entropy_weight", 0.0, 1e6, False),
                                      ("baseline_decay", 0.0, 1.0, False),
                                      ("landing_band", 0.0, 1.0, False),
                                      ("lr", 0.0, 10.0, True), ("momentum", 0.0, 1.0, False),
                                      ("weight_decay", 0.0, 1.0, False),
                                      ("grad_clip", 0.0, 1e6, True)):
            v = getattr(self, name)
            ok = is_num(v) and (lo < v if lo_open else lo <= v) and v <= hi
            need(ok and not (name == "baseline_decay" and v >= 1.0),
                 f"{name} must be a number in {'(' if lo_open else '['}{lo:g}, {hi:g}"
                 f"{')' if name == 'baseline_decay' else ']'}, not {v!r}")
        need(self.reward in REWARDS,
             f"reward must be one of {', '.join(REWARDS)}, not {self.reward!r}")
