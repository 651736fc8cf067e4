"""TensorRT engines from the bundle's ONNX file, built on the GPU that runs them.

A TensorRT engine is specific to the GPU and the TensorRT version that built it, so the bundle
always carries what the device needs to build its own: ``tensorrt/build_engine.sh`` (one
``trtexec`` command with the input shapes, precision and timing cache) and ``tensorrt/README.md``.
Both are checked here before they are written: the ONNX graph against TensorRT's documented
ONNX-parser operator list (``data/tensorrt_onnx_ops.json``), the input shapes against the
optimization profile, the script with ``bash -n`` and every file it reads against the bundle.

Where ``tensorrt`` imports and a CUDA GPU is visible, the engine is also built in-process with the
TensorRT 10 Python API (``tensorrt/model.engine``) and the artifact is runnable here; elsewhere
it says it is not (``info["runnable"] = False``) and ``nas2deploy build-engine BUNDLE`` builds it
on the device. The runner uses torch for CUDA memory, the stream and CUDA events (no cuda-python).

Precision: fp32 clears TF32 (see ``_configure``), fp16 sets the FP16 builder flag, int8 builds
from the Q/DQ ONNX of the onnx exporter with the INT8 flag (explicit quantization: the scales are
in the graph, no calibrator).
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata as md
import importlib.resources
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from nas2deploy import engine as device
from nas2deploy.bundle import bundle_file, sha256, write_atomic
from nas2deploy.errors import BundleError, ExportError, ShapeError, UnavailableError, UsageError
from nas2deploy.exporter import Artifact, ExportContext, Exporter, Runner
from nas2deploy.target import Target

from ._common import one_line

DIR = "tensorrt"
SCRIPT = f"{DIR}/build_engine.sh"
README = f"{DIR}/README.md"
ENGINE = f"{DIR}/model.engine"
CACHE = f"{DIR}/timing.cache"
BUILD_LOG = f"{DIR}/build_engine.log"
PROFILE_MAX_BATCH = 32  # engines take batch 1..max(this, target batch), tuned for the target's
WORKSPACE_MIB = 1024  # builder scratch memory; Jetson GPUs share the board's RAM
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# where trtexec lives when it is not on PATH (JetPack, NVIDIA containers, tarball installs)
TRTEXEC_DIRS = ("/usr/src/tensorrt/bin", "/usr/local/tensorrt/bin", "/opt/tensorrt/bin")
BUILD_HINT = "run `nas2deploy build-engine BUNDLE` on the device that has TensorRT and the GPU"


# --------------------------------------------------------------------------------------------
# what TensorRT's ONNX parser accepts


@lru_cache(maxsize=1)
def supported_ops() -> dict[str, Any]:
    """The operator table compiled from onnx-tensorrt's docs/operators.md (package data)."""
    text = importlib.resources.files("nas2deploy_exporters").joinpath(
        "data/tensorrt_onnx_ops.json").read_text()
    return json.loads(text)


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", v)[:3])


