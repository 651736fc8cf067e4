"""Runtimes: resolve exporters for a target, export into a folder, and measure there."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from . import registry
from .outdir import scratch_prefix
from .errors import UnavailableError, UsageError
from .exporter import Artifact, EagerTorch, ExportContext, Exporter, Runner, torch_runner
from .latency.measure import (INSTANCES, LatencyReport, Protocol, TableProtocol,
                              measure_instances, time_interleaved)
from .target import Target


def exporter_for_runtime(runtime: str) -> str | None:
    """Name of the registered exporter that serves ``runtime`` (None for eager torch)."""
    if runtime in EagerTorch.runtimes:
        return None
    for entry in registry.exporters.entries():
        if entry.obj is not None and runtime in getattr(entry.obj, "runtimes", {}):
            return entry.name
    raise UnavailableError(f"no installed exporter serves runtime {runtime!r}; installed exporters: "
                           f"{', '.join(registry.exporters.names()) or 'none'}")


def resolve_chain(names: list[str]) -> list[str]:
    """Exporter names in dependency order (``needs`` first), each once, all available here."""
    order: list[str] = []

    def visit(name: str, stack: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in stack:
            raise UsageError(f"exporters depend on each other in a cycle: {' -> '.join(stack + (name,))}")
        cls = registry.exporters.get(name)
        for dep in getattr(cls, "needs", ()):
            visit(dep, stack + (name,))
        reason = cls.unavailable_reason()
        if reason:
            raise UnavailableError(f"exporter {name!r} cannot run here: {reason}")
        order.append(name)

    for n in names:
        visit(n, ())
    return order


def check_target_device(target: Target) -> None:
    if target.device == "cuda" and target.runtime == "torch" and not torch.cuda.is_available():
        raise UnavailableError("target torch:cuda needs a CUDA GPU and none is visible here")


def export_chain(model: nn.Module, names: list[str], ctx: ExportContext) -> dict[str, Artifact]:
    for name in resolve_chain(names):
        if name not in ctx.artifacts:
            exporter: Exporter = registry.exporters.get(name)()
            ctx.artifacts[name] = exporter.export(model, ctx)
    return ctx.artifacts


def runner_for(model: nn.Module | None, target: Target, bundle_dir: Path | None,
               artifacts: dict[str, Artifact]) -> Runner:
    name = exporter_for_runtime(target.runtime)
    if name is None:
        if model is None:
            raise UsageError("the torch runtime needs the PyTorch model")
        return torch_runner(model, target.threads, target.device)
    if name not in artifacts:
        raise UsageError(f"bundle has no {name} artifact for runtime {target.runtime}; re-export "
                         f"with --export {name}")
    return registry.exporters.get(name)().runner(bundle_dir, artifacts[name], target)


def input_shape(model_input: tuple[int, int, int], batch: int) -> tuple[int, ...]:
    return (batch, *model_input)


Loader = Callable[[], Runner]


def artifact_loader(model: nn.Module | None, target: Target, bundle_dir: Path | None,
                    artifacts: dict[str, Artifact]) -> Loader:
    """Loads the artifact for ``target`` anew (a fresh compile or session) on every call."""
    return lambda: runner_for(model, target, bundle_dir, artifacts)


def export_loader(model: nn.Module, target: Target, folder: Path, x: torch.Tensor, *,
                  probe: bool = True) -> Loader:
    """``model`` exported for ``target`` into ``folder``, once (as a latency probe unless
    ``probe`` is False: then as a bundle is exported); the loader loads it as deployed."""
    name = exporter_for_runtime(target.runtime)
    artifacts: dict[str, Artifact] = {}
    if name is not None:
        ctx = ExportContext(Path(folder), x, target, {}, probe=probe)
        export_chain(model, [name], ctx)
        artifacts = ctx.artifacts
    return artifact_loader(model, target, Path(folder), artifacts)


def measure_model(model: nn.Module, target: Target, example_shape: tuple[int, ...],
                  protocol: Protocol = Protocol(), instances: int = INSTANCES) -> LatencyReport:
    """Export ``model`` for ``target`` into a scratch folder and time it there (the median over
    ``instances`` fresh loads)."""
    check_target_device(target)
    x = torch.randn(*example_shape)
    with tempfile.TemporaryDirectory(prefix=scratch_prefix("measure")) as tmp:
        load = export_loader(model, target, Path(tmp), x)
        return measure_instances(load, x.numpy(), batch=target.batch, threads=target.threads,
                                 protocol=protocol, instances=instances)


@dataclass
class SideTiming:
    p50_ms: float  # drift-corrected: raw p50 / reference p50 (same run) x the reference's p50
    p90_ms: float
    raw_p50_ms: float  # as timed in this run
    raw_p90_ms: float
    reference_p50_ms: float  # the reference, timed beside it
    ratio: float  # raw_p50_ms / reference_p50_ms
    runs: int
    instance_ratios: list[float] = field(default_factory=list)  # one per pair of fresh loads


class SideBySide:
    """Times networks beside one reference network, interleaved round by round.

    A shared CPU's speed drifts by more than the window the closed loop aims into: on the 2-vCPU
    development VM one network's p50 moved 0.135 → 0.164 ms between measurements a minute apart.
    Networks timed beside each other drift together, so their ratio holds. A network's latency
    is reported as its ratio to the reference times ``reference_ms`` (the reference's p50 when
    the budget was set): what it would have measured then.

    The ratio also depends on the load: one compile of the same files ran up to 6% faster or
    slower than the next, for the candidate and the reference alike (see ``INSTANCES``). So each
    measurement loads both anew ``instances`` times, times each pair interleaved in 21 rounds
    (``seconds`` of calls per network in all, split between the pairs) and reports the median
    of the pairs' ratios.
    """

    ROUNDS = 21

    def __init__(self, reference: nn.Module, target: Target, example_shape: tuple[int, ...],
                 reference_ms: float, seconds: float = 1.5, instances: int = INSTANCES):
        check_target_device(target)
        self.target, self.reference_ms = target, float(reference_ms)
        self.seconds, self.instances = seconds, instances
        self._x = torch.randn(*example_shape, generator=torch.Generator().manual_seed(0))
        self._dir = tempfile.TemporaryDirectory(prefix=scratch_prefix("reference"))
        self._load_ref: Loader | None = export_loader(reference, target, Path(self._dir.name),
                                                     self._x)

    def protocol_line(self, seconds: float | None = None) -> str:
        return (f"timed side by side with the largest subnet: {self.instances} pairs of fresh "
                f"loads (compiled or opened anew), each pair interleaved over {self.ROUNDS} "
                f"rounds after 5 warm-up calls each, about {seconds or self.seconds:g} s of calls "
                f"per network in all, each call timed alone with perf_counter; p50 per load over "
                f"its calls, ratio to the reference per pair, median over pairs; batch "
                f"{self.target.batch}, {self.target.threads} intra-op thread(s)")

    def time(self, load: Loader, seconds: float | None = None) -> SideTiming:
        """Time the network ``load()`` loads beside the reference."""
        if self._load_ref is None:
            raise RuntimeError("SideBySide is closed")
        share = (self.seconds if seconds is None else seconds) / self.instances
        x = self._x.numpy()
        pairs = []
        for _ in range(self.instances):
            run, ref = load(), self._load_ref()
            t0 = time.perf_counter()
            for _ in range(5):
                run(x)
                ref(x)
            per_call = max((time.perf_counter() - t0) / 10, 1e-6)
            calls = int(min(max(share / self.ROUNDS / per_call, 3), 2000))
            pairs.append(time_interleaved([run, ref], [x, x],
                                          TableProtocol(warmup=5, rounds=self.ROUNDS, calls=calls)))
            del run, ref
        ratios = [c.p50_ms / r.p50_ms for c, r in pairs]
        ratio = float(np.median(ratios))
        ref_p50 = float(np.median([r.p50_ms for _, r in pairs]))
        return SideTiming(p50_ms=ratio * self.reference_ms,
                          p90_ms=float(np.median([c.p90_ms / r.p50_ms for c, r in pairs]))
                          * self.reference_ms,
                          raw_p50_ms=ratio * ref_p50,
                          raw_p90_ms=float(np.median([c.p90_ms for c, _ in pairs])),
                          reference_p50_ms=ref_p50, ratio=ratio,
                          runs=sum(c.runs for c, _ in pairs), instance_ratios=ratios)

    def measure(self, model: nn.Module) -> SideTiming:
        with tempfile.TemporaryDirectory(prefix=scratch_prefix("measure")) as tmp:
            return self.time(export_loader(model, self.target, Path(tmp), self._x))

    def close(self) -> None:
        self._load_ref = None
        self._dir.cleanup()


def random_input(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
