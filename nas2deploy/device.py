"""Where training and evaluation run: ``--device`` and ``--amp``, resolved and checked before any
work. Latency is never measured here: it is measured on the target runtime."""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from .errors import UsageError

DEVICE_FORMS = "auto, cpu, cuda or cuda:N"
AMP_MODES = ("auto", "bf16", "fp16", "off")


@dataclass(frozen=True)
class Compute:
    """The resolved device and mixed-precision mode of a run."""

    device: torch.device
    amp: str  # "bf16", "fp16" or "off"

    @property
    def dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.amp)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for a forward pass (a no-op when AMP is off)."""
        if self.amp == "off":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def scaler(self) -> "torch.amp.GradScaler":
        """Loss scaling for fp16 (disabled, a pass-through, otherwise)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"device": str(self.device), "amp": self.amp}
        if self.device.type == "cuda":
            out["gpu"] = torch.cuda.get_device_name(self.device)
            out["channels_last"] = True
            out["cudnn_benchmark"] = bool(torch.backends.cudnn.benchmark)
        return out

    def prepare(self) -> None:
        """Per-process switches that help on a GPU: cuDNN picks its fastest kernels for the
        (fixed) shapes a search and a retrain see."""
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True


def resolve(device: str = "auto", amp: str = "auto") -> Compute:
    """``device`` and ``amp`` as the run will use them; one UsageError line when this machine
    cannot: CUDA asked for where there is none, a GPU index past the last, AMP on a CPU, bf16 on
    a GPU without it."""
    dev = _device(device)
    if amp not in AMP_MODES:
        raise UsageError(f"--amp must be one of {', '.join(AMP_MODES)}, not {amp!r}")
    if dev.type == "cpu":
        if amp in ("bf16", "fp16"):
            raise UsageError(f"--amp {amp} needs a CUDA device (--device is cpu here); use "
                             f"--amp off or --amp auto")
        return Compute(dev, "off")
    bf16 = torch.cuda.is_bf16_supported()
    if amp == "bf16" and not bf16:
        raise UsageError(f"--amp bf16: {torch.cuda.get_device_name(dev)} cannot run bfloat16; "
                         f"use --amp fp16 or --amp off")
    if amp == "auto":
        amp = "bf16" if bf16 else "fp16"
    return Compute(dev, amp)


def _device(spec: str) -> torch.device:
    if not isinstance(spec, str) or not re.fullmatch(r"auto|cpu|cuda(:\d{1,3})?", spec):
        raise UsageError(f"--device must be {DEVICE_FORMS}, not {spec!r}")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UsageError(f"--device {spec}: no CUDA GPU is visible to this torch "
                         f"({torch.__version__}); use --device cpu or auto")
    dev = torch.device(spec)
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    count = torch.cuda.device_count()
    if index >= count:
        raise UsageError(f"--device {spec}: this machine has {count} CUDA device(s) "
                         f"(cuda:0..cuda:{count - 1})")
    return torch.device("cuda", index)


@contextlib.contextmanager
def on(module: torch.nn.Module, compute: Compute) -> Iterator[torch.nn.Module]:
    """``module`` moved to the run's device (channels_last on a GPU) for the block, and back to
    the CPU after it: export, latency and bundles work on CPU modules."""
    if compute.device.type == "cpu":
        yield module
        return
    module.to(compute.device, memory_format=torch.channels_last)
    try:
        yield module
    finally:
        module.to("cpu", memory_format=torch.contiguous_format)


class LossScale:
    """Dynamic loss scaling for gradients taken with ``torch.autograd.grad`` (which
    ``torch.amp.GradScaler`` cannot unscale: it works on ``.grad`` through an optimizer). The
    same rule as GradScaler: start at 2**16, halve on a non-finite gradient and skip that step,
    double after ``growth_interval`` finite steps. Disabled (scale 1, never skips) unless fp16."""

    def __init__(self, compute: Compute, init: float = 2.0 ** 16, growth_interval: int = 2000):
        self.enabled = compute.amp == "fp16"
        self.scale = init if self.enabled else 1.0
        self.growth_interval = growth_interval
        self._good = 0
        self.skipped = 0

    def grads(self, loss: torch.Tensor, params: list[torch.Tensor], allow_unused: bool = True,
              average: Callable[[list], None] | None = None) -> list[torch.Tensor | None] | None:
        """Unscaled float32 gradients of ``loss`` w.r.t. ``params``; None (the step is to be
        skipped) when any is inf or NaN under fp16. ``average`` (``SearchContext.average``):
        averages them across ranks first, so every rank takes or skips the step alike."""
        if not self.enabled:
            out = list(torch.autograd.grad(loss, params, allow_unused=allow_unused))
            if average is not None:
                average(out)
            return out
        scaled = list(torch.autograd.grad(loss.float() * self.scale, params,
                                          allow_unused=allow_unused))
        if average is not None:
            average(scaled)
        out = [None if g is None else g.float() / self.scale for g in scaled]
        finite = all(bool(torch.isfinite(g).all()) for g in out if g is not None)
        if not finite:
            self.scale /= 2.0
            self._good = 0
            self.skipped += 1
            return None
        self._good += 1
        if self._good >= self.growth_interval:
            self.scale *= 2.0
            self._good = 0
        return out

    def state_dict(self) -> dict[str, float]:
        return {"scale": self.scale, "good": self._good, "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.scale, self._good, self.skipped = (float(state["scale"]), int(state["good"]),
                                                int(state["skipped"]))