def check_graph(proto, *, tensorrt_version: str | None = None) -> dict[str, Any]:
    """ExportError naming every node TensorRT's ONNX parser cannot take; else a summary.

    Nodes are walked through subgraphs (If/Loop bodies) and model-local functions. Ops that the
    table marks as added after TensorRT 10.0 pass, and are listed, unless the local TensorRT is
    known to be older.
    """
    table = supported_ops()
    ops, unsupported_doc = table["ops"], set(table["unsupported"])
    functions = {(f.domain, f.name): f for f in proto.functions}
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    lo, hi = table["opsets"]["min"], table["opsets"]["max"]
    if opset is None or not lo <= opset <= hi:
        raise ExportError(f"ONNX opset {opset} is outside the opsets {lo}-{hi} that TensorRT 10's "
                          f"ONNX parser reads; export with an opset in that range")
    bad: list[str] = []
    newer: dict[str, str] = {}
    seen: set[str] = set()
    initializers = {t.name: t for t in proto.graph.initializer}

    def visit(nodes) -> None:
        for node in nodes:
            label = f"{node.name or '<unnamed>'} ({node.op_type})"
            domain = node.domain or ""
            if (domain, node.op_type) in functions:
                visit(functions[(domain, node.op_type)].node)
                continue
            if domain not in ("", "ai.onnx"):
                bad.append(f"{label} in domain {domain!r} (needs a TensorRT plugin)")
                continue
            entry = ops.get(node.op_type)
            if entry is None:
                why = "documented as unsupported" if node.op_type in unsupported_doc else \
                    "not in the supported list"
                bad.append(f"{label}: {why}")
                continue
            since = entry.get("since")
            if since:
                if tensorrt_version and _version_tuple(tensorrt_version) < _version_tuple(since):
                    bad.append(f"{label}: needs TensorRT >= {since}, this is {tensorrt_version}")
                    continue
                newer[node.op_type] = since
            problem = _restriction(node, initializers)
            if problem:
                bad.append(f"{label}: {problem}")
            seen.add(node.op_type)
            for attr in node.attribute:
                for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    visit(g.node)

    visit(proto.graph.node)
    if bad:
        shown = "; ".join(bad[:8]) + (f"; and {len(bad) - 8} more" if len(bad) > 8 else "")
        raise ExportError(f"TensorRT's ONNX parser (TensorRT {table['tensorrt_version']}, "
                          f"{table['source']}) cannot take {len(bad)} node(s): {shown}")
    return {"opset": opset, "op_types": sorted(seen), "needs_newer_tensorrt": newer,
            "table": table["source"], "table_tensorrt_version": table["tensorrt_version"]}


def _restriction(node, initializers) -> str | None:
    """The documented restrictions that a graph from a PyTorch CNN can plausibly break."""
    attrs = {a.name: a for a in node.attribute}
    if node.op_type in ("AveragePool", "MaxPool"):
        kernel = attrs.get("kernel_shape")
        if kernel is not None and len(kernel.ints) not in (2, 3):
            return f"{len(kernel.ints)}D pooling (only 2D or 3D)"
        dil = attrs.get("dilations")
        if dil is not None and any(d != 1 for d in dil.ints):
            return f"dilations {list(dil.ints)} (must be all ones)"
        if node.op_type == "MaxPool" and len([o for o in node.output if o]) > 1:
            return "the Indices output is unsupported"
    if node.op_type in QDQ_OPS and len(node.input) > 2 and node.input[2] in initializers:
        from onnx import numpy_helper

        zp = numpy_helper.to_array(initializers[node.input[2]])
        if np.any(zp != 0):
            return "zero point must be 0 (symmetric quantization)"
    return None


def has_qdq(proto) -> bool:
    return any(n.op_type in QDQ_OPS for n in proto.graph.node)


# --------------------------------------------------------------------------------------------
# the build plan: which ONNX file, which shapes, which precision


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


def _pick_onnx(variants: dict[str, str | None], precision: str) -> str:
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


# --------------------------------------------------------------------------------------------
# the device-side files: build_engine.sh and README.md


