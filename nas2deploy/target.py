"""Target: where a model runs. Plain data, parsed from ``runtime:device[:precision]``.

The runtimes, their devices and the precisions each runs are not listed here: every registered
exporter declares the runtime(s) it serves (``nas2deploy.exporter.RuntimeDeclaration``), eager
torch is declared beside the Exporter contract, and a target is parsed against those.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from . import registry
from .config import MAX_BATCH, MAX_THREADS
from .errors import UsageError
from .exporter import EagerTorch, RuntimeDeclaration

# The words a target may use for a precision; which of them a runtime runs, it declares.
# int8 is always explicit quantization (a Q/DQ ONNX model).
PRECISIONS = ("fp32", "fp16", "int8")


def declarations() -> list[type[RuntimeDeclaration]]:
    """Eager torch, then every registered exporter that loads, by name: the order in which a
    runtime declared twice goes to its first declarer, here and in ``exporter_for_runtime``."""
    return [EagerTorch] + [e.obj for e in registry.exporters.entries()
                           if isinstance(e.obj, type) and issubclass(e.obj, RuntimeDeclaration)]


def runtimes() -> dict[str, tuple[str, ...]]:
    """Every declared runtime and its devices (the default device first)."""
    found: dict[str, tuple[str, ...]] = {}
    for decl in declarations():
        for runtime, devices in decl.runtimes.items():
            found.setdefault(runtime, tuple(devices))
    return found


def declaration(runtime: str) -> type[RuntimeDeclaration]:
    """What declares ``runtime``; UsageError naming the declared runtimes if nothing does."""
    for decl in declarations():
        if runtime in decl.runtimes:
            return decl
    raise UsageError(f"unknown runtime {runtime!r}; choose one of {', '.join(runtimes())}")


def supported_precisions(runtime: str) -> tuple[str, ...]:
    return declaration(runtime).supported_precisions(runtime)


def channel_multiple(target: Target) -> int:
    """Channel counts width scaling rounds down to for ``target``, as its runtime declares."""
    if target.runtime not in runtimes():
        return 1
    return int(declaration(target.runtime).channel_multiple(target))


@dataclass(frozen=True)
class Target:
    runtime: str
    device: str = "cpu"
    precision: str = "fp32"
    batch: int = 1
    threads: int = 1

    @classmethod
    def parse(cls, text: str, *, batch: int = 1, threads: int = 1) -> "Target":
        parts = text.strip().lower().split(":")
        if not 1 <= len(parts) <= 3 or not all(parts):
            raise UsageError(f"malformed target {text!r}; expected RUNTIME:DEVICE[:PRECISION], "
                             f"e.g. openvino:cpu or onnxruntime:cpu:fp32")
        runtime = parts[0]
        known = runtimes()
        if runtime not in known:
            raise UsageError(f"unknown runtime {runtime!r} in target {text!r}; choose one of "
                             f"{', '.join(known)}")
        decl = declaration(runtime)
        device = parts[1] if len(parts) > 1 else known[runtime][0]
        if device not in known[runtime]:
            raise UsageError(f"runtime {runtime} has no device {device!r}; choose one of "
                             f"{', '.join(known[runtime])}")
        precision = parts[2] if len(parts) > 2 else "fp32"
        if precision not in PRECISIONS:
            raise UsageError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        if precision not in decl.supported_precisions(runtime):
            raise UsageError(f"target {runtime}:{device}:{precision} is not supported: "
                             f"{decl.refusal(runtime, precision)}")
        # every way in (options, `lut build`, a bundle's manifest) meets the same bounds
        if not 1 <= batch <= MAX_BATCH:
            raise UsageError(f"batch must be in 1..{MAX_BATCH}, not {batch}")
        if not 1 <= threads <= MAX_THREADS:
            raise UsageError(f"threads must be in 1..{MAX_THREADS}, not {threads}")
        return cls(runtime, device, precision, batch, threads)

    def __str__(self) -> str:
        return f"{self.runtime}:{self.device}:{self.precision}"

    def to_dict(self) -> dict:
        return asdict(self)
