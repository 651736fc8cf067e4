"""Building a latency table: which signatures, loading each op into the target runtime as
deployment does, and timing them; also whole networks and random subnets, for calibration.

An op is built alone (``netspec.single_op_spec``), exported alone and run alone in the target
runtime with the settings the runtime's registered exporter uses for deployment.

Why the ops are exported as latency probes (``ExportContext.probe``: the ONNX exporter then uses
the legacy TorchScript exporter): torch's dynamo exporter costs 1–3 s per model, the legacy one
~0.1 s. Exporting a multi-output wrapper once would be cheaper still, but then the ops would be
timed together, not alone. For per-op timing the exporter does not matter as long as the runtime
ends up running the same kernels: both exporters emit the same ONNX operators for this op
vocabulary (Conv, BatchNormalization or a folded Conv, Relu, MaxPool, AveragePool, Add, Mul,
ReduceMean, Gemm/MatMul) at the same opset, and onnxruntime and OpenVINO both fold BatchNorm
into the conv and fuse activations at load time, so the optimised graph they execute is the
same. Only the export step is replaced: the file is loaded by the registered exporters' own
``runner()`` (and, for OpenVINO, converted by its own ``export()``), so session options,
threads, precision hints and static shapes are exactly those of deployment.
``fast_export=False`` exports every op as a bundle is exported (dynamo) instead. Whole networks
for calibration are exported as bundles are, unless ``fast_export`` is asked for.

Timing (``measure.TableProtocol``): ops are loaded in chunks (a shuffled mix of types, ~200 ops:
a loaded OpenVINO model holds threads) and each chunk is timed interleaved. Every chunk also
times a null network (input → a slice of it, the network's input and output shapes): its p50 is
the per-call overhead every call pays once. An entry's ``ms`` is the op's p50 minus its chunk's
overhead (floored at 0): what the op adds inside a network. The load average before and after
and the spread between rounds are recorded (``meta["load"]``): a table measured on a busy
machine says so, and ``rebuild=True`` measures it again on a quiet one.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..outdir import scratch_prefix
from ..env import cache_root, machine_info, open_bar, utc_now, version, write_atomic
from ..errors import UnavailableError, UsageError
from ..exporter import Runner
from ..materialize import materialize, scale_width
from ..netspec import GraphNet, OpSignature, build_network
from ..runtime import check_target_device, export_loader, exporter_for_runtime, resolve_chain
from ..target import Target
from .grid import FREE_TYPES, SUM_TYPES, WidthGrid, as_grid, network_signatures, op_spec
from .measure import Progress, TableProtocol, Timing, time_interleaved
from .table import INTERPOLATION, VERSION, LatencyTable


def collect_signatures(method, supernet: nn.Module, grid: "WidthGrid | Sequence[float] | str" = "dense",
                       *, progress: Progress | None = None) -> dict[str, OpSignature]:
    """Every distinct signature of the space's cover (``SearchSpace.covering``), each network scaled
    with ``scale_width`` at every multiplier of ``grid`` (see ``WidthGrid``); every sum also as
    ``wsum`` and vice versa."""
    archs = method.space(supernet).covering()
    if not archs:
        raise UsageError(f"method {method.name!r}: its space's cover holds no networks")
    grid = as_grid(grid)
    multipliers = grid.resolve(archs)
    sum_points = grid.sum_points(multipliers)
    found: dict[str, OpSignature] = {}
    bar = open_bar(progress, len(archs) * len(multipliers), "collect ops")
    try:
        for arch in archs:
            net = materialize(arch)
            for m in sorted(multipliers, reverse=True):
                scaled = net if m >= 0.999 else scale_width(net, m)
                for sig in network_signatures(scaled.spec()).values():
                    if sig.type in SUM_TYPES and m not in sum_points:
                        continue
                    found.setdefault(sig.key(), sig)
                bar.update(1)
    finally:
        bar.close()
    for sig in list(found.values()):
        if sig.type in SUM_TYPES:
            twin = replace(sig, type="wsum" if sig.type == "sum" else "sum")
            found.setdefault(twin.key(), twin)
    return {k: v for k, v in found.items() if v.type not in FREE_TYPES}


def _tensorrt_missing() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # a broken install is as unusable as a missing one
        return f"tensorrt does not import here ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    return None


def check_precision(target: Target) -> None:
    """UsageError for a precision tables are not measured at."""
    if target.precision == "int8":
        # Each op would need its own calibrated Q/DQ export with the Q/DQ of its neighbours,
        # which the per-op export path does not build (yet).
        raise UsageError("latency tables are measured at fp32 and fp16; int8 targets are searched "
                         "with --latency-model flops, whose anchors and rounds are measured in int8")


def check_target(target: Target) -> None:
    """UsageError/UnavailableError unless a table for ``target`` can be measured here."""
    check_precision(target)

    if target.runtime == "tensorrt":
        reason = _tensorrt_missing()
        if reason:
            raise UnavailableError(
                f"latency tables for tensorrt need TensorRT and a CUDA GPU: {reason}")
        # Here TensorRT and the GPU exist: the registered tensorrt exporter (needs onnx) builds
        # one engine per model in-process, as deployment does, and its runner times it; a
        # timing cache shared within the process keeps hundreds of small builds quick.
    check_target_device(target)
    exporter_for_runtime(target.runtime)


class RunnerFactory:
    """Loads models into the target runtime the way deployment does, one folder per model."""

    def __init__(self, target: Target, workdir: Path, *, fast_export: bool):
        check_target(target)
        self.target, self.workdir, self.fast_export = target, Path(workdir), fast_export
        self.final = exporter_for_runtime(target.runtime)  # None: eager torch
        self.chain = resolve_chain([self.final]) if self.final else []
        self.count = 0

    def describe(self) -> str:
        if self.final is None:
            return "eager PyTorch (torch_runner)"
        steps = [f"exporter {name!r}" for name in self.chain]
        probe = (" (as latency probes: the ONNX step by the TorchScript exporter)"
                 if self.fast_export else "")
        return " -> ".join(steps) + f"{probe}; runner of exporter {self.final!r}"

    def __call__(self, model: nn.Module, x: torch.Tensor) -> Runner:
        folder = self.workdir / f"m{self.count:05d}"
        self.count += 1
        return export_loader(model.eval(), self.target, folder, x, probe=self.fast_export)()


class _NullNet(nn.Module):
    """Input → a slice of it: a call that computes (next to) nothing, for the per-call overhead."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.k = num_classes

    def forward(self, x):
        return x.flatten(1)[:, : self.k] * 1.0