def script_text(plan: Plan) -> str:
    onnx_from_script = os.path.relpath(plan.onnx, DIR)
    args = plan.trtexec_args('"$ONNX"', '"$ENGINE"', '"$HERE/timing.cache"')
    dirs = " ".join(TRTEXEC_DIRS)
    lines = [
        "#!/usr/bin/env bash",
        "# Build this bundle's TensorRT engine on the machine that will run it: an engine only",
        "# runs on the GPU model and TensorRT version that built it. Written by nas2deploy.",
        "#",
        "# usage: tensorrt/build_engine.sh [ENGINE_PATH] [extra trtexec flags, e.g. --verbose]",
        "# `nas2deploy build-engine BUNDLE --trtexec` runs the same trtexec command and records",
        "# the engine in the manifest; `nas2deploy measure BUNDLE --target tensorrt:cuda` checks",
        "# its latency.",
        "set -euo pipefail",
        'HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"',
        'ENGINE="${1:-$HERE/model.engine}"',
        "shift $(( $# > 0 ? 1 : 0 ))",
        f'ONNX="$HERE/{onnx_from_script}"',
        'if ! command -v trtexec >/dev/null 2>&1; then',
        f"  for d in {dirs}; do",
        '    if [ -x "$d/trtexec" ]; then PATH="$d:$PATH"; break; fi',
        "  done",
        "fi",
        'if ! command -v trtexec >/dev/null 2>&1; then',
        '  echo "error: trtexec not found on PATH nor in ' + dirs + '; it ships with TensorRT '
        '(JetPack: /usr/src/tensorrt/bin/trtexec)" >&2',
        "  exit 2",
        "fi",
        'if [ ! -f "$ONNX" ]; then',
        '  echo "error: $ONNX is missing; copy the whole bundle folder to this machine" >&2',
        "  exit 2",
        "fi",
        f"# precision {plan.precision}; batch profile {plan.min[0]}..{plan.max[0]}, tuned for "
        f"{plan.opt[0]}",
        "trtexec \\",
    ]
    lines += [f"  {a} \\" for a in args]
    lines.append('  "$@"')
    return "\n".join(lines) + "\n"


def readme_text(plan: Plan) -> str:
    cmd = " ".join(["trtexec"] + plan.trtexec_args(os.path.relpath(plan.onnx, DIR), "model.engine",
                                                    "timing.cache"))
    quant = ("The ONNX file is quantized (Q/DQ nodes with scales calibrated on training images): "
             "TensorRT builds it with `--int8` as explicit quantization; no calibration runs on "
             "the device." if plan.precision == "int8" else
             "fp32 builds disable TF32 (`--noTF32`) so the engine keeps fp32 accuracy on Ampere "
             "and newer GPUs." if plan.precision == "fp32" else
             "fp16 lets TensorRT run layers in half precision where it is faster; outputs stay "
             "fp32.")
    shape = lambda dims: "x".join(map(str, dims))  # noqa: E731
    return f"""# TensorRT engine for this bundle

A TensorRT engine only runs on the GPU model and with the TensorRT version that built it, so it
is built on the device that will run it (a Jetson, a server GPU), from `{plan.onnx}`. Whether
`model.engine` is already here, and where it was built, is in `manifest.json` under
`artifacts.tensorrt.info` (`engine_built`, `device`, `tensorrt_version`).

| | |
|---|---|
| ONNX file | `{plan.onnx}` |
| input | `{plan.input_name}`: min {shape(plan.min)}, opt {shape(plan.opt)}, max {shape(plan.max)} |
| output | `{plan.output_name}` |
| precision | {plan.precision} |
| engine | `tensorrt/model.engine` |
| timing cache | `tensorrt/timing.cache` (reused by later builds on the same device) |

{quant}

## Build on the device

Copy the whole bundle folder to the device, then either

```bash
nas2deploy build-engine BUNDLE            # Python API; trtexec if the bindings are absent
nas2deploy build-engine BUNDLE --trtexec  # always with trtexec (the command below)
```

which writes `tensorrt/model.engine` atomically and records it (device, TensorRT version, hash) in
`manifest.json`; or run the script by hand:

```bash
bash BUNDLE/tensorrt/build_engine.sh   # [ENGINE_PATH] [extra trtexec flags]
```

Run from inside `tensorrt/`, the script is this command (`trtexec` is looked up on PATH, then in
{", ".join(f"`{d}`" for d in TRTEXEC_DIRS)}):

```
{cmd}
```

An engine built by hand is not recorded in the manifest (and replaces one that was, whose hash
then no longer matches); `nas2deploy build-engine BUNDLE --trtexec` builds and records it in one
step. `nas2deploy build-engine BUNDLE --precision fp16` rebuilds at another precision (int8 needs
the Q/DQ ONNX, present only in bundles exported for an int8 target).

## Verify on the device

```bash
nas2deploy measure BUNDLE --target tensorrt:cuda
```

times the engine with the bundle's protocol (batch {plan.opt[0]}, synchronous calls: copy in,
execute, copy out), appends the result with the GPU name, TensorRT version, clocks and the
GPU-only time (CUDA events) to `manifest.json`, and exits 3 if it is over the bundle's latency
budget. It needs the `tensorrt` Python package and a CUDA build of PyTorch (on Jetson, NVIDIA's
PyTorch wheel for the JetPack release). For the most stable figures lock the clocks first (`sudo jetson_clocks` on a
Jetson, `nvidia-smi --lock-gpu-clocks` on a server).
"""


