"""The search-method contract: a NAS method as learning which parts of a supernet to remove."""

from __future__ import annotations

import copy
import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from .architecture import Architecture
from .data.searchdata import SearchData  # noqa: F401  (part of the method API)
from .device import Compute
from .distributed import SINGLE, World, average_
from .errors import UsageError
from .latency import LatencyModel
from .space import SearchSpace


@dataclass(frozen=True)
class TaskSpec:
    input_channels: int
    input_size: int
    num_classes: int


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
    # (state_dict names, as ``SearchSpace.weights`` gives) are loaded first: trained weights
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
    # The pipeline's closed loop aims its widths at ``aim`` x the budget, and asks a decision
    # that can re-size (``Decision.resize``) to, at full width, whenever a measurement lies more
    # than ``resize_band`` from that aim (filled from ``nas2deploy.stages.size.Aim``). A method
    # that lands its own architecture by measurement aims at the same point and window.
    aim: float = 0.95
    resize_band: float = 0.03
    # Where the search runs and in what precision: ``data`` is batched on ``compute.device`` and
    # the supernet sits there; forward passes go under ``compute.autocast()``; with fp16, losses
    # are scaled (``nas2deploy.device.LossScale``).
    compute: Compute = field(default_factory=lambda: Compute(torch.device("cpu"), "off"))
    # Data-parallel runs (torchrun): this rank of ``world``. ``data`` is already sharded; a
    # method calls ``average(grads)`` on every gradient it steps with (weights and
    # architecture parameters alike) and draws sampled paths from generators seeded from
    # ``seed`` (the same on every rank).
    world: World = SINGLE
    # Where the search checkpoints (a ``nas2deploy.checkpoint.Loop``, set by the pipeline with
    # its run directory; None: no checkpoints): see ``save_state`` and ``restore_state``.
    checkpoints: Any = None
    # called with the restored ``measurements`` when a search resumes (the pipeline moves its
    # measurement journal past them and refits a learning latency model on them)
    on_restore: Callable[[list[dict[str, Any]]], None] | None = None
    resumed_after: int = 0  # epochs a resumed search restored rather than ran

    def average(self, tensors: Any) -> None:
        """Average gradients (or any tensors) across ranks in place; a no-op on one process."""
        average_(tensors, self.world)

    def save_state(self, epoch: int, state: dict[str, Any]) -> None:
        """Checkpoint after ``epoch`` finished epochs. ``state``: a tree of dicts, lists,
        numbers, strings, tensors and ``torch.Generator``s holding everything the method's loop
        needs to go on exactly (the supernet's ``state_dict()``, its optimizers' state, its
        generators, data cycles' ``state()``, counters). The context adds ``history``,
        ``measurements`` and this rank's global RNG states."""
        if self.checkpoints is not None:
            self.checkpoints.save(epoch, {"state": state, "history": self.history,
                                          "measurements": self.measurements})

    def restore_state(self) -> tuple[int, dict[str, Any]] | None:
        """(finished epochs, the method's state) of the last checkpoint when resuming, with
        ``history``, ``measurements`` and the RNG states put back; None when starting afresh."""
        loaded = self.checkpoints.load(self.log) if self.checkpoints is not None else None
        if loaded is None:
            return None
        epoch, tree = loaded
        self.resumed_after = epoch
        self.history[:] = tree["history"]
        self.measurements[:] = tree["measurements"]
        if self.on_restore is not None:
            self.on_restore(self.measurements)
        return epoch, tree["state"]


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