def measure_networks(nets: Sequence[nn.Module], target: Target, example_shape: tuple[int, ...], *,
                     protocol: TableProtocol = TableProtocol(rounds=9, calls=20),
                     fast_export: bool = False, progress: Progress | None = None,
                     workdir: Path | None = None) -> list[Timing]:
    """End-to-end p50 of whole networks on ``target``: each exported by the registered exporters
    (the artifact deployment runs; ``fast_export`` swaps the dynamo ONNX step for the legacy
    one) and loaded by the runtime's runner, then all timed interleaved."""
    with tempfile.TemporaryDirectory(prefix=scratch_prefix("lut")) as tmp:
        factory = RunnerFactory(target, Path(workdir or tmp), fast_export=fast_export)
        x = torch.randn(*example_shape, generator=torch.Generator().manual_seed(0))
        runners = []
        bar = open_bar(progress, len(nets), f"export {target.runtime}")
        try:
            for net in nets:
                runners.append(factory(net, x))
                bar.update(1)
        finally:
            bar.close()
        xn = x.numpy()
        return time_interleaved(runners, [xn] * len(runners), protocol, progress=progress,
                                desc=f"time {target.runtime}")


def _collect_cached(method, supernet: nn.Module, space: dict[str, Any], grid: WidthGrid,
                    progress: Progress | None) -> dict[str, OpSignature]:
    """``collect_signatures``, cached per (space, grid): they do not depend on the target, and
    width scaling every candidate at every grid point takes a while (~1-2 s per scale_width)."""
    ident = {"fingerprint": space.get("fingerprint"), "grid": grid.ident(), "format": VERSION,
             "nas2deploy": version("nas2deploy"), "torch_pruning": version("torch-pruning")}
    h = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_root() / "luts" / f"signatures-{space.get('name', 'space')}-{h}.json"
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
        sigs = [OpSignature(**d) for d in cached["signatures"]]
        if cached.get("ident") == ident and sigs:
            return {s.key(): s for s in sigs}
    except (OSError, ValueError, TypeError, KeyError):
        pass
    sigs = collect_signatures(method, supernet, grid, progress=progress)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps({"ident": ident, "signatures": [sigs[k].to_dict()
                                                                     for k in sorted(sigs)]}))
    except (OSError, UsageError):
        pass  # an unwritable cache only costs time
    return sigs


