"""The files the device builds its engine from: ``tensorrt/build_engine.sh`` (one trtexec command
with the plan's shapes, precision and timing cache) and ``tensorrt/README.md``, each checked as it
is written; and the check that a bundle's script is still the one nas2deploy writes for its plan.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from nas2deploy.bundle import bundle_file, write_atomic
from nas2deploy.errors import BundleError, ExportError

from .._common import one_line
from .plan import DIR, README, SCRIPT, TRTEXEC_DIRS, Plan


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


def write_device_files(bundle_dir: Path, plan: Plan) -> str:
    _write_text_atomic(Path(bundle_dir) / SCRIPT, script_text(plan), 0o755)
    _write_text_atomic(Path(bundle_dir) / README, readme_text(plan))
    return check_script(bundle_dir, SCRIPT, plan)