def check_script(bundle_dir: Path, script_rel: str, plan: Plan) -> str:
    """``bash -n`` on the script and every file it reads present in the bundle; what was checked."""
    path = Path(bundle_dir) / script_rel
    text = path.read_text()
    root = Path(bundle_dir).resolve()
    for ref in re.findall(r'\$HERE/([^"\s}]+)', text):
        target = (path.parent / ref).resolve()
        if not target.is_relative_to(root):
            raise ExportError(f"{script_rel} names {ref}, which is outside the bundle")
        if target.suffix == ".onnx" and not target.is_file():
            raise ExportError(f"{script_rel} reads {ref}, which is not in the bundle")
    if not (root / plan.onnx).is_file():
        raise ExportError(f"{script_rel} builds from {plan.onnx}, which is not in the bundle")
    bash = shutil.which("bash")
    if bash is None:
        return "files checked; bash -n skipped (no bash here)"
    res = subprocess.run([bash, "-n", str(path)], capture_output=True, text=True)
    if res.returncode != 0:
        first = (res.stderr.strip().splitlines() or ["(no message)"])[0]
        raise ExportError(f"{script_rel} fails `bash -n`: {first}")
    return "bash -n passed; the ONNX file it reads is in the bundle"


def verify_script(bundle_dir: Path, plan: Plan) -> None:
    """BundleError unless the bundle's build script is exactly the one nas2deploy writes for
    ``plan``. The script is code that came with the bundle: nothing else in it is trusted."""
    path = bundle_file(bundle_dir, SCRIPT)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"cannot read {SCRIPT}: {one_line(exc)}") from exc
    if text != script_text(plan):
        raise BundleError(f"{SCRIPT} differs from the script nas2deploy writes for this bundle's "
                          f"recorded build plan (edited, or written by another nas2deploy); "
                          f"refusing to go on: restore the original or export the bundle again")


def _write_text_atomic(path: Path, text: str, mode: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text, mode=mode)


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)


def write_device_files(bundle_dir: Path, plan: Plan) -> str:
    _write_text_atomic(Path(bundle_dir) / SCRIPT, script_text(plan), 0o755)
    _write_text_atomic(Path(bundle_dir) / README, readme_text(plan))
    return check_script(bundle_dir, SCRIPT, plan)


# --------------------------------------------------------------------------------------------
# what this machine has


def tensorrt_import_error() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # a broken install is as unusable as a missing one
        return one_line(exc, 120)
    return None


def local_tensorrt_version() -> str | None:
    try:
        import tensorrt as trt

        return str(trt.__version__)
    except Exception:
        return None


def cuda_missing() -> str | None:
    import torch

    if torch.cuda.is_available():
        return None
    return f"no CUDA GPU is visible to torch {torch.__version__}"


def find_trtexec() -> str | None:
    found = shutil.which("trtexec")
    if found:
        return found
    for d in TRTEXEC_DIRS:
        p = Path(d) / "trtexec"
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return None


def _device_key(trt) -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cuda device"
    return f"{trt.__version__}|{gpu}"


# --------------------------------------------------------------------------------------------
# building: TensorRT's Python API, or trtexec through the bundle's script

_SHARED_CACHE: dict[str, bytes] = {}  # per process: engines built one after another (a latency
# table builds hundreds) reuse each other's kernel timings even when each has its own folder


def _trt_logger(trt):
    class Log(trt.ILogger):
        """Keeps TensorRT's warnings and errors for the error message, off stdout (JSON)."""

        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages: list[str] = []

        def log(self, severity, msg):
            if int(severity) <= int(trt.ILogger.Severity.WARNING):
                self.messages.append(str(msg))

    return Log()


