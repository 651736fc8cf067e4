"""ENAS configuration: the macro chain and micro cell spaces, the controller and the search
recipe.

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

The micro space (``space = "micro"``, see ``cells.py``) has ``blocks`` B = 3 compute nodes a
cell and ``cells`` = 1 normal cell per stage with ``reductions`` = 2 (5 cells in all), where the
paper has B = 5 and about 20 cells; ``width`` 16, doubled at each reduction, behind a stem of
stride 2 (``stem_stride`` unset: 2 for micro, 1 for macro; the default digits are 8x8 images
upsampled to 32x32, so the first stride loses nothing and quarters the cost of every cell); the
paper's ops identity, sep 3x3/5x5, avg and max pool 3x3. The paper's sizes search for a day on
a GPU; these keep a default run on the digits within minutes on two CPU cores (an epoch of the
5-cell supernet costs about what one of the 6-node macro chain does) while keeping what the
space is about: two choices of input and op per node, two cell types, the unused nodes as the
output. ``drop_path`` is the ScheduledDropPath the retrain of a micro child
uses (NASNet, ENAS's fixed-arc training): the drop probability of each non-identity path reached
at the end of the retrain, scaled by depth as (cell + 1) / cells. The papers use 0.4 over 600+
epochs of a wide net; 0.1 here because a retrain of 12 epochs of a 16-channel net underfits
rather than overfits, and a strong drop path there costs accuracy it has no time to win back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from nas2deploy.errors import UsageError
from nas2deploy.method import MethodConfig

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
# The candidate ops of a micro cell node's input slot (ENAS's micro space); identity is no
# module at all: the slot reads its input as it is.
CELL_OPS: dict[str, dict[str, Any]] = {
    "identity": {"op": "identity"},
    "sep3x3": OPS["sep3x3"],
    "sep5x5": OPS["sep5x5"],
    "avgpool": OPS["avgpool"],
    "maxpool": OPS["maxpool"],
}
CELL_COST_ORDER = ("sep5x5", "sep3x3", "avgpool", "maxpool", "identity")
REWARDS = ("soft", "hard", "accuracy")
SPACES = ("macro", "micro")
MAX_BLOCKS = 16

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
    stem_stride: int | None = None  # None: 1 (macro), 2 (micro)
    pool_layers: list[int] | None = None  # None: paper_pool_layers(nodes)
    ops: list[str] = field(default_factory=lambda: list(OPS))
    # --- micro space (space = "micro"; nodes, pool_layers, ops and the skip options are the
    # macro space's) ---
    cells: int = 1  # normal cells per stage
    reductions: int = 2  # reduction cells (each halves the resolution, doubles the width)
    blocks: int = 3  # B: compute nodes per cell
    cell_ops: list[str] = field(default_factory=lambda: list(CELL_OPS))
    drop_path: float = 0.1  # ScheduledDropPath's final probability in the retrain (micro)
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

    def resolved_stem_stride(self) -> int:
        if self.stem_stride is not None:
            return self.stem_stride
        return 2 if self.space == "micro" else 1

    def resolved_pool_layers(self) -> list[int]:
        return list(paper_pool_layers(self.nodes) if self.pool_layers is None else self.pool_layers)

    def space_dict(self) -> dict[str, Any]:
        """What defines the space (its fingerprint): not the search recipe."""
        if self.space == "micro":
            return {"space": self.space, "cells": self.cells, "reductions": self.reductions,
                    "blocks": self.blocks, "width": self.width,
                    "stem_stride": self.resolved_stem_stride(),
                    "cell_ops": list(self.cell_ops), "drop_path": self.drop_path}
        return {"space": self.space, "nodes": self.nodes, "width": self.width,
                "stem_stride": self.resolved_stem_stride(),
                "pool_layers": self.resolved_pool_layers(),
                "ops": list(self.ops)}

    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise UsageError(f"enas: {msg}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        need(isinstance(self.space, str) and self.space in SPACES,
             f"space must be one of {', '.join(SPACES)}, not {self.space!r:.80}")
        for name, lo, hi in (("cells", 1, MAX_NODES), ("reductions", 0, 6),
                             ("blocks", 1, MAX_BLOCKS), ("nodes", 1, MAX_NODES),
                             ("width", 1, MAX_WIDTH),
                             ("lstm_size", 1, 1024), ("lstm_layers", 1, 4),
                             ("controller_steps", 0, 100_000), ("controller_samples", 1, 1000),
                             ("reward_batch", 2, 65_536), ("derive_samples", 1, 10_000)):
            v = getattr(self, name)
            need(is_int(v) and lo <= v <= hi, f"{name} must be an integer in {lo}..{hi}, not {v!r}")
        need(self.stem_stride is None or (is_int(self.stem_stride) and 1 <= self.stem_stride <= 2),
             f"stem_stride must be 1 or 2 (or unset), not {self.stem_stride!r}")
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
        need(isinstance(self.cell_ops, list) and len(self.cell_ops) >= 1
             and all(isinstance(o, str) for o in self.cell_ops),
             f"cell_ops must be a non-empty list of {', '.join(CELL_OPS)}, not "
             f"{self.cell_ops!r:.80}")
        bad = [o for o in self.cell_ops if o not in CELL_OPS]
        need(not bad, f"unknown cell op(s) {bad}; choose from {', '.join(CELL_OPS)}")
        need(len(set(self.cell_ops)) == len(self.cell_ops),
             f"cell_ops lists an op twice: {self.cell_ops}")
        need(self.space != "micro" or self.width * 2 ** self.reductions <= MAX_WIDTH,
             f"width {self.width} doubled at {self.reductions} reductions exceeds {MAX_WIDTH} "
             f"channels")
        need(is_num(self.drop_path) and 0.0 <= self.drop_path < 1.0,
             f"drop_path must be a number in [0, 1), not {self.drop_path!r}")
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
