"""ONNX export with torch's dynamo exporter, run in onnxruntime on CPU.

The file is self-contained (weights inside, no ``model.onnx.data``), has a dynamic batch axis,
carries the run's metadata (architecture JSON, nas2deploy version) in ``metadata_props``, and
passes ``onnx.checker`` with full shape inference before it is written.

For an int8 target it also writes ``model.int8.onnx``: explicit quantization (Q/DQ pairs) by
onnxruntime's static quantizer, calibrated on real training images, which onnxruntime, OpenVINO
and TensorRT all execute as int8. The artifact's ``model`` is then the Q/DQ file (what every
runtime loads) and ``fp32`` the float one it came from.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import numpy as np
from torch import nn

from nas2deploy.errors import ExportError, ShapeError
from nas2deploy.exporter import Artifact, ExportContext, Exporter, Runner
from nas2deploy.target import Target

from ._common import dist_versions, export_error, missing_modules, one_line, quiet

FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
CALIBRATION_BATCH = 32
# Only the MAC-heavy ops run in int8. Quantizing every Add/Mul/pool as well (the quantizer's
# default) put ~1,300 Q/DQ nodes around a DSO-NAS net's 400 tiny elementwise ops and made it 4.5x
# slower than fp32 in onnxruntime; Q/DQ on conv/gemm inputs and weights is also the placement
# TensorRT's explicit quantization fuses best.
QUANTIZED_OPS = ["Conv", "Gemm", "MatMul"]
# x86 CPUs without VNNI (AVX2-only, AVX-512 before Cascade Lake) multiply u8 activations by s8
# weights with VPMADDUBSW, which adds each adjacent pair of products into an int16 with
# saturation; both onnxruntime (MLAS) and oneDNN feed s8 activations as u8 (+128). With 8-bit
# weights a pair reaches 2*255*127 = 64770 and is clipped: on an AVX2-only EPYC top-1 agreement
# with fp32 fell to 91% (onnxruntime). 7-bit weights keep every pair within 2*255*64 = 32640, on
# every CPU, so the bundle does not depend on the CPU it was built on. Activations stay 8-bit
# symmetric (TensorRT needs zero point 0, and their range is not what overflows).
WEIGHT_RANGE = (-64, 64)  # onnxruntime's reduce_range for QInt8
OVERFLOW_SAFE_WHY = ("7-bit weights: |w| <= 64, so a pair of u8 x s8 products sums to at most "
                     "2*255*64 = 32640 <= 32767 and stays within int16 on x86 CPUs without VNNI "
                     "(VPMADDUBSW saturates)")
OVERFLOW_UNSAFE_WHY = ("8-bit weights: a pair of u8 x s8 products can reach 2*255*127 = 64770 and "
                       "saturates int16 on x86 CPUs without VNNI (VPMADDUBSW)")
OPSET = 18  # what the dynamo exporter produces (asking for 17 silently gives 18)
OUTPUT_NAME = "logits"
# torch logs the whole failed trace (graphs, guards) at ERROR; the ExportError carries the reason
TORCH_LOGGERS = ("torch", "torch.onnx", "torch.export", "torch._dynamo",
                 "torch.fx.experimental.symbolic_shapes", "onnxscript")


class OnnxExporter(Exporter):
    name = "onnx"
    runtimes = {"onnxruntime": ("cpu",)}
    # int8 is the Q/DQ model this exporter writes for an int8 target
    precisions = {"onnxruntime": ("fp32", "int8")}
    why_not = {("onnxruntime", "fp16"): "onnxruntime's CPU provider has no fp16 convolution "
                                        "kernels (it would cast around every op); use "
                                        "onnxruntime:cpu:int8 or openvino:cpu:fp16"}
    parity_atol = 1e-4
    description = "ONNX opset 18 (torch dynamo exporter), dynamic batch; runs in onnxruntime (CPU)"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return missing_modules("onnx", "onnxscript", "onnxruntime")

    @classmethod
    def channel_multiple(cls, target: Target) -> int:
        """Channel counts that width scaling rounds down to.

        onnxruntime's CPU convolutions run in a blocked layout (NCHWc) whose block is 16 channels
        with AVX-512 and 8 without; other channel counts are padded and reordered around.
        Measured on an AVX-512 Xeon, a DSO-NAS net thinned to x0.75 ran 0.160 ms with multiples
        of 8 and 0.128 ms with multiples of 16 (0.145 ms unthinned), so a thinner net was slower
        unless it kept the block. OpenVINO and eager torch showed no such cliff."""
        if target.runtime != "onnxruntime":
            return 1
        from nas2deploy.env import cpu_isa

        return 16 if cpu_isa(("avx512f",))["avx512f"] else 8

    @classmethod
    def versions(cls) -> dict[str, str]:
        return dist_versions("torch", "onnx", "onnxscript", "onnxruntime")

    def export(self, model: nn.Module, ctx: ExportContext) -> Artifact:
        import onnx
        import torch

        ctx.bundle_dir.mkdir(parents=True, exist_ok=True)
        path = ctx.bundle_dir / FILE
        example = ctx.example.detach()
        if example.shape[0] == 1:
            # Trace at batch 2: at batch 1 torch.export may specialise the batch to a constant
            # (0/1 specialisation) or quietly fall back to a static graph.
            example = torch.cat([example, example])
        was_training = model.training
        model.eval()
        t0 = time.perf_counter()
        exporter = "dynamo"
        try:
            if ctx.probe and _probe_export(model, example, path):
                exporter = "TorchScript exporter: a latency probe"
            else:
                with quiet(*TORCH_LOGGERS, level=logging.CRITICAL):
                    torch.onnx.export(
                        model, (example,), str(path), dynamo=True, opset_version=OPSET,
                        external_data=False, verbose=False, output_names=[OUTPUT_NAME],
                        # positional, so it does not depend on the name of forward's argument
                        dynamic_shapes=({0: torch.export.Dim("batch")},),
                    )
        except Exception as exc:
            raise ExportError(f"ONNX export (torch.onnx, dynamo) failed: {_export_reason(exc)}") from exc
        finally:
            model.train(was_training)
        export_s = time.perf_counter() - t0

        try:
            proto = onnx.load(str(path))
        except Exception as exc:
            raise export_error(f"ONNX model {path.name} failed to load", exc) from exc
        if len(proto.graph.input) != 1 or not proto.graph.output:
            raise ExportError(f"ONNX model has {len(proto.graph.input)} inputs and "
                              f"{len(proto.graph.output)} outputs; expected one input")
        in_dims, out_dims = _dims(proto.graph.input[0]), _dims(proto.graph.output[0])
        if not in_dims or not out_dims or not isinstance(in_dims[0], str) \
                or not isinstance(out_dims[0], str):
            raise ExportError(f"ONNX export gave a fixed batch (input {in_dims}, output "
                              f"{out_dims}); the model must not depend on the batch size")
        try:
            _set_metadata(proto, ctx.metadata)
            onnx.checker.check_model(proto, full_check=True)
            onnx.save(proto, str(path))
        except Exception as exc:
            raise export_error(f"ONNX model {path.name} failed the checker or to save", exc) from exc

        opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        inp, out = proto.graph.input[0], proto.graph.output[0]
        files = {"model": FILE}
        extra = {}
        if ctx.target.precision == "int8":
            extra["quantization"] = quantize_int8(path, ctx.bundle_dir / INT8_FILE, inp.name,
                                                  ctx.calibration, ctx.example, ctx.metadata)
            files = {"model": INT8_FILE, "fp32": FILE}
        return Artifact(self.name, files, info={
            **extra,
            "precision": ctx.target.precision if ctx.target.precision == "int8" else "fp32",
            "opset": opset,
            "ir_version": int(proto.ir_version),
            "dynamic_batch": True,
            "input_name": inp.name,
            "input_shape": _dims(inp),
            "output_name": out.name,
            "output_shape": _dims(out),
            "exporter": f"torch.onnx.export ({exporter})",
            "export_s": round(export_s, 3),
            "bytes": path.stat().st_size,
        })

    def runner(self, bundle_dir: Path, artifact: Artifact, target: Target) -> Runner:
        import onnxruntime as ort

        path = Path(bundle_dir) / artifact.files["model"]
        if not path.is_file():
            raise ExportError(f"ONNX model {path} does not exist")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(target.threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only
        try:
            sess = ort.InferenceSession(str(path), sess_options=opts,
                                        providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise export_error(f"onnxruntime could not load {path.name}", exc) from exc
        inputs, outputs = sess.get_inputs(), sess.get_outputs()
        if len(inputs) != 1:
            raise ExportError(f"{path.name} has {len(inputs)} inputs; nas2deploy models take one")
        in_name, in_shape = inputs[0].name, tuple(inputs[0].shape)
        out_names = [outputs[0].name]
        run_session = sess.run

        def run(x: np.ndarray) -> np.ndarray:
            x = np.ascontiguousarray(x, dtype=np.float32)
            try:
                return run_session(out_names, {in_name: x})[0]
            except Exception as exc:
                if x.ndim != len(in_shape) or any(
                        isinstance(d, int) and d != s for d, s in zip(in_shape, x.shape)):
                    raise ShapeError(f"input shape {tuple(x.shape)} does not fit the ONNX input "
                                     f"{in_name}{list(in_shape)}") from exc
                raise ExportError(f"onnxruntime inference failed: {one_line(exc)}") from exc

        run.session = sess  # type: ignore[attr-defined]  # for inspection (tests, debugging)
        return run


class _Batches:
    """onnxruntime's CalibrationDataReader protocol over an in-memory tensor."""

    def __init__(self, name: str, x: np.ndarray, batch: int):
        self._it = iter([{name: x[i:i + batch]} for i in range(0, len(x), batch)])

    def get_next(self):
        return next(self._it, None)


