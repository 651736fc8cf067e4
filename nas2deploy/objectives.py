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
from typing import NamedTuple

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


__all__ = ["HARD", "SETTINGS", "SOFT", "ObjectiveError", "RewardExponents", "mnas_reward"]
