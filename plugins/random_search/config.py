"""Options of the built-in random search.

Defaults: ``samples`` = 48 candidates scored at the end (Li & Talwalkar 2019 sample until a time
budget runs out; 48 scores in a few seconds on the digits here and covers the latency range of
every built-in space densely enough that each of the benchmark budgets has candidates under it),
child training as ENAS's shared weights (SGD, Nesterov 0.9, lr 0.05 cosine, weight decay 1e-4,
gradients clipped at 5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from nas2deploy.errors import UsageError
from nas2deploy.method import MethodConfig


@dataclass
class RandomConfig(MethodConfig):
    space: str = "tfnas"  # the registered method whose space is searched
    space_options: dict[str, Any] = field(default_factory=dict)  # that method's own options
    samples: int = 48  # candidates drawn after the shared weights are trained, each scored
    score_images: int = 512  # held-out images each candidate is scored on (the same for all)
    # a space without weight sharing: batches each candidate is trained on from scratch
    child_steps: int = 30
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: float = 5.0

    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise UsageError(f"random: {msg}")

        need(isinstance(self.space, str) and self.space != "" and self.space != "random",
             f"space must name another registered method (e.g. tfnas), not {self.space!r}")
        need(isinstance(self.space_options, dict),
             f"space_options must be a table of the {self.space} method's options, not "
             f"{self.space_options!r:.80}")
        for name, lo, hi in (("samples", 1, 100_000), ("score_images", 1, 10_000_000),
                             ("child_steps", 1, 1_000_000)):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi,
                 f"{name} must be an integer in {lo}..{hi}, not {v!r}")
        for name, lo, hi, open_lo in (("lr", 0.0, 10.0, True), ("momentum", 0.0, 1.0, False),
                                      ("weight_decay", 0.0, 1.0, False),
                                      ("grad_clip", 0.0, 1e6, True)):
            v = getattr(self, name)
            ok = (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                  and (lo < v if open_lo else lo <= v) and v <= hi)
            need(ok, f"{name} must be a number in {'(' if open_lo else '['}{lo:g}, {hi:g}], "
                     f"not {v!r}")
