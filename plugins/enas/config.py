"""ENAS configuration: the macro chain space, the controller and the search recipe.

Defaults follow Pham et al. (ICML 2018) and its code (``cifar10_macro_search.sh``) where the
short searches run here allow, and say so where they do not:

* space: ``nodes`` = 6 (the seed's chain; the paper's macro space has 12 layers), ``width`` 16
  channels at the first stage, doubled after each pooling layer; the pooling layers are the
  paper's ``[N//3 - 1, 2N//3 - 1]``; ops conv3x3, conv5x5, sep3x3, sep5x5, maxpool, avgpool;
* controller: an LSTM of ``lstm_size`` = 100 units (the paper's 100), logits through
  temperature 5.0 and tanh constant 2.5 (METHODS.md §4), skip-rate KL to 0.4 with weight 0.8,
  entropy bonus 1e-4 (the code's), Adam;
* the controller's learning rate is 3e-3 instead of the paper's 3.5e-4 and its baseline decay
  0.95 instead of 0.99: the paper trains the controller for 2000 steps an epoch over 310 epochs,
  a default search here has a few hundred steps in all, and the shared weights (hence the
  accuracies the baseline tracks) improve quickly in them;
* child training: SGD with Nesterov momentum 0.9, lr 0.05 on a cosine schedule, weight decay
  1e-4, gradients clipped at norm 5 (the paper's ``child_grad_bound``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from nas2deploy.errors import UsageError
from nas2deploy.method import MethodConfig
from nas2deploy.objectives import SETTINGS

# The candidate ops of a macro node, in the op vocabulary (nas2deploy.ops): (op, params).
# Every op keeps the node's channel count and resolution.
OPS: dict[str, dict[str, Any]] = {
    "conv3x3": {"op": "conv", "k": 3},
    "conv5x5": {"op": "conv", "k": 5},
    "sep3x3": {"op": "sep", "k": 3},
    "sep5x5": {"op": "sep", "k": 5},
    "maxpool": {"op": "pool", "kind": "max", "k": 3},
    "avgpool": {"op": "pool", "kind": "avg", "k": 3},
}
# Most to least expensive at equal channels (conv k² c² > sep k² c + c² > pools): the largest
# subnet takes the first configured op everywhere, the smallest the last.
COST_ORDER = ("conv5x5", "conv3x3", "sep5x5", "sep3x3", "avgpool", "maxpool")
REWARDS = ("soft", "hard", "accuracy")
SPACES = ("macro",)

MAX_NODES = 64
MAX_WIDTH = 1024


def paper_pool_layers(nodes: int) -> list[int]:
    """The nodes after which ENAS's macro child halves the resolution and doubles the width:
    ``[N//3 - 1, 2N//3 - 1]`` (12 layers: after layers 3 and 7), none for fewer than 3 nodes."""
    if nodes < 3:
        return []
    d = nodes // 3
    return [d - 1, 2 * d - 1]


@dataclass
class ENASConfig(MethodConfig):
    # --- space ---
    space: str = "macro"
    nodes: int = 6
    width: int = 16
    stem_stride: int = 1
    pool_layers: list[int] | None = None  # None: paper_pool_layers(nodes)
    ops: list[str] = field(default_factory=lambda: list(OPS))
    # --- controller ---
    lstm_size: int = 100
    lstm_layers: int = 1
    temperature: float = 5.0
    tanh_constant: float = 2.5
    controller_lr: float = 3e-3
    controller_steps: int = 20  # REINFORCE updates per epoch
    controller_samples: int = 1  # architectures averaged per update
    entropy_weight: float = 1e-4
    baseline_decay: float = 0.95
    skip_target: float = 0.4
    skip_weight: float = 0.8
    # --- rewards and derivation ---
    reward: str = "soft"  # with a budget: the MnasNet reward (soft or hard); "accuracy" ignores it
    reward_batch: int = 128  # images of the arch split behind one reward
    derive_samples: int = 16  # m: children sampled at the end and scored on held-out data
    # --- child (shared weights) training ---
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: float = 5.0

    def resolved_pool_layers(self) -> list[int]:
        return list(paper_pool_layers(self.nodes) if self.pool_layers is None else self.pool_layers)

    def space_dict(self) -> dict[str, Any]:
        """What defines the space (its fingerprint): not the search recipe."""
        return {"space": self.space, "nodes": self.nodes, "width": self.width,
                "stem_stride": self.stem_stride, "pool_layers": self.resolved_pool_layers(),
                "ops": list(self.ops)}

    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise UsageError(f"enas: {msg}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        need(self.space in SPACES, f"space must be one of {', '.join(SPACES)} (the NASNet-cell "
                                   f"micro space is not implemented yet), not {self.space!r}")
        for name, lo, hi in (("nodes", 1, MAX_NODES), ("width", 1, MAX_WIDTH),
                             ("stem_stride", 1, 2), ("lstm_size", 1, 1024), ("lstm_layers", 1, 4),
                             ("controller_steps", 0, 100_000), ("controller_samples", 1, 1000),
                             ("reward_batch", 2, 65_536), ("derive_samples", 1, 10_000)):
            v = getattr(self, name)
            need(is_int(v) and lo <= v <= hi, f"{name} must be an integer in {lo}..{hi}, not {v!r}")
        pools = self.pool_layers
        if pools is not None:
            need(isinstance(pools, list) and all(is_int(p) for p in pools),
                 f"pool_layers must be a list of node indices, not {pools!r:.80}")
            need(all(0 <= p < self.nodes - 1 for p in pools) and pools == sorted(set(pools)),
                 f"pool_layers must be increasing node indices in 0..{self.nodes - 2} (a pooling "
                 f"layer follows a node and precedes another), not {pools!r:.80}")
        need(self.width * 2 ** len(self.resolved_pool_layers()) <= MAX_WIDTH,
             f"width {self.width} doubled at {len(self.resolved_pool_layers())} pooling layers "
             f"exceeds {MAX_WIDTH} channels")
        need(isinstance(self.ops, list) and len(self.ops) >= 1
             and all(isinstance(o, str) for o in self.ops),
             f"ops must be a non-empty list of {', '.join(OPS)}, not {self.ops!r:.80}")
        bad = [o for o in self.ops if o not in OPS]
        need(not bad, f"unknown op(s) {bad}; choose from {', '.join(OPS)}")
        need(len(set(self.ops)) == len(self.ops), f"ops lists an op twice: {self.ops}")
        for name, lo, hi, lo_open in (("temperature", 0.0, 1e6, True),
                                      ("tanh_constant", 0.0, 1e6, True),
                                      ("controller_lr", 0.0, 10.0, True),
                                      ("entropy_weight", 0.0, 1e6, False),
                                      ("baseline_decay", 0.0, 1.0, False),
                                      ("skip_weight", 0.0, 1e6, False),
                                      ("lr", 0.0, 10.0, True), ("momentum", 0.0, 1.0, False),
                                      ("weight_decay", 0.0, 1.0, False),
                                      ("grad_clip", 0.0, 1e6, True)):
            v = getattr(self, name)
            ok = is_num(v) and (lo < v if lo_open else lo <= v) and v <= hi
            need(ok and not (name == "baseline_decay" and v >= 1.0),
                 f"{name} must be a number in {'(' if lo_open else '['}{lo:g}, {hi:g}"
                 f"{')' if name == 'baseline_decay' else ']'}, not {v!r}")
        need(is_num(self.skip_target) and 0.0 < self.skip_target < 1.0,
             f"skip_target must be a number in (0, 1), not {self.skip_target!r}")
        need(self.reward in REWARDS,
             f"reward must be one of {', '.join(REWARDS)}, not {self.reward!r}")


def reward_exponents(cfg: ENASConfig) -> tuple[float, float] | None:
    """(alpha, beta) of the MnasNet reward the config asks for; None: accuracy alone."""
    return None if cfg.reward == "accuracy" else tuple(SETTINGS[cfg.reward])
