"""Elasticity scaling: land the parsed architecture's latency just under the target by its widths.

TF-NAS (Hu et al., ECCV 2020), elasticity-scaling strategy. Given the parsed architecture (one op
per block, the first d blocks of each stage) and its ops' current mid channels, every parsed block
moves by its own step r_i = round(mid_i / min_j mid_j) (min over the blocks being scaled, r_i ≥ 1),
clipped to the op's [max/2, max]:

1. all stages together: if LAT > T shrink step by step and keep the first configuration ≤ T;
   otherwise expand step by step and keep the last configuration ≤ T;
2. then expand only stages 2..n, then 3..n, ..., then stage n alone, each time keeping the last
   configuration ≤ T ("progressively fine-grained");
3. (nas2deploy's addition, ``fill``) then expand stage n−1 alone, ..., stage 1 alone, the same
   way, and finally trade: one more channel for a block below its max, paid for by channels of
   the latest stages, kept when the result is ≤ T and closer to T. Once the later stages are at
   their max widths the paper's passes cannot refine an earlier stage, and in a shallow space
   the gap left can exceed 1% of T (2000 random architectures of the default space under a
   synthetic table: 1.25% of them end more than 0.5% under T without this step).

A pass ends when the next step would cross T or every block in it is at its bound. The function
is pure (widths in, widths out); ``apply_widths`` writes them to the supernet, where the active
channels become the top-k depthwise filters by L1 norm.
"""

from __future__ import annotations

from typing import Callable, Sequence

# The channel trade runs only when the passes before it leave more than this fraction of T.
TRADE_GAP = 0.002


def _steps(mids: Sequence[int], members: Sequence[int]) -> dict[int, int]:
    base = min(mids[i] for i in members)
    return {i: max(1, int(round(mids[i] / base))) for i in members}


def _move(mids: list[int], steps: dict[int, int], sign: int, lo: Sequence[int],
          hi: Sequence[int]) -> list[int]:
    new = list(mids)
    for i, r in steps.items():
        new[i] = min(hi[i], max(lo[i], mids[i] + sign * r))
    return new


def elastic_scale(mids: Sequence[int], lo: Sequence[int], hi: Sequence[int], stage_of: Sequence[int],
                  latency: Callable[[Sequence[int]], float], target: float, *,
                  fill: bool = True) -> tuple[list[int], list[dict]]:
    """New widths of the parsed blocks, and a trace (one entry per pass: stages, direction, LAT).

    ``fill=False`` is the paper's rule alone (steps 1 and 2).

    ``mids``, ``lo``, ``hi``, ``stage_of`` are per parsed block; ``latency(mids)`` is the parsed
    architecture's LAT at those widths (fixed parts included).
    """
    mids = [int(m) for m in mids]
    n = len(mids)
    if n == 0:
        return mids, []
    stages = sorted(set(stage_of))
    lat = latency(mids)
    trace = [{"pass": "start", "stages": stages, "latency": lat}]

    everyone = list(range(n))
    steps = _steps(mids, everyone)
    if lat > target:
        while True:  # shrink all stages; keep the first configuration under T
            new = _move(mids, steps, -1, lo, hi)
            if new == mids:
                break
            mids, lat = new, latency(new)
            if lat <= target:
                break
        trace.append({"pass": "shrink", "stages": stages, "latency": lat})
    else:
        mids, lat = _expand(mids, steps, lo, hi, latency, target, lat)
        trace.append({"pass": "expand", "stages": stages, "latency": lat})
    if lat > target:
        return mids, trace  # the target is below the smallest widths: nothing can be expanded
    for k in range(1, len(stages)):  # then expand stages k.., progressively finer
        members = [i for i in everyone if stage_of[i] >= stages[k]]
        mids, lat = _expand(mids, _steps(mids, members), lo, hi, latency, target, lat)
        trace.append({"pass": "expand", "stages": stages[k:], "latency": lat})
    if fill:
        # nas2deploy's addition: each earlier stage alone, last but one first. When the later
        # stages reach their max widths, the suffix passes cannot close the gap left by the
        # coarse all-stage steps of an earlier stage; in a shallow space that gap can exceed
        # 1% of T. These passes only expand while ≤ T, so they never move away from T.
        for k in range(len(stages) - 2, -1, -1):
            members = [i for i in everyone if stage_of[i] == stages[k]]
            mids, lat = _expand(mids, _steps(mids, members), lo, hi, latency, target, lat)
            trace.append({"pass": "fill", "stages": [stages[k]], "latency": lat})
        if lat < (1.0 - TRADE_GAP) * target:
            mids, lat = _trade(mids, lo, hi, stage_of, latency, target, lat)
            trace.append({"pass": "trade", "stages": stages, "latency": lat})
    return mids, trace


def _trade(mids: list[int], lo, hi, stage_of, latency, target: float, lat: float,
           max_rounds: int = 3) -> tuple[list[int], float]:
    """One channel more for a block that is below its max, paid for by channels of the blocks
    of the latest stages (usually the cheapest per channel); kept when it ends ≤ T and closer
    to T. Closes the gap the all-at-once steps leave when the only blocks below their max
    are costly per channel. Each payer's cut is found by bisection (LAT is monotone in it)."""
    n = len(mids)
    payers = sorted(range(n), key=lambda j: (-stage_of[j], -j))
    for _ in range(max_rounds):
        improved = False
        for i in range(n):
            if mids[i] >= hi[i]:
                continue
            cand = list(mids)
            cand[i] += 1
            cur = latency(cand)
            for j in payers:
                if cur <= target:
                    break
                if j == i or cand[j] <= lo[j]:
                    continue
                floor = list(cand)
                floor[j] = lo[j]
                at_floor = latency(floor)
                if at_floor > target:  # this payer alone cannot pay: take all it has
                    cand, cur = floor, at_floor
                    continue
                a, b = lo[j], cand[j] - 1  # the largest width of j with LAT ≤ T lies in [a, b]
                best, best_lat = a, at_floor
                while a <= b:
                    m = (a + b) // 2
                    trial = list(cand)
                    trial[j] = m
                    t = latency(trial)
                    if t <= target:
                        best, best_lat, a = m, t, m + 1
                    else:
                        b = m - 1
                cand[j], cur = best, best_lat
            if lat < cur <= target:
                mids, lat, improved = cand, cur, True
        if not improved:
            break
    return mids, lat


def _expand(mids: list[int], steps: dict[int, int], lo, hi, latency, target: float,
            lat: float) -> tuple[list[int], float]:
    while True:
        new = _move(mids, steps, +1, lo, hi)
        if new == mids:
            return mids, lat
        new_lat = latency(new)
        if new_lat > target:
            return mids, lat
        mids, lat = new, new_lat