@dataclass
class PresetConfig(MethodConfig):
    """A config with named presets of its space (a subclass declares a ``preset: str | None``
    field, ``PRESETS`` {name: {field: value}} and ``OWNER``, the name its errors start with).
    ``from_dict`` merges exactly: the preset's values, then the explicit ones over them. Direct
    construction, ``Config(preset=...)``, gives the preset's value to every field still at its
    class default."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    OWNER: ClassVar[str] = ""

    def __post_init__(self) -> None:
        preset = (self.PRESETS.get(self.preset) if isinstance(self.preset, str)  # type: ignore[attr-defined]
                  else None)
        if preset:
            for f in dataclasses.fields(self):
                default = (f.default_factory() if f.default_factory is not dataclasses.MISSING
                           else f.default)
                if f.name in preset and getattr(self, f.name) == default:
                    setattr(self, f.name, copy.deepcopy(preset[f.name]))

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "PresetConfig":
        values = dict(values or {})
        preset = values.get("preset")
        if preset is not None:
            if not isinstance(preset, str) or preset not in cls.PRESETS:
                raise UsageError(f"{cls.OWNER}: unknown preset {preset!r}; choose from "
                                 f"{', '.join(cls.PRESETS)}")
            values = {**copy.deepcopy(cls.PRESETS[preset]), **values}
        # built without the preset (every space value is explicit by now), then marked with it
        cfg = super().from_dict({k: v for k, v in values.items() if k != "preset"})
        cfg.preset = preset  # type: ignore[attr-defined]
        cfg.validate()
        return cfg  # type: ignore[return-value]


@dataclass
class Decision:
    """What a method decided, handed forward; nothing after it reaches back into the supernet.

    ``arch`` rebuilds the subnet from nothing; ``weights`` are the supernet's weights for it
    (state_dict names of the materialized net; empty: retrain from the initialisation). The
    optional levers are what the closed loop may still ask of the method, and own a snapshot of
    the state they need:

    * ``resize(factor)``: the architecture made about ``factor`` times as slow (< 1: faster) by
      the method's own lever, asked at full width before a uniform width multiplier when a
      measurement lies more than ``SearchContext.resize_band`` off the aim (TF-NAS re-lands its
      elastic widths block by block, in the target's channel multiple). None: nothing changes.
    * ``sparser(level)``: a sparser architecture from the same search, level 1, 2, ... each
      removing more of what the search judged least useful, asked when the decision is still
      over budget at the narrowest width (small nets on CPU runtimes are bound by per-op
      overhead, where thinning channels stops paying). None: nothing more to remove.

    Each returns a new ``Decision`` (with its own levers) or None.
    """

    arch: Architecture
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    resize: Callable[[float], "Decision | None"] | None = None
    sparser: Callable[[int], "Decision | None"] | None = None

    @property
    def levers(self) -> list[str]:
        return [name for name in ("resize", "sparser") if getattr(self, name) is not None]

    def to_json(self) -> dict[str, Any]:
        """The record: the architecture, which levers it had, how many tensors it inherits (the
        tensors themselves travel as safetensors)."""
        return {"architecture": self.arch.to_dict(), "levers": self.levers,
                "inherited_tensors": len(self.weights)}

    @classmethod
    def from_json(cls, d: dict[str, Any], weights: dict[str, torch.Tensor] | None = None,
                  source: str = "decision") -> "Decision":
        """A decision read back. Levers are live state and do not survive the round trip."""
        if not isinstance(d, dict) or "architecture" not in d:
            raise UsageError(f"{source} is not a nas2deploy decision record")
        return cls(Architecture.from_dict(d["architecture"], source), dict(weights or {}))


class SearchMethod(ABC):
    """A plugin: a NAS method expressed as learning which parts of a supernet to remove.
    Register the class under the ``nas2deploy.methods`` entry-point group.

    Three verbs and a space: ``build`` the supernet, ``search`` it, ``decide`` what survives;
    ``space`` describes the supernet's space and what it can produce (``SearchSpace``).
    """

    name: ClassVar[str]
    paper: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    # The whole search budget in epochs when the run does not set one; a method sizes it so its
    # default space searches the default data (digits) in minutes on two CPU cores.
    default_search_epochs: ClassVar[int] = 10
    # True when ``search`` keeps every tensor it makes on the supernet's device (the pipeline
    # then moves the supernet and the batches to ``--device``); a method that has not said so
    # searches on the CPU, and only the retrain runs on the GPU.
    runs_on_gpu: ClassVar[bool] = False

    def __init__(self, config: MethodConfig | dict[str, Any] | None = None):
        if not isinstance(config, MethodConfig):
            config = self.Config.from_dict(config)
        self.config = config

    @abstractmethod
    def build(self, task: TaskSpec) -> nn.Module:
        """The supernet for ``task``, with its architecture parameters at their initial values."""

    @abstractmethod
    def space(self, supernet: nn.Module) -> SearchSpace:
        """The supernet's search space: its JSON description and what it can produce."""

    @abstractmethod
    def search(self, supernet: nn.Module, ctx: SearchContext) -> Any:
        """Train weights and architecture parameters in place. May return what ``decide`` needs
        besides them (the method's own record of its search, such as TF-NAS's cost table and
        landing); the pipeline hands it to ``decide`` unread. None is fine."""

    @abstractmethod
    def decide(self, supernet: nn.Module, searched: Any = None) -> Decision:
        """Architecture parameters (and what ``search`` returned, None before any search) ->
        Decision. Must not train or change the supernet."""
