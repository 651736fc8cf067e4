"""The exporter contract: one class per deployment format, found through entry points.

An exporter writes its files into the bundle directory it is given, reloads them in its runtime,
and hands back a ``Runner`` (numpy in, numpy out) that both parity checks and latency
measurement use, so the artifact that is verified is the artifact that is timed.

Each exporter also declares what runs its files (``RuntimeDeclaration``): the runtimes and
devices, the precisions each runtime executes and why others are refused, the channel counts
the runtime runs best. Targets are parsed against these declarations (``nas2deploy.target``), so a
new runtime arrives with its exporter and core names none. Eager ``torch`` runs the PyTorch model
itself and has no exporter; ``EagerTorch`` below declares it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import numpy as np
import torch
from torch import nn

from .errors import ParityError, ShapeError

if TYPE_CHECKING:  # only annotations: target.py parses targets against the declarations here
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


class RuntimeDeclaration:
    """What runs a format: the ``Target`` runtimes, devices and precisions it accepts.

    ``runtimes`` maps each runtime to its devices (the first is the default where a target names
    none); ``precisions`` maps a runtime to what it executes (fp32 where a runtime is not listed),
    each one of ``nas2deploy.target.PRECISIONS``; ``why_not`` says, per (runtime, precision),
    why a precision is refused where the list of supported ones would not tell a user enough.
    """

    name: ClassVar[str]
    runtimes: ClassVar[dict[str, tuple[str, ...]]] = {}
    precisions: ClassVar[dict[str, tuple[str, ...]]] = {}
    why_not: ClassVar[dict[tuple[str, str], str]] = {}

    @classmethod
    def supported_precisions(cls, runtime: str) -> tuple[str, ...]:
        return tuple(cls.precisions.get(runtime, ("fp32",)))

    @classmethod
    def refusal(cls, runtime: str, precision: str) -> str:
        """Why ``runtime`` does not run ``precision``, in a clause."""
        return cls.why_not.get((runtime, precision),
                               f"{runtime} supports {', '.join(cls.supported_precisions(runtime))}")

    @classmethod
    def channel_multiple(cls, target: Target) -> int:
        """Channel counts width scaling rounds down to for ``target`` (1: any runs as well)."""
        return 1

    @classmethod
    def versions(cls) -> dict[str, str]:
        """Versions of the libraries this exporter uses, for the manifest."""
        return {}

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None when this exporter can run here, else one line saying what is missing."""
        return None

    @classmethod
    def not_runnable_reason(cls) -> str | None:
        """None when this machine can run (and so time) what this exporter writes; else one line
        saying why not. A format that is written here for another device (TensorRT engines for
        a Jetson) says so, and search-and-export then steers by a latency table measured on that
        device and leaves the verdict to ``nas2deploy measure`` there."""
        return None


class EagerTorch(RuntimeDeclaration):
    """The eager ``torch`` runtime: the PyTorch model run as it is (``torch_runner``), a
    reference rather than a deployment, so nothing is exported for it."""

    name = "torch"
    runtimes = {"torch": ("cpu", "cuda")}
    precisions = {"torch": ("fp32",)}
    why_not = {("torch", "fp16"): "eager torch is a reference runtime here, fp32 only",
               ("torch", "int8"): "eager torch is a reference runtime here, fp32 only"}

    @classmethod
    def versions(cls) -> dict[str, str]:
        return {"torch": torch.__version__}


class Exporter(RuntimeDeclaration, ABC):
    """One deployment format.

    A format finished on the device that runs it (an engine that only that GPU can build) also
    implements ``build_engine(bundle_dir, artifact, *, precision, method, log) -> Artifact``,
    which ``nas2deploy build-engine`` calls there; its ``device_build_writes`` names the artifact
    files that build writes and ``device_build_reads`` the info keys naming the files it reads.
    """

    runtime: ClassVar[str | None] = None  # the Target runtime this format serves: runtimes' first
    needs: ClassVar[tuple[str, ...]] = ()  # formats that must be exported first
    parity_atol: ClassVar[float] = 1e-4
    description: ClassVar[str] = ""
    device_build_writes: ClassVar[tuple[str, ...]] = ()
    device_build_reads: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "runtimes" in cls.__dict__ and "runtime" not in cls.__dict__:
            cls.runtime = next(iter(cls.runtimes), None)

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