def quantize_int8(src: Path, dst: Path, input_name: str, calibration, example,
                  metadata: dict[str, str], *, reduce_range: bool = True) -> dict:
    """Q/DQ int8 ONNX from ``src``, calibrated on ``calibration`` (real images), else -- for a
    latency probe only -- on random inputs of the example's shape, which the info says.

    Convolutions and matrix products only (``QUANTIZED_OPS``). Symmetric activations and weights
    (zero point 0) and float biases: TensorRT's explicit
    quantization accepts only that form, and onnxruntime and OpenVINO run it as well. Weights per
    output channel; activation ranges by min/max over the calibration set.

    Weights are 7-bit (``reduce_range``, see ``WEIGHT_RANGE``) so that the artifact is right on
    every x86-64 CPU, not only the one it was built on. ``reduce_range=False`` writes the old
    8-bit form; it exists to measure and test what the 7 bits fix.
    """
    import onnx
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calibration is not None and len(calibration):
        x = calibration.detach().cpu().numpy().astype(np.float32)
        source = "training split (real images)"
    else:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((64, *example.shape[1:])).astype(np.float32)
        source = "random normal inputs (latency probe only: not for deployment)"
    pre = dst.with_name(dst.stem + ".pre.onnx")
    t0 = time.perf_counter()
    try:
        with quiet("root", "onnxruntime", level=logging.CRITICAL):
            # folds BatchNorm into Conv and infers shapes, so each Conv is quantized once
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            quantize_static(
                str(pre), str(dst), _Batches(input_name, x, CALIBRATION_BATCH),
                quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8, per_channel=True, reduce_range=reduce_range,
                op_types_to_quantize=QUANTIZED_OPS,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                               "QuantizeBias": False,
                               # logits stay float: int8 logits tie, and argmax then flips
                               "OpTypesToExcludeOutputQuantization": ["Gemm", "MatMul"]})
        proto = onnx.load(str(dst))
        _set_metadata(proto, metadata)  # the quantizer keeps some entries, not all
        onnx.checker.check_model(proto)
        onnx.save(proto, str(dst))
    except Exception as exc:
        raise export_error("int8 quantization (onnxruntime quantize_static, QDQ) failed", exc) from exc
    finally:
        pre.unlink(missing_ok=True)
    n_q = sum(1 for n in proto.graph.node if n.op_type == "QuantizeLinear")
    if n_q == 0:
        raise ExportError("int8 quantization inserted no QuantizeLinear node; nothing would run "
                          "in int8")
    if reduce_range:
        # the overflow safety is a property of the file, not of the flag: hold the quantizer to it
        lo, hi = WEIGHT_RANGE
        for init in proto.graph.initializer:
            if init.data_type == onnx.TensorProto.INT8:
                w = onnx.numpy_helper.to_array(init)
                if w.size and (w.min() < lo or w.max() > hi):
                    raise ExportError(f"int8 weights {init.name} span [{w.min()}, {w.max()}], "
                                      f"outside the overflow-safe [{lo}, {hi}]")
    weights = (f"int8 symmetric, per output channel, 7-bit range [{WEIGHT_RANGE[0]}, "
               f"{WEIGHT_RANGE[1]}] (reduce_range)" if reduce_range
               else "int8 symmetric, per output channel, full range [-127, 127]")
    return {"method": "onnxruntime.quantization.quantize_static, QDQ format, explicit "
                      "quantization", "activations": "int8 symmetric, per tensor, MinMax",
            "weights": weights, "overflow_safe": bool(reduce_range),
            "overflow_reason": (OVERFLOW_SAFE_WHY if reduce_range else OVERFLOW_UNSAFE_WHY),
            "bias": "float",
            "calibration_samples": int(len(x)), "calibration_source": source,
            "quantize_nodes": n_q, "quantize_s": round(time.perf_counter() - t0, 3)}


