"""The exporter contract: one class per deployment format, found through entry points.

An exporter writes its files into the bundle directory it is given, reloads them in its runtime,
and hands back a ``Runner`` (numpy in, numpy out) that both parity checks and latency
measurement use, so the artifact that is verified is the artifact that is timed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch import nn

from .errors import ParityError, ShapeError
from .target import Target

Runner = Callable[[np.ndarray], np.ndarray]


@dataclass
class Artifact:
    format: str
    files: dict[str, str]  # logical name -> path relative to the bundle root
    info: dict[str, Any] = field(default_factory=dict)  # e.g. opset, runtime version

    # An artifact written here for another machine (a TensorRT build script where TensorRT is
    # absent) sets info["runnable"] = False and says why in info["not_runnable_reason"]; parity
    # and latency are then checked where it is built (``nas2deploy measure`` on the device).
    @property
    def runnable(self) -> bool:
        return bool(self.info.get("runnable", True))


@dataclass
class ExportContext:
    bundle_dir: Path  # where files go (a temporary directory until the bundle is committed)
    example: torch.Tensor  # a real input batch of the deployed shape
    target: Target
    metadata: dict[str, str]  # embedded where the format allows (ONNX metadata_props)
    artifacts: dict[str, Artifact] = field(default_factory=dict)  # produced earlier this run
    # Real training images for int8 calibration (NCHW, normalised like ``example``). None means
    # the artifact is only a latency probe: exporters may calibrate on random inputs and say so.
    calibration: torch.Tensor | None = None
    # True: the artifact is only timed (closed-loop candidates, latency tables, the budget's
    # reference nets) and thrown away. An exporter may then take a faster path that yields the
    # same graph; the bundle's own artifact never does.
    probe: bool = False


class Exporter(ABC):
    name: ClassVar[str]
    runtime: ClassVar[str | None] = None  # the Target runtime this format serves
    needs: ClassVar[tuple[str, ...]] = ()  # formats that must be exported first
    parity_atol: ClassVar[float] = 1e-4
    description: ClassVar[str] = ""

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None when this exporter can run here, else one line saying what is missing."""
        return None

    @classmethod
    def versions(cls) -> dict[str, str]:
        """Versions of the libraries this exporter uses, for the manifest."""
        return {}

    @classmethod
    def not_runnable_reason(cls) -> str | None:
        """None when this machine can run (and so time) what this exporter writes; else one line
        saying why not. A format that is written here for another device (TensorRT engines for
        a Jetson) says so, and search-and-export then steers by a latency table measured on that
        device and leaves the verdict to ``nas2deploy measure`` there."""
        return None

    @abstractmethod
    def export(self, model: nn.Module, ctx: ExportContext) -> Artifact:
        """Write the artifact's files under ``ctx.bundle_dir`` and return what was written."""

    @abstractmethod
    def runner(self, bundle_dir: Path, artifact: Artifact, target: Target) -> Runner:
        """Load the artifact in its runtime for ``target`` and return a callable."""


def verify_parity(reference: nn.Module, runner: Runner, x: torch.Tensor, *, atol: float) -> float:
    """Max |runtime − PyTorch| on ``x``; raises ShapeError/ParityError instead of warning."""
    with torch.no_grad():
        expected = reference.eval()(x).detach().cpu().numpy()
    got = np.asarray(runner(x.detach().cpu().numpy()))
    if got.shape != expected.shape:
        raise ShapeError(f"output shape {got.shape} != reference {expected.shape}")
    worst = float(np.abs(got - expected).max())
    if not np.isfinite(worst) or worst > atol:
        raise ParityError(f"max |diff| {worst:.2e} > atol {atol:.0e}")
    return worst


def torch_runner(model: nn.Module, threads: int, device: str = "cpu") -> Runner:
    """Eager PyTorch as a runtime (``torch:cpu``/``torch:cuda``): a reference, not a deployment.

    On CPU it is about 10× slower than onnxruntime/OpenVINO for small nets. On CUDA the call
    synchronises, so a timed call covers the copy in, the kernels and the copy out.
    """
    model = model.eval().to(device)

    def run(x: np.ndarray) -> np.ndarray:
        prev = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with torch.inference_mode():
                out = model(torch.from_numpy(x).to(device)).cpu().numpy()
            return out
        finally:
            torch.set_num_threads(prev)

    return run
