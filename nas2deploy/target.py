"""Target: where a model runs. Plain data, parsed from ``runtime:device[:precision]``."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .config import MAX_BATCH, MAX_THREADS
from .errors import UsageError

RUNTIMES = {
    "torch": ("cpu", "cuda"),
    "onnxruntime": ("cpu",),
    "openvino": ("cpu",),
    "tensorrt": ("cuda",),
}
PRECISIONS = ("fp32", "fp16", "int8")
# What each runtime can execute; int8 is always explicit quantization (a Q/DQ ONNX model).
SUPPORTED_PRECISIONS = {
    "torch": ("fp32",),
    "onnxruntime": ("fp32", "int8"),
    "openvino": ("fp32", "fp16", "int8"),
    "tensorrt": ("fp32", "fp16", "int8"),
}
_WHY_NOT = {
    ("onnxruntime", "fp16"): "onnxruntime's CPU provider has no fp16 convolution kernels (it would "
                             "cast around every op); use onnxruntime:cpu:int8 or openvino:cpu:fp16",
    ("torch", "fp16"): "eager torch is a reference runtime here, fp32 only",
    ("torch", "int8"): "eager torch is a reference runtime here, fp32 only",
}


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
        if runtime not in RUNTIMES:
            raise UsageError(f"unknown runtime {runtime!r} in target {text!r}; choose one of "
                             f"{', '.join(RUNTIMES)}")
        device = parts[1] if len(parts) > 1 else RUNTIMES[runtime][0]
        if device not in RUNTIMES[runtime]:
            raise UsageError(f"runtime {runtime} has no device {device!r}; choose one of "
                             f"{', '.join(RUNTIMES[runtime])}")
        precision = parts[2] if len(parts) > 2 else "fp32"
        if precision not in PRECISIONS:
            raise UsageError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        if precision not in SUPPORTED_PRECISIONS[runtime]:
            why = _WHY_NOT.get((runtime, precision), f"{runtime} supports "
                               f"{', '.join(SUPPORTED_PRECISIONS[runtime])}")
            raise UsageError(f"target {runtime}:{device}:{precision} is not supported: {why}")
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
