"""Building an engine here: with TensorRT's Python API in-process, or with trtexec (the command
the bundle's script holds, regenerated from the plan); and whether this machine can do either.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from nas2deploy.bundle import bundle_file, write_atomic
from nas2deploy.errors import ExportError, UnavailableError

from .._common import one_line
from .check import version_tuple
from .plan import BUILD_LOG, CACHE, ENGINE, TRTEXEC_DIRS, WORKSPACE_MIB, Plan


def tensorrt_import_error() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # a broken install is as unusable as a missing one
        return one_line(exc, 120)
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



_SHARED_CACHE: dict[str, bytes] = {}  # per process: engines built one after another (a latency
# table builds hundreds) reuse each other's kernel timings even when each has its own folder


def trt_logger(trt):
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
    if flag is not None and version_tuple(trt.__version__) < (10,):
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


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)



def build_with_python(bundle_dir: Path, plan: Plan, engine_rel: str = ENGINE,
                      cache_rel: str = CACHE) -> dict[str, Any]:
    """Build and write the serialized engine with TensorRT's Python API; facts for the info."""
    import onnx
    import tensorrt as trt

    root = Path(bundle_dir)
    t0 = time.perf_counter()
    log = trt_logger(trt)
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
