"""fp32 vs fp16 vs int8 latency of the same trained networks on each CPU runtime.

Two networks, trained on digits for a few epochs: the DSO-NAS largest subnet at a width (a
DAG of many small ops, like what DSO-NAS derives) and a plain MobileNetV2-like chain (fewer, larger
convolutions). Each is exported once per precision exactly as a bundle is (int8: Q/DQ calibrated
on 512 training images), then every (runtime, precision) runner is timed in interleaved rounds
(``--rounds`` × 2000 calls each, batch 1, 1 thread), so drift of the shared machine hits all of
them alike. Prints the CPU and the ISA flags that pick the int8 kernels (without VNNI, u8 x s8
pairs saturate at 16 bits: see ``quantize_int8``), the int8 weight form, the median p50 per row,
the ratio to fp32 on the same runtime, the top-1 agreement with PyTorch fp32 on the test split,
and the int8 agreement per runtime. Final line: ``int8_vs_fp32: <ratio> openvino, <ratio>
onnxruntime`` (median p50 int8 / fp32 of the chain network; < 1 means int8 is faster).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import isa_line, machine_line  # noqa: E402

from nas2deploy import registry  # noqa: E402
from nas2deploy.data import load_dataset  # noqa: E402
from nas2deploy.exporter import ExportContext  # noqa: E402
from nas2deploy.latency import Protocol, measure  # noqa: E402
from nas2deploy.materialize import materialize, scale_width  # noqa: E402
from nas2deploy.method import TaskSpec  # noqa: E402
from nas2deploy.netspec import build_network  # noqa: E402
from nas2deploy.runtime import export_chain, runner_for  # noqa: E402
from nas2deploy.target import Target  # noqa: E402
from nas2deploy.train import train  # noqa: E402

ROWS = [("openvino:cpu", "fp32"), ("openvino:cpu", "fp16"), ("openvino:cpu", "int8"),
        ("onnxruntime:cpu", "fp32"), ("onnxruntime:cpu", "int8")]


def chain_spec(size: int) -> dict:
    """MobileNetV2-like: stem, five inverted residual blocks, head (~9M MACs at 32x32)."""
    nodes = [{"id": "stem", "op": "conv", "inputs": ["input"], "c_in": 1, "c_out": 32, "k": 3,
              "stride": 2}]
    prev, c = "stem", 32
    for i, (c_out, stride) in enumerate([(32, 1), (48, 2), (48, 1), (96, 2), (96, 1)]):
        nodes.append({"id": f"b{i}", "op": "mbconv", "inputs": [prev], "c_in": c, "c_out": c_out,
                      "mid": 4 * c, "k": 3, "stride": stride})
        prev, c = f"b{i}", c_out
    nodes.append({"id": "head", "op": "head", "inputs": [prev], "c_in": c, "num_classes": 10})
    return {"input": {"channels": 1, "size": [size, size]}, "num_classes": 10, "nodes": nodes,
            "output": "head"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--dag-width", type=float, default=0.5)
    args = ap.parse_args()
    print(machine_line())
    print(isa_line(), flush=True)
    ds = load_dataset("digits", input_size=32, seed=0)
    dso = registry.methods.get("dsonas")()
    dag = scale_width(materialize(dso.space(dso.build(TaskSpec(1, 32, 10))).largest()),
                      args.dag_width)
    nets = {"chain": build_network(chain_spec(32)), "dsonas-dag": dag}
    proto = Protocol(warmup=50, runs=2000, min_seconds=0.0)
    x = ds.x_test[:1].numpy()
    final: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, net in nets.items():
            torch.manual_seed(0)
            train(net, ds.x_train, ds.y_train, epochs=args.epochs, seed=0)
            net.eval()
            ref = net(ds.x_test).argmax(1).numpy()
            runners, weights = {}, None
            for runtime, precision in ROWS:
                tgt = Target.parse(f"{runtime}:{precision}")
                folder = Path(tmp) / f"{name}-{runtime}-{precision}"
                ctx = ExportContext(folder, ds.x_test[:1].clone(), tgt, {},
                                    calibration=ds.x_train[:512])
                fmt = "openvino" if runtime.startswith("openvino") else "onnx"
                export_chain(net, [fmt], ctx)
                if precision == "int8" and fmt == "onnx":
                    weights = ctx.artifacts["onnx"].info["quantization"]["weights"]
                run = runner_for(net, tgt, folder, ctx.artifacts)
                got = np.concatenate([run(ds.x_test[i:i + 1].numpy()).argmax(1)
                                      for i in range(len(ds.x_test))])
                runners[(runtime, precision)] = (run, float((got == ref).mean()))
            p50s: dict[tuple[str, str], list[float]] = {k: [] for k in runners}
            for _ in range(args.rounds):
                for key, (run, _) in runners.items():
                    p50s[key].append(measure(run, x, protocol=proto).p50_ms)
            print(f"# {name}: params {sum(p.numel() for p in net.parameters()):,}, fp32 top-1 "
                  f"{(ref == ds.y_test.numpy()).mean():.2%}; int8 weights: {weights}")
            print(f"{'runtime':<16} {'precision':<9} {'p50 ms':>8} {'vs fp32':>8} {'agree':>7}")
            for (runtime, precision), vals in p50s.items():
                med = statistics.median(vals)
                base = statistics.median(p50s[(runtime, "fp32")])
                print(f"{runtime:<16} {precision:<9} {med:>8.4f} {med / base:>8.2f} "
                      f"{runners[(runtime, precision)][1]:>7.2%}", flush=True)
                if name == "chain" and precision == "int8":
                    final[runtime.split(":")[0]] = med / base
            print(f"# {name}: int8 top-1 agreement with fp32: " + ", ".join(
                f"{runtime.split(':')[0]} {agree:.2%}" for (runtime, precision), (_, agree)
                in runners.items() if precision == "int8"), flush=True)
    print(f"int8_vs_fp32: {final['openvino']:.2f} openvino, {final['onnxruntime']:.2f} onnxruntime")


if __name__ == "__main__":
    main()
