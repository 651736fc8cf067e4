"""What a latency table is measured at: the op signatures a space produces, and the widths.

A table holds, for every distinct ``OpSignature`` the space can produce (the ops of
the space's cover (``SearchSpace.covering``) at their real input shapes, each also width-scaled with
``materialize.scale_width`` at a grid of multipliers), the time that op takes in the target
runtime. Sums with coefficients (DSO-NAS keeps its surviving λ as constant coefficients) run a
Mul per input besides the Adds, so they are timed as their own type ``wsum`` (see
``network_signatures``); a table measures both kinds for every sum it finds.

Width grid (``WidthGrid``): dense by default, i.e. every channel count that width scaling can
produce above ``min_width`` is measured exactly, because CPU runtimes are not smooth in channels.
Measured on a 2-vCPU Intel Xeon VM (AVX-512, AMX; loaded): onnxruntime 1.32 runs a 16×16
separable 5×5 conv in 4.5 µs with 16 channels, 37 µs with 17, 6.7 µs with 8 and 23 µs with 9
(its fast depthwise kernels need channels divisible by 4), and its 1×1 convs are irregular in
yet another way; OpenVINO 2026.4 is smooth. Sums are smooth on both and are taken at the
coarse grid only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Sequence

from ..errors import UsageError
from ..netspec import OpSignature, signatures, single_op_spec

COARSE_GRID: tuple[float, ...] = tuple(i / 8 for i in range(2, 9))  # 0.25 … 1.0 step 0.125
SUM_TYPES = ("sum", "wsum")
FREE_TYPES = ("identity",)  # runtimes drop these; they cost nothing and need no entry


def network_signatures(spec: dict[str, Any]) -> dict[str, OpSignature]:
    """``netspec.signatures`` with sums that carry coefficients typed ``wsum``.

    A scaled sum runs a Mul per input besides the Adds, so it costs more than a plain sum of the
    same shape; ``OpSignature`` has no field for it yet, so the type tells them apart.
    """
    sigs = signatures(spec)
    for node in spec["nodes"]:
        sig = sigs.get(node["id"])
        if sig is not None and sig.type == "sum" and node.get("coeffs") is not None:
            sigs[node["id"]] = replace(sig, type="wsum")
    return sigs


def op_spec(sig: OpSignature) -> dict[str, Any]:
    """A one-node network computing just the op of ``sig`` (``single_op_spec`` plus ``wsum``)."""
    if sig.type == "wsum":
        spec = single_op_spec(replace(sig, type="sum"))
        node = spec["nodes"][0]
        # distinct coefficients: with one repeated input, equal ones would be merged into one
        # Mul by the exporter, while a network multiplies every input separately
        node["coeffs"] = [0.5 + 0.01 * i for i in range(len(node["inputs"]))]
        return spec
    return single_op_spec(sig)





@dataclass(frozen=True)
class WidthGrid:
    """The width multipliers a table measures every candidate network at.

    ``multipliers`` given: exactly those. ``None`` (dense, the default): every multiplier
    k / C for the widest prunable channel count C of the candidates and k from
    ceil(min_width·C) to C, so every channel count width scaling can produce above
    ``min_width`` is measured exactly (thinned evenly to ``max_points`` if there are more).
    Dense is the default because CPU runtimes are not smooth in channels: onnxruntime runs a
    depthwise conv with 17 channels 8x slower than one with 16, which no interpolation between
    grid points recovers.
    """

    multipliers: tuple[float, ...] | None = None
    min_width: float = 0.25
    max_points: int = 64
    # dense only: sums (smooth in channels on every runtime measured: about linear) are taken at
    # the dense points nearest to COARSE_GRID only, which halves a DSO-NAS table
    coarse_sums: bool = True

    def __post_init__(self):
        if self.multipliers is not None:
            try:
                g = tuple(sorted({round(float(m), 6) for m in self.multipliers}))
            except (TypeError, ValueError):
                raise UsageError(f"width grid must be numbers in (0, 1], not "
                                 f"{self.multipliers!r}") from None
            if not g or not all(0 < m <= 1 for m in g):
                raise UsageError(f"width grid must be numbers in (0, 1], not "
                                 f"{list(self.multipliers)!r}")
            object.__setattr__(self, "multipliers", g)
        if not 0 < self.min_width <= 1:
            raise UsageError(f"width grid min_width must be in (0, 1], not {self.min_width!r}")
        if not isinstance(self.max_points, int) or self.max_points < 2:
            raise UsageError(f"width grid max_points must be an integer >= 2, not {self.max_points!r}")

    def ident(self) -> dict[str, Any]:
        if self.multipliers is not None:
            return {"multipliers": list(self.multipliers)}
        return {"dense": True, "min_width": self.min_width, "max_points": self.max_points,
                "coarse_sums": self.coarse_sums}

    def sum_points(self, multipliers: Sequence[float]) -> set[float]:
        """The multipliers at which sums are collected."""
        if self.multipliers is not None or not self.coarse_sums:
            return set(multipliers)
        return {min(multipliers, key=lambda m: abs(m - c)) for c in COARSE_GRID
                if c >= min(multipliers) - 1e-9}

    def resolve(self, archs: Sequence[Any]) -> tuple[float, ...]:
        if self.multipliers is not None:
            return self.multipliers
        widest = 1
        for arch in archs:
            for sig in signatures(arch.network).values():
                chans = [sig.c_in] + ([sig.c_out] if sig.type != "head" else [])
                if sig.type.startswith("mbconv"):
                    chans.append(sig.mid)
                widest = max(widest, *chans)
        ks = list(range(max(1, math.ceil(self.min_width * widest - 1e-9)), widest + 1))
        if len(ks) > self.max_points:
            ks = sorted({ks[round(i * (len(ks) - 1) / (self.max_points - 1))]
                         for i in range(self.max_points)})
        return tuple(round(k / widest, 6) for k in ks)


def as_grid(grid: "WidthGrid | Sequence[float] | str | None") -> WidthGrid:
    """``"dense"``/None -> the dense grid; a list of multipliers -> exactly those."""
    if grid is None or (isinstance(grid, str) and grid == "dense"):
        return WidthGrid()
    if isinstance(grid, WidthGrid):
        return grid
    if isinstance(grid, str):
        raise UsageError(f"width grid must be 'dense' or a list of multipliers, not {grid!r}")
    return WidthGrid(tuple(grid))
