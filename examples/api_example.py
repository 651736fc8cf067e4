"""Drive nas2deploy from Python: search, then use the bundle's model and measure it again.

    python examples/api_example.py [OUT_DIR]
"""

import sys

import torch

from nas2deploy import load_bundle
from nas2deploy.config import RunConfig
from nas2deploy.measure import measure_bundle
from nas2deploy.pipeline import search_and_export

out = sys.argv[1] if len(sys.argv) > 1 else "api-example-out"
cfg = RunConfig(method="dsonas", target="onnxruntime:cpu", latency_fraction=0.5,
                retrain_epochs=8, out=out, overwrite=True)
result = search_and_export(cfg, log=print)
lat = result.manifest["latency"]
print(f"p50 {lat['measured']['p50_ms']:.4f} ms / budget {lat['budget_ms']:.4f} ms, "
      f"top-1 {result.manifest['accuracy']['top1']:.3f}")

net = load_bundle(out)  # a plain nn.Module: no nas2deploy method classes inside
x = torch.randn(1, 1, 32, 32)
print("logits:", net(x).detach().numpy().round(2))

print("re-measured:", measure_bundle(out, record=False))
sys.exit(result.exit_code)
