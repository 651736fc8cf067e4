"""Runtimes: resolve exporters for a target, export into a folder, and measure there."""

from __future__ import annotations

import importlib.metadata as md
import platform
import tempfile
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


def measure_model(model: nn.Module, target: Target, example_shape: tuple[int, ...],
                  protocol: Protocol = Protocol()) -> LatencyReport:
    """Export ``model`` for ``target`` into a scratch folder and time it there."""
    check_target_device(target)
    x = torch.randn(*example_shape)
    with tempfile.TemporaryDirectory(prefix="nas2deploy-measure-") as tmp:
        name = exporter_for_runtime(target.runtime)
        artifacts: dict[str, Artifact] = {}
        if name is not None:
            ctx = ExportContext(Path(tmp), x, target, {})
            export_chain(model, [name], ctx)
            artifacts = ctx.artifacts
        run = runner_for(model, target, Path(tmp), artifacts)
        return measure(run, x.numpy(), batch=target.batch, threads=target.threads,
                       protocol=protocol)


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
