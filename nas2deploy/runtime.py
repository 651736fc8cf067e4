"""Runtimes: resolve exporters for a target, export into a folder, and measure there."""

from __future__ import annotations

import importlib.metadata as md
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import registry
from .errors import UnavailableError, UsageError
from .exporter import Artifact, ExportContext, Exporter, Runner, torch_runner
from .latency import LatencyReport, Protocol, measure
from .target import Target


def exporter_for_runtime(runtime: str) -> str | None:
    """Name of the registered exporter that serves ``runtime`` (None for eager torch)."""
    if runtime == "torch":
        return None
    for entry in registry.exporters.entries():
        if entry.obj is not None and getattr(entry.obj, "runtime", None) == runtime:
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


def probe_runner(model: nn.Module, target: Target, folder: Path, x: torch.Tensor) -> Runner:
    """``model`` exported for ``target`` as a latency probe into ``folder``, loaded as deployed."""
    name = exporter_for_runtime(target.runtime)
    artifacts: dict[str, Artifact] = {}
    if name is not None:
        ctx = ExportContext(Path(folder), x, target, {}, probe=True)
        export_chain(model, [name], ctx)
        artifacts = ctx.artifacts
    return runner_for(model, target, Path(folder), artifacts)


def measure_model(model: nn.Module, target: Target, example_shape: tuple[int, ...],
                  protocol: Protocol = Protocol()) -> LatencyReport:
    """Export ``model`` for ``target`` into a scratch folder and time it there."""
    check_target_device(target)
    x = torch.randn(*example_shape)
    with tempfile.TemporaryDirectory(prefix="nas2deploy-measure-") as tmp:
        run = probe_runner(model, target, Path(tmp), x)
        return measure(run, x.numpy(), batch=target.batch, threads=target.threads,
                       protocol=protocol)


@dataclass
class SideTiming:
    p50_ms: float  # drift-corrected: raw p50 / reference p50 (same run) x the reference's p50
    p90_ms: float
    raw_p50_ms: float  # as timed in this run
    raw_p90_ms: float
    reference_p50_ms: float  # the reference, timed beside it
    ratio: float  # raw_p50_ms / reference_p50_ms
    runs: int


class SideBySide:
    """Times networks beside one reference network, interleaved round by round in one run.

    A shared CPU's speed drifts by more than the window the closed loop aims into: on the 2-vCPU
    development VM one network's p50 moved 0.135 → 0.164 ms between measurements a minute apart.
    Networks timed beside each other drift together, so their ratio holds. A network's latency
    is reported as its ratio to the reference times ``reference_ms`` (the reference's p50 when
    the budget was set): what it would have measured then. ``seconds``: timed calls per network
    per measurement, in 21 interleaved rounds.
    """

    ROUNDS = 21

    def __init__(self, reference: nn.Module, target: Target, example_shape: tuple[int, ...],
                 reference_ms: float, seconds: float = 1.0):
        check_target_device(target)
        self.target, self.reference_ms, self.seconds = target, float(reference_ms), seconds
        self._x = torch.randn(*example_shape, generator=torch.Generator().manual_seed(0))
        self._dir = tempfile.TemporaryDirectory(prefix="nas2deploy-reference-")
        self._ref = probe_runner(reference, target, Path(self._dir.name), self._x)

    def protocol_line(self, seconds: float | None = None) -> str:
        return (f"timed side by side with the largest subnet, interleaved: 5 warm-up calls each, "
                f"then {self.ROUNDS} rounds, about {seconds or self.seconds:g} s of calls per "
                f"network, each call timed alone with perf_counter; p50 over all calls; batch "
                f"{self.target.batch}, {self.target.threads} intra-op thread(s)")

    def time(self, run: Runner, seconds: float | None = None) -> SideTiming:
        from .lut import TableProtocol, time_interleaved

        seconds = self.seconds if seconds is None else seconds
        x = self._x.numpy()
        t0 = time.perf_counter()
        for _ in range(5):
            run(x)
            self._ref(x)
        per_call = max((time.perf_counter() - t0) / 10, 1e-6)
        calls = int(min(max(seconds / self.ROUNDS / per_call, 3), 2000))
        cand, ref = time_interleaved([run, self._ref], [x, x],
                                     TableProtocol(warmup=5, rounds=self.ROUNDS, calls=calls))
        ratio = cand.p50_ms / ref.p50_ms
        return SideTiming(p50_ms=ratio * self.reference_ms,
                          p90_ms=cand.p90_ms / ref.p50_ms * self.reference_ms,
                          raw_p50_ms=cand.p50_ms, raw_p90_ms=cand.p90_ms,
                          reference_p50_ms=ref.p50_ms, ratio=ratio,
                          runs=cand.runs)

    def measure(self, model: nn.Module) -> SideTiming:
        with tempfile.TemporaryDirectory(prefix="nas2deploy-measure-") as tmp:
            return self.time(probe_runner(model, self.target, Path(tmp), self._x))

    def close(self) -> None:
        self._ref = None
        self._dir.cleanup()


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    import os

    env: dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(),
        "cpu": cpu_name(), "cpu_count": os.cpu_count(),
    }
    for dist in ("nas2deploy", "torch", "torch-pruning", "onnx", "onnxscript", "onnxruntime",
                 "openvino", "numpy", "safetensors"):
        env[dist.replace("-", "_")] = _version(dist)
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def random_input(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