def _network_flags(trt) -> int:
    # TensorRT 10 networks are always explicit batch (the flag is deprecated and ignored);
    # TensorRT 8.x still needs it.
    flag = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    if flag is not None and _version_tuple(trt.__version__) < (10,):
        return 1 << int(flag)
    return 0


def _parser_error(err, node_names: list[str]) -> str:
    """One parser error as "node NAME (OP): description"; node_name()/node_operator() are
    TensorRT >= 8.6, node() (the index in the graph) is older."""
    def call(attr: str, default):
        fn = getattr(err, attr, None)
        return fn() if callable(fn) else default

    name = call("node_name", "") or ""
    idx = call("node", -1)
    if not name and 0 <= idx < len(node_names):
        name = node_names[idx]
    op = call("node_operator", "") or ""
    where = f"node {name} ({op})" if name and op else f"node {name}" if name else "graph"
    return f"{where}: {str(err.desc()).strip()}"


def _configure(trt, builder, config, plan: Plan) -> None:
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_MIB << 20)
    if plan.precision == "fp32":
        # TensorRT uses TF32 (10-bit mantissa) for fp32 convolutions and matmuls on Ampere and
        # newer GPUs by default, which moves logits by ~1e-3 relative; an fp32 target keeps
        # PyTorch's CPU results to the exporter's parity tolerance.
        config.clear_flag(trt.BuilderFlag.TF32)
    elif plan.precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif plan.precision == "int8":
        # explicit quantization: the Q/DQ scales are in the graph, no calibrator is set
        config.set_flag(trt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    profile.set_shape(plan.input_name, plan.min, plan.opt, plan.max)
    config.add_optimization_profile(profile)


def build_with_python(bundle_dir: Path, plan: Plan, engine_rel: str = ENGINE,
                      cache_rel: str = CACHE) -> dict[str, Any]:
    """Build and write the serialized engine with TensorRT's Python API; facts for the info."""
    import onnx
    import tensorrt as trt

    root = Path(bundle_dir)
    t0 = time.perf_counter()
    log = _trt_logger(trt)
    builder = trt.Builder(log)
    if builder is None:
        raise UnavailableError("TensorRT could not create a builder (no usable CUDA GPU?)")
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, log)
    onnx_path = root / plan.onnx
    if not parser.parse_from_file(str(onnx_path)):
        names = [n.name for n in onnx.load(str(onnx_path), load_external_data=False).graph.node]
        errors = [_parser_error(parser.get_error(i), names) for i in range(parser.num_errors)]
        raise ExportError(f"TensorRT's ONNX parser rejected {plan.onnx}: "
                          f"{'; '.join(errors) or 'no error given'}")
    if network.num_inputs != 1 or network.get_input(0).name != plan.input_name:
        raise ExportError(f"TensorRT parsed {network.num_inputs} inputs from {plan.onnx}; expected "
                          f"one named {plan.input_name}")
    config = builder.create_builder_config()
    _configure(trt, builder, config, plan)
    cache_path = root / cache_rel
    key = _device_key(trt)
    seed = cache_path.read_bytes() if cache_path.is_file() else _SHARED_CACHE.get(key, b"")
    cache = config.create_timing_cache(seed)
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        # a cache from another GPU or TensorRT version: its timings do not apply here
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        last = next((m for m in reversed(log.messages)), "no message")
        raise ExportError(f"TensorRT failed to build the {plan.precision} engine for {plan.onnx}: "
                          f"{last.splitlines()[0] if last else ''}")
    _write_bytes_atomic(root / engine_rel, bytes(serialized))
    cache_bytes = bytes(config.get_timing_cache().serialize())
    _SHARED_CACHE[key] = cache_bytes
    _write_bytes_atomic(cache_path, cache_bytes)
    return {"built_with": "tensorrt python api", "tensorrt_version": str(trt.__version__),
            "build_s": round(time.perf_counter() - t0, 3)}