def _set_metadata(proto, metadata: dict[str, str]) -> None:
    props = {p.key: p for p in proto.metadata_props}
    for key, value in metadata.items():
        if str(key) in props:
            props[str(key)].value = str(value)
        else:
            entry = proto.metadata_props.add()
            entry.key, entry.value = str(key), str(value)


def _probe_export(model: nn.Module, example, path: Path) -> bool:
    """The TorchScript exporter, for artifacts that are only timed: 0.1 s against the dynamo
    exporter's 3-5 s for a TF-NAS net on a 2-core VM, and the same graph (the same ops, as
    ``test_probe_export_is_the_same_graph`` in ``tests/test_exporters.py`` checks). The closed
    loop exports a candidate per round and TF-NAS one per search epoch, so this is most of a
    round's cost.
    False where it is unavailable or fails: the caller then uses the dynamo exporter."""
    import warnings

    import torch

    try:
        with warnings.catch_warnings(), quiet(*TORCH_LOGGERS, level=logging.CRITICAL):
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=OPSET,
                              input_names=["x"], output_names=[OUTPUT_NAME],
                              dynamic_axes={"x": {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        return True
    except Exception:
        return False


def _export_reason(exc: BaseException) -> str:
    """The cause torch.onnx names under '## Exception summary', else the first line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    head, sep, tail = text.partition("## Exception summary")
    lines = [ln.strip() for ln in tail.splitlines() if ln.strip()] if sep else []
    if lines:
        reason = lines[0]
        if reason.endswith(":") and len(lines) > 1 and not lines[1].startswith("("):
            reason += " " + lines[1]  # "The following inconsistencies were found:" + the first
        reason = re.sub(r"^<class '(?:[\w.]+\.)?(\w+)'>:", r"\1:", reason)
        return reason if len(reason) <= 300 else reason[:299] + "…"
    return one_line(exc)


def _dims(value_info) -> list:
    """Shape of an ONNX graph input/output: ints, or the symbol name of a dynamic axis."""
    return [d.dim_param if d.dim_param else int(d.dim_value)
            for d in value_info.type.tensor_type.shape.dim]
