"""The records the stages of search-and-export pass on: small dataclasses with a JSON round trip.

A record holds what a later stage (or a resumed run, or a test starting mid-way) needs to go on,
as plain values: an ``Architecture`` rebuilds its network from nothing, so no record carries a
module or a supernet.

The search stage's record, ``Decision``, is defined beside the method contract
(``nas2deploy.method``), since methods make it; it is re-exported here with the others. Its JSON
is the architecture and the names of its levers; the levers themselves are live objects of the
method and do not survive a round trip.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .architecture import Architecture
from .method import Decision

__all__ = ["Attempt", "Budget", "Candidate", "Decision", "Verdict"]


def _plain(cls, d: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
    return dict(d)


@dataclass
class Budget:
    """The latency budget and the references it was set from (largest and smallest subnet)."""

    budget_ms: float
    source: str  # how the budget was set, in words (manifest ``budget_source``)
    largest_ms: float
    smallest_ms: float
    how: str  # "measured p50" or "p50 predicted by the device's table"
    min_width: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Budget":
        return cls(**_plain(cls, d))


@dataclass
class Candidate:
    """A decided architecture at a width, as the closed loop left it to be retrained."""

    width: float
    architecture: Architecture  # the architecture the width scales (full width)
    resized: int = 0  # re-sizes by the decision's lever (Decision.resize) behind it
    prune_level: int = 0  # sparser level behind it (Decision.sparser; the manifest's prune_further_level)
    predicted_ms: float | None = None
    measured_p50_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["architecture"] = self.architecture.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Candidate":
        d = _plain(cls, d)
        d["architecture"] = Architecture.from_dict(d["architecture"])
        return cls(**d)


@dataclass
class Verdict:
    """The bundle artifact measured on the target: the figures the manifest's ``measured`` holds,
    the budget they were checked against, and the outcome."""

    measured: dict[str, Any]
    budget_ms: float
    within: bool
    ratio: float
    # the artifact's p50 timed beside the largest subnet, at its speed when the search started
    # (the rounds' units): what the final attempts steer by
    beside_p50_ms: float | None = None

    @property
    def p50_ms(self) -> float:
        return self.measured["p50_ms"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Verdict":
        return cls(**_plain(cls, d))


@dataclass
class Attempt:
    """One retrain-export-measure attempt of the bundle, exported into a folder of its own."""

    attempt: int
    width: float
    architecture: Architecture  # the exported network (its ``metadata`` holds predicted_ms)
    folder: str
    verification: dict[str, Any] = field(default_factory=dict)
    resized: int = 0
    verdict: Verdict | None = None  # None where the target cannot be timed here

    @property
    def within(self) -> bool | None:
        return None if self.verdict is None else self.verdict.within

    @property
    def ratio(self) -> float | None:
        return None if self.verdict is None else self.verdict.ratio

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["architecture"] = self.architecture.to_dict()
        d["verdict"] = None if self.verdict is None else self.verdict.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Attempt":
        d = _plain(cls, d)
        d["architecture"] = Architecture.from_dict(d["architecture"])
        d["verdict"] = None if d.get("verdict") is None else Verdict.from_dict(d["verdict"])
        return cls(**d)
