"""The build plan: which ONNX file, which input shapes (the optimization profile), which precision,
and where the bundle keeps what TensorRT needs on the device."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas2deploy.errors import ExportError, ShapeError, UsageError

from .._common import one_line
from .check import check_graph, has_qdq, local_tensorrt_version

DIR = "tensorrt"
SCRIPT = f"{DIR}/build_engine.sh"
README = f"{DIR}/README.md"
ENGINE = f"{DIR}/model.engine"
CACHE = f"{DIR}/timing.cache"
BUILD_LOG = f"{DIR}/build_engine.log"
PROFILE_MAX_BATCH = 32  # engines take batch 1..max(this, target batch), tuned for the target's
WORKSPACE_MIB = 1024  # builder scratch memory; Jetson GPUs share the board's RAM
# where trtexec lives when it is not on PATH (JetPack, NVIDIA containers, tarball installs)
TRTEXEC_DIRS = ("/usr/src/tensorrt/bin", "/usr/local/tensorrt/bin", "/opt/tensorrt/bin")


@dataclass(frozen=True)
class Plan:
    onnx: str  # relative to the bundle root
    input_name: str
    output_name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]
    precision: str

    def profile(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    def trtexec_args(self, onnx_arg: str, engine_arg: str, cache_arg: str) -> list[str]:
        name = self.input_name
        if re.search(r"[:,'\s]", name):  # trtexec's shape syntax quotes such names
            name = f"'{name}'"
        shape = lambda dims: "x".join(str(d) for d in dims)  # noqa: E731
        args = [f"--onnx={onnx_arg}", f"--saveEngine={engine_arg}",
                f"--minShapes={name}:{shape(self.min)}", f"--optShapes={name}:{shape(self.opt)}",
                f"--maxShapes={name}:{shape(self.max)}"]
        args += {"fp32": ["--noTF32"], "fp16": ["--fp16"], "int8": ["--int8"]}[self.precision]
        args += [f"--timingCacheFile={cache_arg}", f"--memPoolSize=workspace:{WORKSPACE_MIB}",
                 "--skipInference"]
        return args


def onnx_variants(bundle_dir: Path, onnx_files: dict[str, str]) -> dict[str, str | None]:
    """{"fp32": rel or None, "qdq": rel or None} among the onnx artifact's files, by content."""
    import onnx

    out: dict[str, str | None] = {"fp32": None, "qdq": None}
    for rel in dict.fromkeys([onnx_files.get("model"), onnx_files.get("fp32")]):
        if rel is None:
            continue
        path = Path(bundle_dir) / rel
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as exc:
            raise ExportError(f"cannot read the ONNX file {rel} for TensorRT: "
                              f"{one_line(exc)}") from exc
        kind = "qdq" if has_qdq(proto) else "fp32"
        out[kind] = out[kind] or rel
    return out


def pick_onnx(variants: dict[str, str | None], precision: str) -> str:
    if precision == "int8":
        if variants["qdq"] is None:
            raise UsageError("an int8 TensorRT engine needs the Q/DQ-quantized ONNX (explicit "
                             "quantization, calibrated on training images) and this bundle has "
                             "none; export with --target tensorrt:cuda:int8")
        return variants["qdq"]
    if variants["fp32"] is None:
        raise UsageError(f"a {precision} TensorRT engine needs the float ONNX model and the bundle "
                         f"has only the Q/DQ one")
    return variants["fp32"]


def make_plan(bundle_dir: Path, onnx_rel: str, precision: str, batch: int,
              example_shape: tuple[int, ...] | None = None) -> tuple[Plan, dict[str, Any]]:
    """Check the ONNX file for TensorRT and derive the optimization profile from its input."""
    import onnx

    path = Path(bundle_dir) / onnx_rel
    try:
        proto = onnx.load(str(path))
    except Exception as exc:
        raise ExportError(f"cannot read {onnx_rel} for TensorRT: {one_line(exc)}") from exc
    checked = check_graph(proto, tensorrt_version=local_tensorrt_version())
    if precision == "int8" and not has_qdq(proto):
        raise ExportError(f"{onnx_rel} has no QuantizeLinear/DequantizeLinear nodes; an int8 "
                          f"engine is built from the Q/DQ ONNX")
    init = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in init]
    if len(inputs) != 1 or not proto.graph.output:
        raise ExportError(f"{onnx_rel} has {len(inputs)} inputs and {len(proto.graph.output)} "
                          f"outputs; nas2deploy engines take one input")
    inp, out = inputs[0], proto.graph.output[0]
    dims = [d.dim_param if d.dim_param else (int(d.dim_value) if d.HasField("dim_value") else None)
            for d in inp.type.tensor_type.shape.dim]
    if len(dims) < 2:
        raise ExportError(f"{onnx_rel} input {inp.name} has shape {dims}; expected [batch, ...]")
    rest = dims[1:]
    dynamic = [i + 1 for i, d in enumerate(rest) if not isinstance(d, int) or d <= 0]
    if dynamic:
        raise ExportError(f"{onnx_rel} input {inp.name}{dims} is dynamic in axis "
                          f"{', '.join(map(str, dynamic))}; a TensorRT profile here varies the "
                          f"batch only, every other axis must be static")
    if example_shape is not None and list(example_shape[1:]) != rest:
        raise ShapeError(f"example input {list(example_shape)} does not fit the ONNX input "
                         f"{inp.name}{dims}")
    if isinstance(dims[0], int) and dims[0] > 0:  # a static batch: the profile is that batch
        if dims[0] != batch:
            raise ShapeError(f"{onnx_rel} has a static batch of {dims[0]} but the target batch is "
                             f"{batch}; export with a dynamic batch or --batch {dims[0]}")
        lo = opt = hi = dims[0]
    else:
        lo, opt, hi = 1, batch, max(batch, PROFILE_MAX_BATCH)
    if not lo <= batch <= hi:
        raise ShapeError(f"target batch {batch} is outside the profile {lo}..{hi}")
    plan = Plan(onnx_rel, inp.name, out.name, (lo, *rest), (opt, *rest), (hi, *rest), precision)
    return plan, checked