def build_with_trtexec(bundle_dir: Path, plan: Plan, engine_rel: str = ENGINE) -> dict[str, Any]:
    """Run trtexec with the command regenerated from ``plan`` (the command build_engine.sh holds;
    the script itself came with the bundle and is never run) into a temporary engine file, then
    rename it into place."""
    root = Path(bundle_dir).resolve()
    trtexec = find_trtexec()
    if trtexec is None:
        raise UnavailableError("trtexec is not on PATH nor in " + ", ".join(TRTEXEC_DIRS) +
                               "; install TensorRT or put its bin folder on PATH")
    engine = bundle_file(root, engine_rel)
    cache = bundle_file(root, CACHE)
    if cache.is_symlink():  # trtexec writes the cache back, through a link too
        cache.unlink()
    engine.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{engine.name}.", suffix=".tmp", dir=engine.parent)
    os.close(fd)
    tmp = Path(name)
    argv = [trtexec] + plan.trtexec_args(str(bundle_file(root, plan.onnx)), str(tmp), str(cache))
    t0 = time.perf_counter()
    try:
        res = subprocess.run(argv, capture_output=True, text=True, cwd=engine.parent)
        write_atomic(root / BUILD_LOG, res.stdout + res.stderr)
        if res.returncode != 0 or tmp.stat().st_size == 0:
            lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
            err = next((ln for ln in reversed(lines) if "[E]" in ln or "error" in ln.lower()),
                       lines[-1] if lines else "no output")
            raise ExportError(f"trtexec failed (exit {res.returncode}): {err.strip()[:300]} "
                              f"(full output in {BUILD_LOG})")
        os.replace(tmp, engine)
    finally:
        tmp.unlink(missing_ok=True)
    out = res.stdout + res.stderr
    version = None
    m = re.search(r"TensorRT version:\s*([\d.]+)", out)
    if m:
        version = m.group(1)
    else:
        m = re.search(r"TensorRT v(\d+)", out)  # [TensorRT v100300] -> 10.3.0
        if m:
            n = int(m.group(1))
            version = f"{n // 10000}.{n // 100 % 100}.{n % 100}"
    selected = re.search(r"Selected Device:\s*(.+)", out)
    return {"built_with": f"trtexec ({trtexec})", "tensorrt_version": version,
            "trtexec_device": selected.group(1).strip() if selected else None,
            "build_s": round(time.perf_counter() - t0, 3), "build_log": BUILD_LOG}


# --------------------------------------------------------------------------------------------
# running an engine: torch owns the CUDA memory and the stream


