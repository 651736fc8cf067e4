"""The search-method contract: a NAS method as learning which parts of a supernet to remove."""

from __future__ import annotations

import dataclasses
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from .architecture import Architecture
from .errors import UsageError
from .latency import LatencyModel


@dataclass(frozen=True)
class TaskSpec:
    input_channels: int
    input_size: int
    num_classes: int


@dataclass
class SearchData:
    """Tensors on the CPU: images NCHW float32 (normalised), labels int64."""

    x_weights: torch.Tensor  # split used for weight steps
    y_weights: torch.Tensor
    x_arch: torch.Tensor  # split used for architecture steps
    y_arch: torch.Tensor
    x_val: torch.Tensor  # held out from both, for reporting
    y_val: torch.Tensor


@dataclass
class SearchContext:
    data: SearchData
    epochs: int  # the whole search budget in epochs (a method splits it into its phases)
    seed: int
    batch_size: int = 64
    budget_ms: float | None = None
    latency_model: LatencyModel | None = None
    # progress(total, description) -> a tqdm-like bar with update()/set_postfix()/close()
    progress: Callable[..., Any] | None = None
    # a method appends one dict per epoch: {"epoch", "phase", "loss", ...}; plotted in the report
    history: list[dict[str, Any]] = field(default_factory=list)
    log: Callable[[str], None] = lambda msg: None
    # measure(network_spec, weights=None) -> p50 ms of that network on the target runtime, timed
    # as the pipeline's closed loop times its candidates (probe export, then side by side with
    # the largest subnet over fresh loads: about 2.5 s a call on a 2-core VM). ``weights``
    # (state_dict names, as ``inherited_weights`` returns) are loaded first: trained weights
    # ran a TF-NAS net ~4% slower than random ones on OpenVINO. None where the target cannot be
    # timed on this machine (a device target searched by its table). A method may use it to
    # correct its latency estimate while it searches; every call is recorded in
    # ``measurements`` (predicted by ``latency_model`` before the call, measured), a model that
    # can learn (``FlopsProxy.observe``) is refitted on it, and the pipeline starts its own
    # correction from the decided architecture's record.
    measure: Callable[..., float] | None = None
    measurements: list[dict[str, Any]] = field(default_factory=list)
    # Channel counts the target runs best are multiples of this (onnxruntime's NCHWc block: 16
    # with AVX-512, else 8; 1 elsewhere). A method that chooses widths should keep to it.
    channel_multiple: int = 1
    # The pipeline's closed loop aims its widths at ``aim`` x the budget, and asks a method that
    # can re-size (``SearchMethod.resize``) to, at full width, whenever a measurement lies more
    # than ``resize_band`` from that aim (filled from ``nas2deploy.stages.size.Aim``). A method
    # that lands its own architecture by measurement aims at the same point and window.
    aim: float = 0.95
    resize_band: float = 0.03


@dataclass
class MethodConfig:
    """Base for methods' configs: dataclasses with defaults, validated from plain dicts."""

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "MethodConfig":
        values = dict(values or {})
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise UsageError(f"unknown option(s) for {cls.__qualname__}: {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise UsageError on an out-of-range value."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class SearchMethod(ABC):
    """A plugin. Register the class under the ``nas2deploy.methods`` entry-point group."""

    name: ClassVar[str]
    paper: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig

    def __init__(self, config: MethodConfig | dict[str, Any] | None = None):
        if not isinstance(config, MethodConfig):
            config = self.Config.from_dict(config)
        self.config = config

    @abstractmethod
    def build(self, task: TaskSpec) -> nn.Module:
        """The supernet for ``task``, with its architecture parameters at their initial values."""

    @abstractmethod
    def space(self, supernet: nn.Module) -> dict[str, Any]:
        """JSON description of the search space: {"name", "fingerprint", ...}."""

    @abstractmethod
    def largest(self, supernet: nn.Module) -> Architecture:
        """The largest subnet the space holds (nothing removed): the budget's reference."""

    @abstractmethod
    def smallest(self, supernet: nn.Module) -> Architecture:
        """The smallest subnet the method can derive, before any width scaling."""

    @abstractmethod
    def search(self, supernet: nn.Module, ctx: SearchContext) -> None:
        """Train weights and architecture parameters in place."""

    @abstractmethod
    def decide(self, supernet: nn.Module) -> Architecture:
        """Architecture parameters -> discrete Architecture. Must not train."""

    def prune_further(self, supernet: nn.Module, level: int) -> Architecture | None:
        """A sparser architecture than ``decide``'s, from the same search: level 1, 2, ... each
        removes more of what the search judged least useful. The pipeline asks for it when the
        decided architecture is still over budget at the narrowest width, where thinning
        channels stops paying (small nets on CPU runtimes are bound by per-op overhead). None:
        nothing more to remove, or the method has no such lever (the default)."""
        return None

    def resize(self, supernet: nn.Module, arch: Architecture, factor: float) -> Architecture | None:
        """``arch`` (decided from this supernet) made about ``factor`` times as slow (< 1:
        faster) by the method's own lever, from the same search. The pipeline asks for it at
        full width, before a uniform width multiplier, when a measurement lies more than a few
        percent off its aim: a method that sizes its network block by block (TF-NAS's elastic
        widths, in the target's channel multiple) lands finer than scaling every layer at once,
        and can grow past the decided network. None: no such lever (the default), or nothing
        would change."""
        return None

    def candidate_networks(self, supernet: nn.Module) -> list[Architecture]:
        """Networks that together hold every candidate op of the space at its real input shape.

        Latency tables measure each distinct op signature found in them (at several widths).
        The default, the largest subnet, is enough when it contains every candidate (DSO-NAS);
        a space with alternative ops at one position must return more.
        """
        return [self.largest(supernet)]

    def sample(self, supernet: nn.Module, rng: random.Random) -> Architecture:
        """A random subnet of the space, for calibrating and benchmarking latency models."""
        raise NotImplementedError(f"method {self.name!r} cannot sample random subnets")

    def inherited_weights(self, supernet: nn.Module, arch: Architecture) -> dict[str, torch.Tensor]:
        """Supernet weights for the materialized net, keyed by its state_dict names.

        The default inherits nothing (retrain from scratch). Missing keys keep their init.
        """
        return {}