def build_table(method, supernet: nn.Module, target: Target, *, input_size: int,
                grid: "WidthGrid | Sequence[float] | str" = "dense",
                protocol: TableProtocol = TableProtocol(), fast_export: bool = True,
                chunk: int = 192, progress: Progress | None = None) -> LatencyTable:
    """Measure every op signature of the space (at every grid width) alone on ``target``.

    Ops are loaded and timed in chunks of ``chunk`` (a loaded OpenVINO model holds threads and
    memory); each chunk is a shuffled mix of op types and carries its own null network, so a
    change in machine load between chunks shifts no op type systematically.
    """
    grid = as_grid(grid)
    t_start = time.perf_counter()
    check_target(target)
    space = method.space(supernet)
    archs = space.covering()
    multipliers = grid.resolve(archs)
    sigs = _collect_cached(method, supernet, space, grid, progress)
    collect_s = time.perf_counter() - t_start
    keys = sorted(sigs)
    random.Random(0).shuffle(keys)
    load_before = _loadavg()
    torch.manual_seed(0)
    inp = archs[0].network["input"]
    in_shape = (target.batch, int(inp["channels"]), *[int(s) for s in inp["size"]])
    null_net = _NullNet(int(archs[0].network["num_classes"]))
    null_x = torch.randn(*in_shape)
    entries: dict[str, dict[str, Any]] = {}
    overheads, spreads = [], []
    chunk = max(1, int(chunk))
    bar = open_bar(progress, len(keys), f"measure ops ({target.runtime})")
    try:
        for c0 in range(0, len(keys), chunk):
            part = keys[c0:c0 + chunk]
            with tempfile.TemporaryDirectory(prefix=scratch_prefix("lut")) as tmp:
                factory = RunnerFactory(target, Path(tmp), fast_export=fast_export)
                runners, inputs = [factory(null_net, null_x)], [null_x.numpy()]
                for key in part:
                    sig = sigs[key]
                    net = build_network(op_spec(sig)).eval()
                    x = torch.randn(target.batch, sig.c_in, sig.h, sig.w)
                    runners.append(factory(net, x))
                    inputs.append(x.numpy())
                    bar.update(1)
                bar.set_postfix(step="timing")
                timings = time_interleaved(runners, inputs, protocol)
                route = factory.describe()
                del runners
            overhead = timings[0].p50_ms
            overheads.append(overhead)
            spreads.extend(t.round_spread for t in timings)
            for key, tm in zip(part, timings[1:]):
                entries[key] = {"ms": round(max(tm.p50_ms - overhead, 0.0), 6),
                                "p50_ms": round(tm.p50_ms, 6), "p90_ms": round(tm.p90_ms, 6),
                                "runs": tm.runs, "sig": sigs[key].to_dict()}
    finally:
        bar.close()
    meta = {
        "space": {"name": space.get("name"), "fingerprint": space.get("fingerprint")},
        "method": getattr(method, "name", None),
        "target": {"runtime": target.runtime, "device": target.device,
                   "precision": target.precision, "batch": target.batch,
                   "threads": target.threads},
        **machine_info(target),
        "input_size": int(input_size),
        "input_shape": list(in_shape),
        "threads": target.threads, "batch": target.batch, "precision": target.precision,
        "protocol": protocol.describe(target.batch, target.threads)
        + f"; in chunks of {chunk} ops, each with its own null network",
        "export": route,
        "entry_ms": "p50 of the op alone minus its chunk's null-network p50 (floored at 0)",
        "overhead_ms": round(float(np.median(overheads)), 6),
        "overhead": "p50 of a null network (input -> slice, the network's input and output "
                    "shapes): the per-call cost a network pays once",
        "chunk_overheads_ms": [round(o, 6) for o in overheads],
        "grid": {**grid.ident(), "width_multipliers": list(multipliers),
                 "by": "materialize.scale_width of every candidate network"},
        "interpolation": INTERPOLATION,
        "date": utc_now(),
        "build_s": round(time.perf_counter() - t_start, 2),
        "collect_s": round(collect_s, 2),
        "load": {"loadavg_1m_before": load_before, "loadavg_1m_after": _loadavg(),
                 "median_round_spread": round(float(np.median(spreads)), 4),
                 "note": "loadavg above the core count means other work shared the CPU and the "
                         "figures are noisy: rebuild on a quiet machine (rebuild=True)"},
        "nas2deploy": version("nas2deploy"),
    }
    return LatencyTable(entries, meta)


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


@dataclass
class Subnet:
    arch: Any  # Architecture
    width: float
    net: GraphNet

    @property
    def spec(self) -> dict[str, Any]:
        return self.net.spec()


def sample_subnets(method, supernet: nn.Module, n: int, *, seed: int,
                   widths: tuple[float, float] = (0.25, 1.0),
                   progress: Progress | None = None, desc: str = "sample subnets") -> list[Subnet]:
    """``n`` random subnets: the space's ``sample`` (a clear error where it has none), then
    ``scale_width`` at a multiplier uniform in ``widths``."""
    space = method.space(supernet)
    rng = random.Random(seed)
    out = []
    bar = open_bar(progress, n, desc)
    try:
        for _ in range(n):
            arch = space.draw(rng)
            w = round(rng.uniform(*widths), 3)
            torch.manual_seed(rng.getrandbits(31))
            out.append(Subnet(arch, w, scale_width(materialize(arch), w)))
            bar.update(1)
    finally:
        bar.close()
    return out