class EngineRunner:
    """numpy in, numpy out: copy in, ``execute_async_v3`` on a torch CUDA stream, copy out,
    synchronise. Buffers are kept per input shape, so repeated calls allocate nothing."""

    def __init__(self, engine_path: Path, precision: str):
        import tensorrt as trt
        import torch

        self._torch, self._trt = torch, trt
        self.log = _trt_logger(trt)
        self.runtime = trt.Runtime(self.log)
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            why = next(iter(reversed(self.log.messages)), "")
            raise UnavailableError(
                f"TensorRT {trt.__version__} could not load {engine_path.name} (built by another "
                f"TensorRT version or for another GPU? {why.splitlines()[0] if why else ''}); "
                f"rebuild it here with `nas2deploy build-engine {Path(engine_path).parent.parent}`")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        ins = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if n not in ins]
        if len(ins) != 1 or not outs:
            raise ExportError(f"{engine_path.name} has {len(ins)} inputs and {len(outs)} outputs; "
                              f"nas2deploy engines take one input")
        self.input_name, self.output_names = ins[0], outs
        self.input_dims = tuple(self.engine.get_tensor_shape(self.input_name))
        lo, _, hi = self.engine.get_tensor_profile_shape(self.input_name, 0)
        self.batch_range = (int(lo[0]), int(hi[0]))
        self.precision = precision
        self.stream = torch.cuda.Stream()
        self._shape: tuple[int, ...] | None = None
        self._buffers: dict[str, Any] = {}

    def _dtype(self, name: str):
        trt, torch = self._trt, self._torch
        table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
                 trt.int8: torch.int8, trt.bool: torch.bool}
        if hasattr(trt, "int64"):
            table[trt.int64] = torch.int64
        return table[self.engine.get_tensor_dtype(name)]

    def _bind(self, shape: tuple[int, ...]) -> None:
        torch = self._torch
        if not self.context.set_input_shape(self.input_name, shape):
            raise ShapeError(f"input shape {shape} is outside the engine's profile (batch "
                             f"{self.batch_range[0]}..{self.batch_range[1]})")
        bufs = {self.input_name: torch.empty(shape, dtype=self._dtype(self.input_name),
                                             device="cuda")}
        for name in self.output_names:
            out_shape = tuple(self.context.get_tensor_shape(name))
            bufs[name] = torch.empty(out_shape, dtype=self._dtype(name), device="cuda")
        for name, t in bufs.items():
            self.context.set_tensor_address(name, t.data_ptr())
        self._host_out = torch.empty(bufs[self.output_names[0]].shape,
                                     dtype=bufs[self.output_names[0]].dtype, pin_memory=True)
        self._buffers, self._shape = bufs, shape

    def _check(self, x: np.ndarray) -> None:
        expect = self.input_dims
        if x.ndim != len(expect) or any(d > 0 and d != s for d, s in zip(expect[1:], x.shape[1:])):
            raise ShapeError(f"input shape {tuple(x.shape)} does not fit the engine input "
                             f"{self.input_name}{list(expect)}")
        if not self.batch_range[0] <= x.shape[0] <= self.batch_range[1]:
            raise ShapeError(f"batch {x.shape[0]} is outside the engine's profile (batch "
                             f"{self.batch_range[0]}..{self.batch_range[1]}); rebuild with another "
                             f"target batch")

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise ExportError("TensorRT execute_async_v3 failed: "
                              + next(iter(reversed(self.log.messages)), "no message"))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.shape != self._shape:
            self._check(x)
            self._bind(tuple(x.shape))
        with torch.cuda.stream(self.stream):
            self._buffers[self.input_name].copy_(torch.from_numpy(x), non_blocking=True)
            self._enqueue()
            self._host_out.copy_(self._buffers[self.output_names[0]], non_blocking=True)
        self.stream.synchronize()
        return self._host_out.numpy().copy()

    def gpu_times_ms(self, x: np.ndarray, runs: int = 200, warmup: int = 20) -> list[float]:
        """GPU time of the engine alone (no copies), each run between two CUDA events."""
        torch = self._torch
        self(x)  # binds the shape and fills the input buffer
        times = []
        with torch.cuda.stream(self.stream):
            for i in range(warmup + runs):
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record(self.stream)
                self._enqueue()
                end.record(self.stream)
                end.synchronize()
                if i >= warmup:
                    times.append(float(start.elapsed_time(end)))
        return times

    def details(self, x: np.ndarray) -> dict[str, Any]:
        """What the measurement record says about the runtime besides the wall-clock protocol."""
        gpu = sorted(self.gpu_times_ms(x))
        return {"tensorrt_version": str(self._trt.__version__), "engine_precision": self.precision,
                "gpu_compute_p50_ms": gpu[len(gpu) // 2],
                "gpu_compute_protocol": f"{len(gpu)} runs of execute_async_v3 alone between two "
                                        f"CUDA events, after 20 warm-up runs; median"}


# --------------------------------------------------------------------------------------------
# the exporter


class TensorRTExporter(Exporter):
    name = "tensorrt"
    runtime = "tensorrt"
    needs = ("onnx",)
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
            onnx_rel = _pick_onnx(variants, precision)
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
        onnx_rel = _pick_onnx(variants, precision)
        # first, before asking whether TensorRT is here: the script must be what nas2deploy
        # writes for the recorded plan, or someone changed code that a user may run by hand
        if os.path.lexists(root / SCRIPT):
            recorded_plan, _ = make_plan(root, _pick_onnx(variants, recorded), recorded, batch)
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
