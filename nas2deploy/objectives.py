"""Search objectives any sampling or RL method can reuse.

``mnas_reward`` is the latency-aware reward of Tan et al., "MnasNet: Platform-Aware Neural
Architecture Search for Mobile" (CVPR 2019), §3 (Problem Formulation, equation 2)::

    R(m) = ACC(m) · (LAT(m) / T) ** w,   w = alpha if LAT(m) <= T else beta

The paper's two settings are ``SOFT`` (alpha = beta = -0.07: a net twice as fast as T earns
about 5% more reward, one twice as slow about 5% less) and ``HARD`` (alpha = 0, beta = -1: no
reward for being faster than T, and accuracy scaled by T/LAT above it).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Hashable, NamedTuple

from .errors import UsageError


class ObjectiveError(UsageError, ValueError):
    """A bad input to an objective: a usage error (exit 2) that is also a ``ValueError``."""


class RewardExponents(NamedTuple):
    """(alpha, beta): the exponent below or at the target, and above it."""

    alpha: float
    beta: float


SOFT = RewardExponents(-0.07, -0.07)
HARD = RewardExponents(0.0, -1.0)
SETTINGS = {"soft": SOFT, "hard": HARD}


def mnas_reward(acc: float, lat: float, target: float, alpha: float = SOFT.alpha,
                beta: float = SOFT.beta) -> float:
    """The MnasNet reward ACC · (LAT/T)^w, w = ``alpha`` if LAT <= T else ``beta``.

    ``acc`` is an accuracy (any finite number; the paper's lies in [0, 1]); ``lat`` and
    ``target`` are latencies in the same unit and must be positive and finite. Raises
    ``ObjectiveError`` (both a ``UsageError`` and a ``ValueError``) on a non-positive or
    non-finite latency or target, or a non-finite accuracy or exponent.
    """
    for name, v in (("latency", lat), ("target", target)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ObjectiveError(f"mnas_reward: {name} must be a finite number > 0, not {v!r}")
    for name, v in (("accuracy", acc), ("alpha", alpha), ("beta", beta)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ObjectiveError(f"mnas_reward: {name} must be a finite number, not {v!r}")
    w = alpha if lat <= target else beta
    return float(acc) * (float(lat) / float(target)) ** w


class LatencyReward:
    """A sampled architecture's reward from its accuracy, for any sampling or RL method: the
    accuracy itself, or, with a budget and a latency model, the MnasNet reward (``setting``
    soft or hard) on the model's estimate of ``spec_of(key)``'s network, cached per key (a
    hashable description of the architecture)."""

    def __init__(self, spec_of: Callable[[Hashable], dict[str, Any]], budget_ms: float | None,
                 latency_model: Any, setting: str = "soft"):
        if setting not in ("accuracy", *SETTINGS):
            raise ObjectiveError(f"reward must be accuracy, {' or '.join(SETTINGS)}, not "
                                 f"{setting!r}")
        self.spec_of, self.setting = spec_of, setting
        timed = budget_ms is not None and latency_model is not None
        self.exps = SETTINGS[setting] if timed and setting != "accuracy" else None
        self.budget_ms, self.latency_model = budget_ms, latency_model
        self._ms: dict[Hashable, float] = {}

    def latency(self, key: Hashable) -> float | None:
        """The latency model's estimate (None without a model)."""
        if self.latency_model is None:
            return None
        if key not in self._ms:
            self._ms[key] = float(self.latency_model.predict(self.spec_of(key)))
        return self._ms[key]

    def __call__(self, acc: float, key: Hashable | None = None, lat: float | None = None,
                 target: float | None = None) -> float:
        """The reward of ``acc`` at ``lat`` (default: the estimate of ``key``) against
        ``target`` (default: the budget)."""
        if self.exps is None:
            return acc
        lat = self.latency(key) if lat is None else lat
        # a model's estimate can round to 0 on tiny nets
        return mnas_reward(acc, max(lat, 1e-9), self.budget_ms if target is None else target,
                           *self.exps)

    @property
    def hard(self) -> bool:
        """The hard reward under a budget: the budget is a constraint."""
        return self.exps is not None and self.setting == "hard"

    def describe(self) -> dict[str, Any]:
        if self.exps is None:
            return {"reward": "accuracy"}
        return {"reward": self.setting, "alpha": self.exps.alpha, "beta": self.exps.beta,
                "target_ms": self.budget_ms}


__all__ = ["HARD", "SETTINGS", "SOFT", "LatencyReward", "ObjectiveError", "RewardExponents",
           "mnas_reward"]


def preference(rows: list[Any], lat: Callable[[Any], float | None],
               score: Callable[[Any], float], ceiling: float | None,
               band: float) -> list[int]:
    """Indices of ``rows`` (scored candidates of one search), most preferred first: with a
    ceiling (the latency aimed at, ms), those whose ``lat`` lands in [band, 1] x ceiling by
    ``score``, then the others under it closest to it first, then those over it fastest first;
    without one (or for a row without an estimate), by score. Ties keep the rows' order.

    Under the band latency goes before score: the closed loop after the search can thin a net
    that is too slow, never grow one far under the budget, and the soft MnasNet reward alone
    ranks candidates the same under every budget. How MnasNet picks, and how the ``resize``
    lever of a method that keeps its scored candidates (MnasNet, ENAS, random) re-picks."""
    def key(i: int) -> tuple:
        r = rows[i]
        ms = lat(r) if ceiling is not None else None
        if ms is None:
            return (0, 0.0, -score(r))
        if ms > ceiling:
            return (2, ms, 0.0)
        if ms >= band * ceiling:
            return (0, 0.0, -score(r))
        return (1, -ms, -score(r))
    return sorted(range(len(rows)), key=key)
