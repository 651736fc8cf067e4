"""OpenVINO IR from the bundle's ONNX file, with the static input shape that is deployed.

The IR is read from ``model.onnx`` with ``Core.read_model`` (not ``convert_model``/ovc, whose
telemetry would send usage data), reshaped to ``[target.batch, C, H, W]`` (a static shape runs
20–30% faster than a dynamic batch on CPU, and it is the shape that is measured and shipped), and
saved with fp32 weights (``save_model`` would compress them to fp16 by default). The ONNX
``metadata_props`` travel along into the IR's ``rt_info`` under ``framework``.

The runner compiles for CPU with the target's inference precision, always set explicitly: on
CPUs with bf16 support OpenVINO's default is bf16, which moves logits by about 1% and fails parity
for an fp32 target. fp16 asks for f16 execution (CPUs without fp16 arithmetic fall back; the
artifact records the precision the compiled model reports). int8 is the Q/DQ ONNX model, read as
is: OpenVINO runs its quantized convolutions in int8 and the rest in f32.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
from torch import nn

from nas2deploy.errors import ExportError, ShapeError
from nas2deploy.exporter import Artifact, ExportContext, Exporter, Runner
from nas2deploy.target import Target

from ._common import dist_versions, export_error, import_openvino, missing_modules, one_line

XML = "openvino/model.xml"
_AUTO_NAME = re.compile(r"[A-Z][A-Za-z0-9]*_\d+")  # OpenVINO's own: op type + counter
BIN = "openvino/model.bin"
HINT = {"fp32": "f32", "fp16": "f16", "int8": "f32"}


class OpenVINOExporter(Exporter):
    name = "openvino"
    runtimes = {"openvino": ("cpu",)}
    precisions = {"openvino": ("fp32", "fp16", "int8")}
    needs = ("onnx",)
    parity_atol = 1e-4
    description = "OpenVINO IR (fp32 weights, static deployed shape) from the ONNX file; CPU, f32"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return missing_modules("openvino")

    @classmethod
    def versions(cls) -> dict[str, str]:
        return dist_versions("openvino")

    def export(self, model: nn.Module, ctx: ExportContext) -> Artifact:
        onnx_art = ctx.artifacts.get("onnx")
        if onnx_art is None:
            raise ExportError("openvino export needs the onnx artifact; export onnx first")
        src = ctx.bundle_dir / onnx_art.files["model"]
        xml, bin_ = ctx.bundle_dir / XML, ctx.bundle_dir / BIN
        t0 = time.perf_counter()
        try:
            ov = import_openvino()
            core = ov.Core()
            m = core.read_model(str(src))
        except Exception as exc:
            raise export_error(f"OpenVINO could not read {src.name}", exc) from exc
        if len(m.inputs) != 1:
            raise ExportError(f"{src.name} has {len(m.inputs)} inputs; nas2deploy models take one")

        pshape = m.input(0).get_partial_shape()
        if pshape.rank.is_dynamic or pshape.rank.get_length() < 2:
            raise ExportError(f"{src.name} input has shape {pshape}; expected [batch, C, H, W]")
        rest = list(pshape)[1:]
        if not all(d.is_static for d in rest):
            raise ExportError(f"{src.name} input {pshape} is dynamic beyond the batch axis")
        static = [int(ctx.target.batch)] + [d.get_length() for d in rest]
        if list(ctx.example.shape[1:]) != static[1:]:
            raise ShapeError(f"example input {list(ctx.example.shape)} does not fit the ONNX "
                             f"input {pshape}")
        try:
            m.reshape(static)
            xml.parent.mkdir(parents=True, exist_ok=True)
            ov.save_model(m, str(xml), compress_to_fp16=False)
            # the files that were written load back (copied, not mmap'ed: they are rewritten)
            core.set_property({"ENABLE_MMAP": False})
            saved = core.read_model(str(xml))
            if _stable_names(saved):  # save_model folds constants and names them itself
                ov.save_model(saved, str(xml), compress_to_fp16=False)
        except Exception as exc:
            raise export_error("OpenVINO IR reshape/save/reload failed", exc) from exc
        hint = HINT[ctx.target.precision]
        effective = None  # a latency probe is compiled by its runner next; only a bundle records it
        if not ctx.probe:
            try:
                compiled = core.compile_model(saved, "CPU", {"INFERENCE_PRECISION_HINT": hint})
                got = compiled.get_property("INFERENCE_PRECISION_HINT")
                effective = got.get_type_name() if hasattr(got, "get_type_name") else str(got)
            except Exception as exc:
                raise export_error(f"OpenVINO could not compile the IR for CPU at {hint}",
                                   exc) from exc
        return Artifact(self.name, {"model_xml": XML, "model_bin": BIN}, info={
            "static_shape": static,
            "precision": ctx.target.precision,
            "inference_precision": hint,
            "inference_precision_compiled": effective,
            "weights": "fp32",
            "source": onnx_art.files["model"],
            "export_s": round(time.perf_counter() - t0, 3),
            "bytes": xml.stat().st_size + bin_.stat().st_size,
        })

    def runner(self, bundle_dir: Path, artifact: Artifact, target: Target) -> Runner:
        xml = Path(bundle_dir) / artifact.files["model_xml"]
        if not xml.is_file():
            raise ExportError(f"OpenVINO IR {xml} does not exist")
        config = {
            "INFERENCE_PRECISION_HINT": HINT[target.precision],
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": int(target.threads),
            "NUM_STREAMS": 1,
        }
        try:
            ov = import_openvino()
            compiled = ov.Core().compile_model(str(xml), "CPU", config)
            request = compiled.create_infer_request()
        except Exception as exc:
            raise export_error(f"OpenVINO could not compile {xml.name} for CPU", exc) from exc
        port = compiled.input(0)
        if port.get_partial_shape().is_dynamic:
            raise ExportError(f"{xml.name} has a dynamic input {port.get_partial_shape()}; "
                              f"nas2deploy ships a static shape")
        shape = tuple(int(d) for d in port.get_shape())
        infer = request.infer

        def run(x: np.ndarray) -> np.ndarray:
            x = np.ascontiguousarray(x, dtype=np.float32)
            if x.shape != shape:
                if x.ndim == len(shape) and x.shape[1:] == shape[1:]:
                    raise ShapeError(f"the OpenVINO IR is static at batch {shape[0]}, got batch "
                                     f"{x.shape[0]}; export again with batch {x.shape[0]}")
                raise ShapeError(f"input shape {tuple(x.shape)} != the IR's static input {shape}")
            try:
                # share_outputs=False (the default): the result is a fresh array, not a view of
                # the request's buffer that the next call would overwrite.
                return infer(x, share_inputs=True)[0]
            except Exception as exc:
                raise ExportError(f"OpenVINO inference failed: {one_line(exc)}") from exc

        run.compiled = compiled  # type: ignore[attr-defined]  # for inspection (tests, debugging)
        return run


def _stable_names(model) -> bool:
    """Rename the nodes OpenVINO named itself from a process-wide counter (``ShapeOf_1613``) by
    their position in the graph, so one ONNX file always gives a byte-identical IR (bundle hashes
    stay reproducible). Names from the ONNX graph (lower-case torch names) are kept."""
    changed = False
    for i, op in enumerate(model.get_ordered_ops()):
        if _AUTO_NAME.fullmatch(op.get_friendly_name()):
            op.set_friendly_name(f"{op.get_type_name()}_{i}")
            changed = True
    return changed
