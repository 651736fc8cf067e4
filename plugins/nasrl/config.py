"""NAS-RL configuration: the layer-wise conv space, the controller and the child recipe.

Constants from Zoph & Le (ICLR 2017), §4.1 (CIFAR-10), where the short searches run here allow,
and said so where they do not:

* space: ``layers`` = 6 (the paper's first CIFAR space has 15), kernels {1, 3, 5, 7} (the
  paper's filter heights and widths), filters {8, 16, 24, 32} (the paper's {24, 36, 48, 64}
  scaled to the default digits task), stride fixed at 1 unless ``search_strides`` (the paper's
  first experiment fixes it at 1, a later one predicts strides too; here from {1, 2});
  ``reduce_layers``: layers whose conv has stride 2 when strides are not searched (the paper
  adds pooling layers to its deeper nets; the default ``[L//3, 2L//3]`` keeps a child's training
  short on two CPU cores); a stem conv of stride 2 before them (the paper has none; digits are
  8x8 images upscaled to 32x32, and a child's steps cost a quarter at 16x16);
* controller: a two-layer LSTM of 35 units, weights uniform in ±0.08 (the paper's), Adam; the
  paper's learning rate 6e-4 is raised to 3e-3 and its EMA baseline's decay set to 0.9: the
  paper samples 12,800 children, a default search here a few dozen;
* child: trained from scratch for ``child_steps`` SGD steps of ``child_batch`` images (the
  paper: 50 epochs, Nesterov momentum 0.9, lr 0.1, weight decay 1e-4; here the same on a
  cosine schedule) and scored on ``reward_images`` held-out images (the paper: the max accuracy
  of the last 5 epochs on 5,000 held-out images);
* decision, under a budget: ``decide_band`` = 2 standard errors (a two-sided 95% interval) of
  the best child's accuracy within which children count as tied (``search.Record.best``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from nas2deploy.errors import UsageError
from nas2deploy.method import MethodConfig

REWARDS = ("soft", "hard", "accuracy")
MAX_LAYERS = 64
MAX_FILTERS = 1024
MAX_KERNEL = 15


def paper_reduce_layers(layers: int) -> list[int]:
    """Layers whose conv halves the resolution when strides are not searched: ``[L//3,
    2L//3]`` (none under 3 layers)."""
    if layers < 3:
        return []
    return sorted({layers // 3, 2 * layers // 3})


@dataclass
class NASRLConfig(MethodConfig):
    # --- space ---
    layers: int = 6
    kernels: list[int] = field(default_factory=lambda: [1, 3, 5, 7])
    filters: list[int] = field(default_factory=lambda: [8, 16, 24, 32])
    search_strides: bool = False
    strides: list[int] = field(default_factory=lambda: [1, 2])  # searched when search_strides
    reduce_layers: list[int] | None = None  # None: paper_reduce_layers (none with search_strides)
    stem_width: int = 16
    stem_stride: int = 2  # the searched layers at half the input's resolution: see above
    # --- controller ---
    lstm_size: int = 35
    lstm_layers: int = 2
    temperature: float = 1.0
    tanh_constant: float = 0.0  # 0: logits unsquashed (the paper); ENAS uses 2.5
    controller_lr: float = 3e-3
    controller_steps: int = 8  # REINFORCE updates per epoch
    controller_samples: int = 1  # children trained per update
    entropy_weight: float = 1e-3
    baseline_decay: float = 0.9
    skip_target: float = 0.4
    skip_weight: float = 0.0  # the paper has no skip penalty (ENAS's KL to skip_target)
    # --- reward and decision ---
    reward: str = "soft"  # with a budget: the MnasNet reward; "accuracy" ignores the budget
    reward_images: int = 256  # held-out (arch split) images behind one child's accuracy
    # the reward's accuracy term is accuracy ** accuracy_power (the paper cubes it, §4.1; 1
    # keeps the MnasNet reward's scale, where a budget's exponents are calibrated)
    accuracy_power: float = 1.0
    # with a budget: children within it whose accuracy lies within this many standard errors
    # of the best-rewarded one's are tied, and the largest estimate wins (search.Record.best)
    decide_band: float = 2.0
    # --- child training (from scratch, no weight sharing) ---
    child_steps: int = 10
    child_batch: int = 32
    child_lr: float = 0.1
    child_momentum: float = 0.9
    child_weight_decay: float = 1e-4
    grad_clip: float = 5.0

    def resolved_reduce_layers(self) -> list[int]:
        if self.reduce_layers is not None:
            return list(self.reduce_layers)
        return [] if self.search_strides else paper_reduce_layers(self.layers)

    def space_dict(self) -> dict[str, Any]:
        """What defines the space (its fingerprint), not the search recipe."""
        return {"layers": self.layers, "kernels": list(self.kernels),
                "filters": list(self.filters), "search_strides": self.search_strides,
                "strides": list(self.strides) if self.search_strides else [1],
                "reduce_layers": self.resolved_reduce_layers(), "stem_width": self.stem_width,
                "stem_stride": self.stem_stride}

    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise UsageError(f"nasrl: {msg}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        for name, lo, hi in (("layers", 1, MAX_LAYERS), ("stem_width", 1, MAX_FILTERS),
                             ("stem_stride", 1, 2), ("lstm_size", 1, 1024), ("lstm_layers", 1, 4),
                             ("controller_steps", 0, 100_000), ("controller_samples", 1, 1000),
                             ("reward_images", 2, 1_000_000), ("child_steps", 1, 100_000),
                             ("child_batch", 2, 65_536)):
            v = getattr(self, name)
            need(is_int(v) and lo <= v <= hi, f"{name} must be an integer in {lo}..{hi}, not {v!r}")

        def int_list(name: str, ok, what: str) -> None:
            v = getattr(self, name)
            need(isinstance(v, list) and len(v) >= 1 and all(is_int(x) and ok(x) for x in v),
                 f"{name} must be a non-empty list of {what}, not {v!r:.80}")
            need(len(set(v)) == len(v), f"{name} lists a value twice: {v!r:.80}")

        int_list("kernels", lambda k: 1 <= k <= MAX_KERNEL and k % 2 == 1,
                 f"odd kernel sizes in 1..{MAX_KERNEL}")
        int_list("filters", lambda f: 1 <= f <= MAX_FILTERS, f"filter counts in 1..{MAX_FILTERS}")
        int_list("strides", lambda s: s in (1, 2), "strides 1 or 2")
        need(isinstance(self.search_strides, bool),
             f"search_strides must be true or false, not {self.search_strides!r}")
        red = self.reduce_layers
        if red is not None:
            need(isinstance(red, list) and all(is_int(p) for p in red)
                 and all(0 <= p < self.layers for p in red) and red == sorted(set(red)),
                 f"reduce_layers must be increasing layer indices in 0..{self.layers - 1}, "
                 f"not {red!r:.80}")
            need(not (self.search_strides and red),
                 "reduce_layers fixes strides; leave it empty when search_strides is on")
        for name, lo, hi, lo_open in (("temperature", 0.0, 1e6, True),
                                      ("tanh_constant", 0.0, 1e6, False),
                                      ("controller_lr", 0.0, 10.0, True),
                                      ("entropy_weight", 0.0, 1e6, False),
                                      ("skip_weight", 0.0, 1e6, False),
                                      ("decide_band", 0.0, 100.0, False),
                                      ("accuracy_power", 0.0, 10.0, True),
                                      ("child_lr", 0.0, 10.0, True),
                                      ("child_momentum", 0.0, 1.0, False),
                                      ("child_weight_decay", 0.0, 1.0, False),
                                      ("grad_clip", 0.0, 1e6, True)):
            v = getattr(self, name)
            need(is_num(v) and (lo < v if lo_open else lo <= v) and v <= hi,
                 f"{name} must be a number in {'(' if lo_open else '['}{lo:g}, {hi:g}], "
                 f"not {v!r}")
        need(is_num(self.baseline_decay) and 0.0 <= self.baseline_decay < 1.0,
             f"baseline_decay must be a number in [0, 1), not {self.baseline_decay!r}")
        need(is_num(self.skip_target) and 0.0 < self.skip_target < 1.0,
             f"skip_target must be a number in (0, 1), not {self.skip_target!r}")
        need(self.reward in REWARDS,
             f"reward must be one of {', '.join(REWARDS)}, not {self.reward!r}")
