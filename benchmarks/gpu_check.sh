#!/usr/bin/env bash
# The GPU check: the gpu-marked tests (device, AMP, the streamed loader feeding the GPU, a search
# and a retrain on the GPU, every built-in method's search on CUDA in fp32, fp16 and bf16), then
# benchmarks/gpu_scale.py (scale.py's part (c)), on a machine with an NVIDIA GPU and torch with
# CUDA. The last line is gpu_scale's figure.
#
#   benchmarks/gpu_check.sh [WHEEL_DIR]
#
# WHEEL_DIR: local wheel files of what the GPU machine lacks (torch-pruning, openvino, ...);
# they are installed from there only, never from the network. Runs in well under 8 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
if [ -n "${1:-}" ]; then
  "$PY" -m pip install -q --no-index --find-links "$1" torch-pruning openvino onnx click \
    safetensors matplotlib tomli 2>/dev/null || true
fi
"$PY" -c "import nas2deploy" 2>/dev/null || "$PY" -m pip install -q --no-deps --no-build-isolation -e .
"$PY" - <<'PY'
import torch
from nas2deploy.env import cpu_name
print("# torch", torch.__version__, "| cuda", torch.version.cuda,
      "| gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
      "| cpu", cpu_name())
if not torch.cuda.is_available():
    raise SystemExit("gpu_check: no CUDA GPU visible to torch; nothing to check here")
PY
"$PY" -m pytest -q -rs -m gpu tests/
"$PY" benchmarks/gpu_scale.py --repeats 2
