"""TensorRT engines from the bundle's ONNX file, built on the GPU that runs them.

A TensorRT engine is specific to the GPU and the TensorRT version that built it, so the bundle
always carries what the device needs to build its own: ``tensorrt/build_engine.sh`` (one
``trtexec`` command with the input shapes, precision and timing cache) and ``tensorrt/README.md``.
Both are checked here before they are written: the ONNX graph against TensorRT's documented
ONNX-parser operator list (``tensorrt_onnx_ops.json``), the input shapes against the
optimization profile, the script with ``bash -n`` and every file it reads against the bundle.

Where ``tensorrt`` imports and a CUDA GPU is visible, the engine is also built in-process with the
TensorRT 10 Python API (``tensorrt/model.engine``) and the artifact is runnable here; elsewhere
it says it is not (``info["runnable"] = False``) and ``nas2deploy build-engine BUNDLE`` builds it
on the device. The runner uses torch for CUDA memory, the stream and CUDA events (no cuda-python).

Precision: fp32 clears TF32 (see ``build._configure``), fp16 sets the FP16 builder flag, int8 builds
from the Q/DQ ONNX of the onnx exporter with the INT8 flag (explicit quantization: the scales are
in the graph, no calibrator).

The package is split by job: ``check`` (the parser's operator list), ``plan`` (profile and
files), ``scripts`` (build_engine.sh and README.md), ``build`` (in-process and trtexec builds),
``runner`` (the engine runner); the exporter is here.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata as md
import os
import shlex
from pathlib import Path
from typing import Any

from torch import nn

from nas2deploy import engine as device
from nas2deploy.bundle import bundle_file, sha256
from nas2deploy.errors import BundleError, ExportError, UnavailableError, UsageError
from nas2deploy.exporter import Artifact, ExportContext, Exporter, Runner
from nas2deploy.target import Target

from .._common import one_line
from .build import (build_with_python, build_with_trtexec, cuda_missing, find_trtexec,
                    tensorrt_import_error)
from .check import check_graph, local_tensorrt_version, supported_ops
from .plan import (CACHE, ENGINE, README, SCRIPT, TRTEXEC_DIRS, WORKSPACE_MIB, Plan, make_plan,
                   onnx_variants, pick_onnx)
from .runner import EngineRunner
from .scripts import check_script, verify_script, write_device_files

__all__ = ["TensorRTExporter", "EngineRunner", "Plan", "make_plan", "check_graph",
           "supported_ops", "check_script", "verify_script", "find_trtexec",
           "tensorrt_import_error", "cuda_missing", "ENGINE", "CACHE", "SCRIPT", "README"]

BUILD_HINT = "run `nas2deploy build-engine BUNDLE` on the device that has TensorRT and the GPU"


class TensorRTExporter(Exporter):
    name = "tensorrt"
    runtimes = {"tensorrt": ("cuda",)}
    precisions = {"tensorrt": ("fp32", "fp16", "int8")}
    needs = ("onnx",)
    # `nas2deploy build-engine` builds the engine on the device from the ONNX files the
    # artifact's info names; the engine itself is not hash-checked first (missing, or hand-built)
    device_build_writes = ("engine",)
    device_build_reads = ("onnx", "onnx_fp32", "onnx_qdq")
    # fp32 engines (TF32 off) against PyTorch on the CPU: cuDNN/TensorRT kernels sum in other
    # orders (Winograd, split-K), ~1e-5 relative on logits of a few units; 1e-3 absolute is what
    # torch:cuda is held to as well. fp16/int8 are checked by top-1 agreement instead.
    parity_atol = 1e-3
    description = ("TensorRT engine from the ONNX file (profile batch 1..N, fp32/fp16/int8 Q/DQ, "
                   "timing cache) built in-process where TensorRT and a GPU exist; everywhere a "
                   "checked trtexec build script and README for the device")

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return None  # the checked script and README can be written anywhere

    @classmethod
    def versions(cls) -> dict[str, str]:
        try:
            version = md.version("tensorrt")
        except md.PackageNotFoundError:  # JetPack installs the bindings without pip metadata
            version = local_tensorrt_version() or "not installed"
        return {"tensorrt": version}

    @classmethod
    def not_runnable_reason(cls) -> str | None:
        return cls._cannot_build_here()

    def export(self, model: nn.Module, ctx: ExportContext) -> Artifact:
        onnx_art = ctx.artifacts.get("onnx")
        if onnx_art is None:
            raise ExportError("tensorrt export needs the onnx artifact; export onnx first")
        precision = ctx.target.precision
        variants = onnx_variants(ctx.bundle_dir, onnx_art.files)
        try:
            onnx_rel = pick_onnx(variants, precision)
        except UsageError as exc:
            raise ExportError(str(exc)) from exc
        plan, checked = make_plan(ctx.bundle_dir, onnx_rel, precision, ctx.target.batch,
                                  tuple(ctx.example.shape))
        reason = self._cannot_build_here()
        script_check = write_device_files(ctx.bundle_dir, plan)
        info = self._plan_info(plan, variants, checked)
        info["script_check"] = script_check
        files = {"script": SCRIPT, "readme": README}
        if reason is None:
            info.update(self._record_build(ctx.bundle_dir, build_with_python(ctx.bundle_dir, plan)))
            files["engine"] = ENGINE
        else:
            info.update({"engine_built": False, "runnable": False, "not_runnable_reason": reason})
        return Artifact(self.name, files, info)

    @staticmethod
    def _cannot_build_here() -> str | None:
        err = tensorrt_import_error()
        if err is not None:
            return f"tensorrt is not installed here ({err}); {BUILD_HINT}"
        missing = cuda_missing()
        if missing:
            return f"{missing}; {BUILD_HINT}"
        return None

    @staticmethod
    def _plan_info(plan: Plan, variants: dict[str, str | None], checked: dict) -> dict[str, Any]:
        how = {"fp32": {"tf32": False},
               "fp16": {"fp16_flag": True},
               "int8": {"quantization": "explicit: Q/DQ ONNX with the INT8 flag, no calibrator"}}
        return {
            "precision": plan.precision, **how[plan.precision],
            "onnx": plan.onnx, "onnx_fp32": variants["fp32"], "onnx_qdq": variants["qdq"],
            "input_name": plan.input_name, "output_name": plan.output_name,
            "profile": plan.profile(), "workspace_mib": WORKSPACE_MIB,
            "script": SCRIPT, "readme": README, "engine": ENGINE, "timing_cache": CACHE,
            "trtexec": " ".join(shlex.quote(a) for a in ["trtexec"] + plan.trtexec_args(
                plan.onnx, ENGINE, CACHE)),
            "onnx_check": checked,
        }

    @staticmethod
    def _record_build(bundle_dir: Path, built: dict[str, Any]) -> dict[str, Any]:
        gpu = device.gpu_info()
        return {**built, "engine_built": True, "runnable": True, "not_runnable_reason": None,
                "device": gpu.get("name") or built.get("trtexec_device"),
                "compute_capability": gpu.get("compute_capability"),
                "built_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "engine_sha256": sha256(Path(bundle_dir) / ENGINE),
                "engine_bytes": (Path(bundle_dir) / ENGINE).stat().st_size}

    # ---- on the device: ``nas2deploy build-engine`` ----

    def build_engine(self, bundle_dir: Path, artifact: Artifact, *, precision: str | None = None,
                     method: str = "auto", log=lambda message: None) -> Artifact:
        """Build ``tensorrt/model.engine`` on this machine and return the updated artifact.

        ``method``: "python" (TensorRT's Python API), "trtexec" (trtexec with the command the
        bundle's script holds, regenerated) or "auto" (Python if the bindings import, else
        trtexec). BundleError where the bundle's script is not the one nas2deploy writes for the
        recorded plan; UnavailableError, one line, where TensorRT or the GPU is missing;
        UsageError for a precision the bundle's ONNX cannot give.
        """
        root = Path(bundle_dir)
        info = dict(artifact.info)
        recorded = info.get("precision") or "fp32"
        precision = precision or recorded
        if precision not in ("fp32", "fp16", "int8"):
            raise UsageError(f"unknown precision {precision!r}; choose fp32, fp16 or int8")
        if recorded not in ("fp32", "fp16", "int8"):
            raise BundleError(f"the bundle's tensorrt artifact records precision {recorded!r}")
        variants = {"fp32": info.get("onnx_fp32"), "qdq": info.get("onnx_qdq")}
        if variants["fp32"] is None and variants["qdq"] is None:
            raise UsageError("the bundle's tensorrt artifact does not name its ONNX files; "
                             "re-export with --export onnx,tensorrt")
        for rel in variants.values():
            if rel is not None:
                bundle_file(root, rel)
        try:
            batch = int(info.get("profile", {}).get("opt", [1])[0])
        except (AttributeError, IndexError, TypeError, ValueError) as exc:
            raise BundleError(f"the bundle's tensorrt artifact has a malformed profile "
                              f"({one_line(exc)})") from exc
        onnx_rel = pick_onnx(variants, precision)
        # first, before asking whether TensorRT is here: the script must be what nas2deploy
        # writes for the recorded plan, or someone changed code that a user may run by hand
        if os.path.lexists(root / SCRIPT):
            recorded_plan, _ = make_plan(root, pick_onnx(variants, recorded), recorded, batch)
            verify_script(root, recorded_plan)
        method = self._choose_method(method)
        here = device.gpu_info().get("name")
        if info.get("device") and here and info["device"] != here:
            # the shipped cache holds another GPU's kernel timings, which trtexec may refuse
            (root / CACHE).unlink(missing_ok=True)
        plan, checked = make_plan(root, onnx_rel, precision, batch)
        if precision != info.get("precision") or not (root / SCRIPT).is_file():
            script_check = write_device_files(root, plan)
        else:
            script_check = check_script(root, SCRIPT, plan)
        log(f"building the {precision} TensorRT engine from {plan.onnx} with "
            f"{'the Python API' if method == 'python' else 'trtexec'} (batch {plan.min[0]}.."
            f"{plan.max[0]}, tuned for {plan.opt[0]})")
        built = build_with_python(root, plan) if method == "python" else \
            build_with_trtexec(root, plan)
        for stale in ("tf32", "fp16_flag", "quantization", "trtexec_device", "build_log"):
            info.pop(stale, None)
        info.update(self._plan_info(plan, variants, checked))
        info["script_check"] = script_check
        info.update(self._record_build(root, built))
        files = {**artifact.files, "script": SCRIPT, "readme": README, "engine": ENGINE}
        return Artifact(self.name, files, info)

    @staticmethod
    def _choose_method(method: str) -> str:
        py_err = tensorrt_import_error()
        trtexec = find_trtexec()
        missing = []
        if method == "python" and py_err:
            missing.append(f"the tensorrt Python package does not import ({py_err})")
        elif method == "trtexec" and not trtexec:
            missing.append(f"trtexec is not on PATH nor in {', '.join(TRTEXEC_DIRS)}")
        elif method == "auto" and py_err and not trtexec:
            missing.append("TensorRT is missing (the tensorrt Python package does not import "
                           f"and trtexec is not on PATH nor in {', '.join(TRTEXEC_DIRS)})")
        if not device.gpu_visible():
            missing.append("no CUDA GPU is visible")
        if missing:
            raise UnavailableError(f"cannot build a TensorRT engine on this machine: "
                                   f"{' and '.join(missing)}; {BUILD_HINT}")
        if method == "auto":
            return "python" if py_err is None else "trtexec"
        return method

    def runner(self, bundle_dir: Path, artifact: Artifact, target: Target) -> Runner:
        root = Path(bundle_dir)
        err = tensorrt_import_error()
        if err is not None:
            raise UnavailableError(f"the tensorrt runner needs TensorRT's Python package, which "
                                   f"does not import here ({err}); {BUILD_HINT}, then `nas2deploy "
                                   f"measure BUNDLE --target tensorrt:cuda` there")
        missing = cuda_missing()
        if missing:
            raise UnavailableError(f"the tensorrt runner needs a CUDA GPU: {missing} (on Jetson, "
                                   f"install NVIDIA's PyTorch wheel for the JetPack release)")
        engine = root / artifact.files.get("engine", ENGINE)
        if not engine.is_file():
            raise UnavailableError(f"{root} has no {ENGINE} yet; build it on this device with "
                                   f"`nas2deploy build-engine {root}`")
        built = artifact.info.get("precision", "fp32")
        if target.precision != built:
            raise UsageError(f"the engine in {root} is {built}, the target asks for "
                             f"{target.precision}; measure with --target tensorrt:cuda:{built} or "
                             f"rebuild with `nas2deploy build-engine {root} --precision "
                             f"{target.precision}`")
        return EngineRunner(engine, built)
