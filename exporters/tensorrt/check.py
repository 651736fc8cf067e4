"""What TensorRT's ONNX parser accepts: the graph checked against its documented operator list.

The list (``tensorrt_onnx_ops.json``, package data) is compiled from onnx-tensorrt's
docs/operators.md: the operators, the opsets, what was added after TensorRT 10.0 and what is
documented as unsupported. The check runs everywhere, TensorRT or not, so a bundle made for a
device says before it leaves this machine whether the device's parser will take it.
"""

from __future__ import annotations

import importlib.resources
import json
import re
from functools import lru_cache
from typing import Any

import numpy as np

from nas2deploy.errors import ExportError

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@lru_cache(maxsize=1)
def supported_ops() -> dict[str, Any]:
    """The operator table compiled from onnx-tensorrt's docs/operators.md (package data)."""
    text = importlib.resources.files(__package__).joinpath("tensorrt_onnx_ops.json").read_text()
    return json.loads(text)


def local_tensorrt_version() -> str | None:
    """The version of the TensorRT that imports here, if one does."""
    try:
        import tensorrt as trt

        return str(trt.__version__)
    except Exception:
        return None


def version_tuple(v: str) -> tuple[int, ...]:
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
                if tensorrt_version and version_tuple(tensorrt_version) < version_tuple(since):
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
