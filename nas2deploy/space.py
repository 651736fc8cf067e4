"""``SearchSpace``: what a method's search space is and what it can produce, as one value.

A method builds it from its supernet (``SearchMethod.space``). Core asks the space, never the
method, for the budget's references (``largest``, ``smallest``), for the networks a latency table
measures (``cover``), for random subnets (``sample``: latency calibration, benchmarks, the
random-search baseline), for the supernet's weights of one of its architectures
(``inherit``: copies; ``share``: the live tensors, through which training a materialized
subnet trains the supernet). A capability a space lacks is ``None``; asking for it is a clear error, never a
guess made by writing into the supernet's architecture parameters.
"""

from __future__ import annotations

import inspect
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from .architecture import Architecture
from .errors import UsageError

CAPABILITIES = ("largest", "smallest", "cover", "sample", "inherit", "share")


@dataclass(frozen=True, eq=False)
class SearchSpace(Mapping):
    """A space's JSON description (``name``, ``fingerprint``, ``choice_points`` and whatever the
    method records of it), readable like a dict, plus what the space can produce.

    ``cover`` defaults to ``[largest()]``, enough when the largest subnet holds every candidate op
    (DSO-NAS); a space with alternative ops at one position must give more. ``inherit`` without a
    function inherits nothing (the subnet is retrained from its initialisation).

    ``share(arch)`` is weight sharing as a value: the same names as ``inherit``, but the
    supernet's own tensors (its parameters and buffers, or differentiable slices of them), not
    copies. ``torch.func.functional_call(materialize(arch), space.shared(arch), x)`` then
    computes the subnet with the supernet's weights, and its gradients reach the supernet's
    parameters: how the random-search baseline trains any space's supernet with uniformly
    sampled paths. A space without it (a method that trains every child from scratch) is
    searched by training each sampled child on its own.
    """

    description: dict[str, Any]
    largest: Callable[[], Architecture]
    smallest: Callable[[], Architecture]
    cover: Callable[[], list[Architecture]] | None = None
    sample: Callable[..., Architecture] | None = None  # (rng[, multiple=]) -> Architecture
    inherit: Callable[[Architecture], dict[str, torch.Tensor]] | None = None
    share: Callable[[Architecture], dict[str, torch.Tensor]] | None = None

    def __post_init__(self) -> None:
        d = self.description
        for key in ("name", "fingerprint"):
            if not isinstance(d.get(key), str) or not d[key]:
                raise TypeError(f"a SearchSpace description needs a non-empty string {key!r}")
        json.dumps(d)  # the description travels in manifests and architectures

    @property
    def name(self) -> str:
        return self.description["name"]

    @property
    def fingerprint(self) -> str:
        return self.description["fingerprint"]

    @property
    def capabilities(self) -> list[str]:
        return [c for c in CAPABILITIES if getattr(self, c) is not None]

    def covering(self) -> list[Architecture]:
        """Networks that together hold every candidate op of the space at its real input shape."""
        return self.cover() if self.cover is not None else [self.largest()]

    def draw(self, rng: random.Random, multiple: int = 1) -> Architecture:
        """A random subnet; a clear error where the space cannot sample. ``multiple`` > 1: the
        target runs channel counts in multiples of it best (``SearchContext.channel_multiple``),
        and a ``sample`` that takes a ``multiple`` keyword draws the widths it chooses freely
        in such steps (a sample without that keyword is called as before)."""
        if self.sample is None:
            raise UsageError(f"search space {self.name!r} cannot sample random subnets (its "
                             f"method gives no sample()); latency calibration and random "
                             f"search need one")
        if multiple > 1 and "multiple" in inspect.signature(self.sample).parameters:
            return self.sample(rng, multiple=multiple)
        return self.sample(rng)

    def weights(self, arch: Architecture) -> dict[str, torch.Tensor]:
        """The supernet's weights for ``arch``, keyed by the materialized net's state_dict names."""
        return self.inherit(arch) if self.inherit is not None else {}

    def shared(self, arch: Architecture) -> dict[str, torch.Tensor]:
        """The supernet's live tensors for ``arch`` (see ``share``); a clear error where the
        space has no weight sharing."""
        if self.share is None:
            raise UsageError(f"search space {self.name!r} shares no weights between its subnets "
                             f"(its method gives no share())")
        return self.share(arch)

    def check(self, arch: Architecture, who: str) -> None:
        """UsageError unless ``arch`` was decided in this space."""
        fp = arch.space.get("fingerprint")
        if fp != self.fingerprint:
            raise UsageError(f"{who}: the architecture comes from another space (fingerprint "
                             f"{fp!r}, supernet {self.fingerprint!r})")

    # the description, read like a dict
    def __getitem__(self, key: str) -> Any:
        return self.description[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.description)

    def __len__(self) -> int:
        return len(self.description)
