"""Latency lookup tables measured on the target runtime, and the latency models built on them.

A **table** belongs to one (search space, target, machine). It holds, for every distinct
``OpSignature`` the space can produce (the ops of ``method.candidate_networks()`` at their real
input shapes, each also width-scaled with ``materialize.scale_width`` at a grid of multipliers),
the time that op takes **in the target runtime itself**: the op is built alone
(``netspec.single_op_spec``), exported alone and run alone in that runtime with the settings the
runtime's registered exporter uses for deployment. Entries are keyed by ``OpSignature.key()``,
never by position (METHODS.md §2.7 pitfall 3), and stored as JSON with the metadata needed to
know what they mean (runtime and version, device, CPU/GPU, threads, batch, precision, protocol,
date, width grid, interpolation, space fingerprint).

Why the ops are exported as latency probes (``ExportContext.probe``: the ONNX exporter then uses
the legacy TorchScript exporter): torch's dynamo exporter costs 1–3 s
per model, the legacy one ~0.1 s. Exporting a multi-output wrapper once would be cheaper still,
but then the ops would be timed together, not alone. For per-op timing the exporter does not
matter as long as the runtime ends up running the same kernels: both exporters emit the same
ONNX operators for this op vocabulary (Conv, BatchNormalization or a folded Conv, Relu, MaxPool,
AveragePool, Add, Mul, ReduceMean, Gemm/MatMul) at the same opset, and
onnxruntime and OpenVINO both fold BatchNorm into the conv and fuse activations at load time,
so the optimised graph they execute is the same. Only the export step is replaced: the file is
loaded by the registered exporters' own ``runner()`` (and, for OpenVINO, converted by its own
``export()``), so session options, threads, precision hints and static shapes are exactly those
of deployment. ``fast_export=False`` exports every op as a bundle is exported (dynamo) instead.
Whole networks for calibration are exported as bundles are, unless ``fast_export`` is asked for.

Timing (``TableProtocol``): ops are loaded in chunks (a shuffled mix of types, ~200 ops: a
loaded OpenVINO model holds threads) and each chunk is timed **interleaved**: in each of
``rounds`` rounds every op is called ``calls`` times, each call timed alone with
``perf_counter``; an op's p50 is the median over all its calls. Interleaving spreads slow phases
of a shared machine over all ops instead of hitting a few. Every chunk also times a null network
(input → a slice of it, the network's input and output shapes): its p50 is the per-call
overhead every call pays once. An entry's ``ms`` is the op's p50 minus its chunk's overhead
(floored at 0): what the op adds inside a network. A network's plain LUT estimate is
``overhead_ms + Σ ms`` over its nodes. The load average before and after and the spread between
rounds are recorded (``meta["load"]``): a table measured on a busy machine says so, and
``rebuild=True`` measures it again on a quiet one.

Width grid (``WidthGrid``): dense by default, i.e. every channel count that width scaling can
produce above ``min_width`` is measured exactly, because CPU runtimes are not smooth in channels.
Measured on a 2-vCPU Intel Xeon VM (AVX-512, AMX; loaded): onnxruntime 1.32 runs a 16×16
separable 5×5 conv in 4.5 µs with 16 channels, 37 µs with 17, 6.7 µs with 8 and 23 µs with 9
(its fast depthwise kernels need channels divisible by 4), and its 1×1 convs are irregular in
yet another way; OpenVINO 2026.4 is smooth. Sums are smooth on both and are taken at the
coarse grid only.

Interpolation (only where an exact entry is missing): within the op's **family** (same type,
h, w, kernel, stride, SE presence, activation), linearly in its channels (c_in + c_out, plus
mid + se for MBConv) between the two nearest measured counts of the same alignment (all
divisible by 4, or not; both if one kind is missing); outside the measured range, linearly from
the two nearest, clamped between proportional and constant. Sums are interpolated in channels at
each measured input count, then linearly in the input count. A signature with no family in the
table is an error (the table does not cover the space).

Sums with coefficients (DSO-NAS keeps its surviving λ as constant coefficients) run a Mul per
input besides the Adds, so they are timed as their own type ``wsum`` (see
``network_signatures``); the table measures both kinds for every sum it finds.

Models: ``LUTModel`` (the plain estimate) and ``CalibratedLUT`` (a least-squares fit of measured
end-to-end latencies of sampled subnets on the LUT sum and the op count, relative error
weighted; the fit and its residuals are in ``describe()``). ``make_latency_model`` builds the
kind the pipeline asks for; tables and calibrations are cached under the user cache directory.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gc
import hashlib
import importlib.metadata as md
import json
import math
import os
import random
import tempfile
import time
from bisect import bisect_left
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from . import registry
from .bundle import scratch_prefix
from .errors import UnavailableError, UsageError
from .exporter import Runner
from .latency import FlopsProxy, LatencyModel
from .netspec import GraphNet, OpSignature, build_network, signatures, single_op_spec
from .target import Target

FORMAT = "nas2deploy.latency_table"
VERSION = 1
CALIBRATION_FORMAT = "nas2deploy.latency_calibration"
COARSE_GRID: tuple[float, ...] = tuple(i / 8 for i in range(2, 9))  # 0.25 … 1.0 step 0.125
SUM_TYPES = ("sum", "wsum")
FREE_TYPES = ("identity",)  # runtimes drop these; they cost nothing and need no entry
INTERPOLATION = (
    "exact key; else within the family (type, h, w, kernel, stride, se>0, act) linear in channels "
    "(c_in+c_out, +mid+se for mbconv) between the nearest measured counts of the same alignment "
    "(all channel counts divisible by 4 or not; both kinds if one is missing); sums in channels "
    "at each measured input count, then linear in the input count; outside the measured range "
    "linear from the two nearest points, clamped between proportional and constant")
MODEL_KINDS = ("flops", "lut", "calibrated")

Progress = Callable[..., Any]


# --------------------------------------------------------------------------------------------
# signatures


def network_signatures(spec: dict[str, Any]) -> dict[str, OpSignature]:
    """``netspec.signatures`` with sums that carry coefficients typed ``wsum``.

    A scaled sum runs a Mul per input besides the Adds, so it costs more than a plain sum of the
    same shape; ``OpSignature`` has no field for it yet, so the type tells them apart.
    """
    sigs = signatures(spec)
    for node in spec["nodes"]:
        sig = sigs.get(node["id"])
        if sig is not None and sig.type == "sum" and node.get("coeffs") is not None:
            sigs[node["id"]] = replace(sig, type="wsum")
    return sigs


def op_spec(sig: OpSignature) -> dict[str, Any]:
    """A one-node network computing just the op of ``sig`` (``single_op_spec`` plus ``wsum``)."""
    if sig.type == "wsum":
        spec = single_op_spec(replace(sig, type="sum"))
        node = spec["nodes"][0]
        # distinct coefficients: with one repeated input, equal ones would be merged into one
        # Mul by the exporter, while a network multiplies every input separately
        node["coeffs"] = [0.5 + 0.01 * i for i in range(len(node["inputs"]))]
        return spec
    return single_op_spec(sig)


def _family(sig: OpSignature) -> tuple:
    """Signatures that differ only in channel counts (sums: and in their number of inputs)."""
    if sig.type in SUM_TYPES:
        return (sig.type, sig.h, sig.w, sig.act)
    return (sig.type, sig.h, sig.w, sig.kernel, sig.stride, sig.se > 0, sig.act)


def _channels(sig: OpSignature) -> float:
    """The coordinate a family is interpolated in: its channel counts added up."""
    if sig.type in SUM_TYPES:
        return float(sig.c_in)
    if sig.type.startswith("mbconv"):
        return float(sig.c_in + sig.c_out + sig.mid + sig.se)
    return float(sig.c_in + sig.c_out)


def _aligned(sig: OpSignature) -> bool:
    """Every channel count a multiple of 4: CPU runtimes run blocked-layout kernels on those
    (onnxruntime on an AVX-512 Xeon: a depthwise conv with 17 channels takes 8x the time of
    one with 16), so interpolation never mixes aligned and unaligned entries when it can avoid it."""
    chans = [sig.c_in, sig.c_out] + ([sig.mid] if sig.type.startswith("mbconv") else [])
    return all(c % 4 == 0 for c in chans)


@dataclass(frozen=True)
class WidthGrid:
    """The width multipliers a table measures every candidate network at.

    ``multipliers`` given: exactly those. ``None`` (dense, the default): every multiplier
    k / C for the widest prunable channel count C of the candidates and k from
    ceil(min_width·C) to C, so every channel count width scaling can produce above
    ``min_width`` is measured exactly (thinned evenly to ``max_points`` if there are more).
    Dense is the default because CPU runtimes are not smooth in channels: onnxruntime runs a
    depthwise conv with 17 channels 8x slower than one with 16, which no interpolation between
    grid points recovers.
    """

    multipliers: tuple[float, ...] | None = None
    min_width: float = 0.25
    max_points: int = 64
    # dense only: sums (smooth in channels on every runtime measured: about linear) are taken at
    # the dense points nearest to COARSE_GRID only, which halves a DSO-NAS table
    coarse_sums: bool = True

    def __post_init__(self):
        if self.multipliers is not None:
            try:
                g = tuple(sorted({round(float(m), 6) for m in self.multipliers}))
            except (TypeError, ValueError):
                raise UsageError(f"width grid must be numbers in (0, 1], not "
                                 f"{self.multipliers!r}") from None
            if not g or not all(0 < m <= 1 for m in g):
                raise UsageError(f"width grid must be numbers in (0, 1], not "
                                 f"{list(self.multipliers)!r}")
            object.__setattr__(self, "multipliers", g)
        if not 0 < self.min_width <= 1:
            raise UsageError(f"width grid min_width must be in (0, 1], not {self.min_width!r}")
        if not isinstance(self.max_points, int) or self.max_points < 2:
            raise UsageError(f"width grid max_points must be an integer >= 2, not {self.max_points!r}")

    def ident(self) -> dict[str, Any]:
        if self.multipliers is not None:
            return {"multipliers": list(self.multipliers)}
        return {"dense": True, "min_width": self.min_width, "max_points": self.max_points,
                "coarse_sums": self.coarse_sums}

    def sum_points(self, multipliers: Sequence[float]) -> set[float]:
        """The multipliers at which sums are collected."""
        if self.multipliers is not None or not self.coarse_sums:
            return set(multipliers)
        return {min(multipliers, key=lambda m: abs(m - c)) for c in COARSE_GRID
                if c >= min(multipliers) - 1e-9}

    def resolve(self, archs: Sequence[Any]) -> tuple[float, ...]:
        if self.multipliers is not None:
            return self.multipliers
        widest = 1
        for arch in archs:
            for sig in signatures(arch.network).values():
                chans = [sig.c_in] + ([sig.c_out] if sig.type != "head" else [])
                if sig.type.startswith("mbconv"):
                    chans.append(sig.mid)
                widest = max(widest, *chans)
        ks = list(range(max(1, math.ceil(self.min_width * widest - 1e-9)), widest + 1))
        if len(ks) > self.max_points:
            ks = sorted({ks[round(i * (len(ks) - 1) / (self.max_points - 1))]
                         for i in range(self.max_points)})
        return tuple(round(k / widest, 6) for k in ks)


def as_grid(grid: "WidthGrid | Sequence[float] | str | None") -> WidthGrid:
    """``"dense"``/None -> the dense grid; a list of multipliers -> exactly those."""
    if grid is None or (isinstance(grid, str) and grid == "dense"):
        return WidthGrid()
    if isinstance(grid, WidthGrid):
        return grid
    if isinstance(grid, str):
        raise UsageError(f"width grid must be 'dense' or a list of multipliers, not {grid!r}")
    return WidthGrid(tuple(grid))


def collect_signatures(method, supernet: nn.Module, grid: "WidthGrid | Sequence[float] | str" = "dense",
                       *, progress: Progress | None = None) -> dict[str, OpSignature]:
    """Every distinct signature of ``method.candidate_networks(supernet)``, each network scaled
    with ``scale_width`` at every multiplier of ``grid`` (see ``WidthGrid``); every sum also as
    ``wsum`` and vice versa."""
    from .materialize import materialize, scale_width

    archs = method.candidate_networks(supernet)
    if not archs:
        raise UsageError(f"method {method.name!r} returned no candidate networks")
    grid = as_grid(grid)
    multipliers = grid.resolve(archs)
    sum_points = grid.sum_points(multipliers)
    found: dict[str, OpSignature] = {}
    bar = _bar(progress, len(archs) * len(multipliers), "collect ops")
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


# --------------------------------------------------------------------------------------------
# runners: one op or one network, loaded in the target runtime


def runtime_version(runtime: str) -> str:
    dist = {"onnxruntime": "onnxruntime", "openvino": "openvino", "torch": "torch",
            "tensorrt": "tensorrt"}.get(runtime, runtime)
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        pass
    if runtime == "tensorrt":  # JetPack installs the bindings without pip metadata
        try:
            import tensorrt

            return str(tensorrt.__version__)
        except Exception:
            pass
    return "not installed"


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
    from .runtime import check_target_device, exporter_for_runtime

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
        from .runtime import exporter_for_runtime, resolve_chain

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
        from .runtime import export_loader

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


# --------------------------------------------------------------------------------------------
# timing


@dataclass(frozen=True)
class TableProtocol:
    """Interleaved timing: ``warmup`` calls per model, then ``rounds`` rounds in which every model
    is called ``calls`` times, each call timed alone; p50 is over all rounds × calls."""

    warmup: int = 10
    rounds: int = 11
    calls: int = 15

    def describe(self, batch: int, threads: int) -> str:
        return (f"interleaved: {self.warmup} warm-up calls per model discarded, then {self.rounds} "
                f"rounds x {self.calls} calls per model, each call timed alone with perf_counter "
                f"(synchronous, input in memory, output to host); p50 over all calls; batch "
                f"{batch}, {threads} intra-op thread(s)")


@dataclass
class Timing:
    p50_ms: float
    p90_ms: float
    runs: int
    round_spread: float  # (max - min) / median of the per-round medians: how steady it was


def time_interleaved(runners: Sequence[Runner], inputs: Sequence[np.ndarray],
                     protocol: TableProtocol = TableProtocol(), *,
                     progress: Progress | None = None, desc: str = "time") -> list[Timing]:
    """Time every runner on its input, interleaved over rounds (see ``TableProtocol``)."""
    n = len(runners)
    per_round: list[list[list[float]]] = [[] for _ in range(n)]
    bar = _bar(progress, protocol.rounds + 1, desc)
    was_gc = gc.isenabled()
    gc.disable()
    try:
        for run, x in zip(runners, inputs):
            for _ in range(protocol.warmup):
                run(x)
        bar.update(1)
        clock = time.perf_counter
        for r in range(protocol.rounds):
            order = range(n) if r % 2 == 0 else range(n - 1, -1, -1)
            for i in order:
                run, x, times = runners[i], inputs[i], []
                for _ in range(protocol.calls):
                    t0 = clock()
                    run(x)
                    times.append((clock() - t0) * 1e3)
                per_round[i].append(times)
            bar.update(1)
    finally:
        if was_gc:
            gc.enable()
        bar.close()
    out = []
    for rounds in per_round:
        flat = np.concatenate([np.asarray(t) for t in rounds])
        meds = np.array([np.median(t) for t in rounds])
        med = float(np.median(flat))
        out.append(Timing(p50_ms=med, p90_ms=float(np.percentile(flat, 90)), runs=int(flat.size),
                          round_spread=float(np.ptp(meds) / med) if med > 0 else 0.0))
    return out


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
        bar = _bar(progress, len(nets), f"export {target.runtime}")
        try:
            for net in nets:
                runners.append(factory(net, x))
                bar.update(1)
        finally:
            bar.close()
        xn = x.numpy()
        return time_interleaved(runners, [xn] * len(runners), protocol, progress=progress,
                                desc=f"time {target.runtime}")


# --------------------------------------------------------------------------------------------
# the table


class LatencyTable:
    """Per-op latencies of one space on one target and machine (see the module docstring)."""

    def __init__(self, entries: dict[str, dict[str, Any]], meta: dict[str, Any]):
        self.entries = entries
        self.meta = meta
        self._sigs = {k: OpSignature(**e["sig"]) for k, e in entries.items()}
        # family -> sub-key (sums: inputs; else 0) -> alignment -> {channels: [ms, ...]}
        fams: dict[tuple, dict[int, dict[bool, dict[float, list[float]]]]] = {}
        for k, sig in self._sigs.items():
            sub = sig.mid if sig.type in SUM_TYPES else 0
            (fams.setdefault(_family(sig), {}).setdefault(sub, {}).setdefault(_aligned(sig), {})
             .setdefault(_channels(sig), []).append(float(entries[k]["ms"])))
        self._families = fams
        self._cache: dict[str, tuple[float, str]] = {}

    # --- lookups ------------------------------------------------------------------------

    @property
    def overhead_ms(self) -> float:
        return float(self.meta.get("overhead_ms", 0.0))

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, sig: OpSignature) -> bool:
        return sig.key() in self.entries

    def lookup(self, sig: OpSignature) -> tuple[float, str]:
        """(ms, how) with how one of "exact", "interpolated", "extrapolated", "free"."""
        key = sig.key()
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        if key in self.entries:
            hit = (float(self.entries[key]["ms"]), "exact")
        elif sig.type in FREE_TYPES:
            hit = (0.0, "free")
        else:
            fam = self._families.get(_family(sig))
            if fam is None:
                raise UsageError(
                    f"latency table has no measured op like {key} (family type={sig.type} "
                    f"{sig.h}x{sig.w} k{sig.kernel} s{sig.stride} se{int(sig.se > 0)} {sig.act}); "
                    f"the table does not cover this space: rebuild it")
            hit = _family_lookup(fam, sig)
        self._cache[key] = hit
        return hit

    def ms(self, sig: OpSignature) -> float:
        return self.lookup(sig)[0]

    def network_sum(self, spec: dict[str, Any]) -> tuple[float, int, dict[str, int]]:
        """(Σ entry ms, number of costed ops, {how: count}) over the nodes of ``spec``."""
        total, n, hows = 0.0, 0, {}
        for sig in network_signatures(spec).values():
            ms, how = self.lookup(sig)
            total += ms
            hows[how] = hows.get(how, 0) + 1
            n += how != "free"
        return total, n, hows

    # --- identity checks ----------------------------------------------------------------

    def check(self, *, space_fingerprint: str | None = None, target: Target | None = None,
              source: str = "latency table") -> None:
        """UsageError (one line) unless the table was measured for this space and target."""
        sp = self.meta.get("space", {})
        if space_fingerprint is not None and sp.get("fingerprint") != space_fingerprint:
            raise UsageError(
                f"{source} was measured for space {sp.get('name', '?')!r} with fingerprint "
                f"{sp.get('fingerprint')!r}, not {space_fingerprint!r}; build one for this space "
                f"(nas2deploy lut build)")
        if target is not None:
            t = self.meta.get("target", {})
            want = {"runtime": target.runtime, "device": target.device,
                    "precision": target.precision, "batch": target.batch, "threads": target.threads}
            diff = [f"{k} {t.get(k)!r} != {v!r}" for k, v in want.items() if t.get(k) != v]
            if diff:
                raise UsageError(f"{source} was measured for target {_target_text(t)}, not "
                                 f"{_target_text(want)} ({', '.join(diff)}); build one for this "
                                 f"target (nas2deploy lut build)")

    # --- JSON ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "meta": self.meta,
                "entries": {k: self.entries[k] for k in sorted(self.entries)}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def save(self, path: str | Path) -> Path:
        try:
            return _atomic_write(Path(path), self.to_json())
        except OSError as exc:
            raise UsageError(f"cannot write latency table {path}: {exc.strerror or exc}") from None

    def machine_differences(self, target: Target) -> list[str]:
        """How this machine differs from the one the table was measured on (CPU, GPU, runtime
        version): empty when it is the same kind. A table from another machine loads, but its
        figures describe that machine."""
        here = machine_info(target)
        return [f"{k}: table {self.meta.get(k)!r}, here {here.get(k)!r}"
                for k in ("cpu", "gpu", "runtime_version") if self.meta.get(k) != here.get(k)]

    @classmethod
    def from_dict(cls, d: Any, source: str = "latency table") -> "LatencyTable":
        def bad(why: str) -> UsageError:
            return UsageError(f"{source} is corrupt: {why}; rebuild it (nas2deploy lut build)")

        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise UsageError(f"{source} is not a nas2deploy latency table (format key missing)")
        if d.get("version") != VERSION:
            raise UsageError(f"{source} has table version {d.get('version')!r}; this nas2deploy "
                             f"reads version {VERSION}; rebuild it")
        meta, entries = d.get("meta"), d.get("entries")
        if not isinstance(meta, dict) or not isinstance(entries, dict):
            raise bad("'meta' and 'entries' must be objects")
        for key in ("space", "target", "overhead_ms"):
            if key not in meta:
                raise bad(f"metadata lacks {key!r}")
        if not _finite_nonneg(meta["overhead_ms"]):
            raise bad(f"overhead_ms {meta['overhead_ms']!r} is not a number >= 0")
        if not entries:
            raise bad("it has no entries")
        fields = {f.name for f in dataclasses.fields(OpSignature)}
        for key, e in entries.items():
            if not isinstance(e, dict) or not _finite_nonneg(e.get("ms")):
                raise bad(f"entry {key!r} has no valid 'ms'")
            sig = e.get("sig")
            if not isinstance(sig, dict) or set(sig) != fields:
                raise bad(f"entry {key!r} has no valid 'sig'")
            try:
                if OpSignature(**sig).key() != key:
                    raise ValueError
            except (TypeError, ValueError):
                raise bad(f"entry {key!r} does not match its signature") from None
        return cls(entries, meta)

    @classmethod
    def from_json(cls, text: str, source: str = "latency table") -> "LatencyTable":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{source} is not valid JSON (truncated or corrupt: {exc.msg} at line "
                             f"{exc.lineno}); rebuild it (nas2deploy lut build)") from None
        return cls.from_dict(d, source)

    @classmethod
    def load(cls, path: str | Path, *, space_fingerprint: str | None = None,
             target: Target | None = None) -> "LatencyTable":
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read latency table {p}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise UsageError(f"latency table {p} is not text (corrupt); rebuild it") from None
        table = cls.from_json(text, f"latency table {p}")
        table.check(space_fingerprint=space_fingerprint, target=target, source=f"latency table {p}")
        return table

    def ident(self) -> str:
        """Short hash naming this measurement (space, target, machine, date)."""
        m = self.meta
        blob = json.dumps([m.get("space"), m.get("target"), m.get("cpu"), m.get("gpu"),
                           m.get("runtime_version"), m.get("date"), len(self.entries)],
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def summary(self) -> str:
        m = self.meta
        return (f"{len(self)} ops of space {m['space'].get('name')} ({m['space'].get('fingerprint')}) "
                f"on {_target_text(m['target'])}, {m.get('runtime')} {m.get('runtime_version')}, "
                f"overhead {self.overhead_ms * 1e3:.1f} us, built {m.get('date')} in "
                f"{m.get('build_s', 0):.0f} s")


def _family_lookup(fam: dict[int, dict[bool, dict[float, list[float]]]],
                   sig: OpSignature) -> tuple[float, str]:
    """Interpolate ``sig`` in its family: in channels among entries of the same alignment (all
    entries if none share it); sums also in their number of inputs, linearly between the
    nearest measured input counts (each first interpolated in channels)."""
    x = _channels(sig)

    def in_channels(by_align: dict[bool, dict[float, list[float]]]) -> tuple[float, str]:
        pts = by_align.get(_aligned(sig))
        if not pts:
            pts = {}
            for d in by_align.values():
                for c, v in d.items():
                    pts.setdefault(c, []).extend(v)
        cs = sorted(pts)
        return _interpolate(cs, [float(np.mean(pts[c])) for c in cs], x)

    if sig.type not in SUM_TYPES:
        return in_channels(fam[0])
    n = sig.mid
    if n in fam:
        return in_channels(fam[n])
    ns = sorted(fam)
    vals = [in_channels(fam[m])[0] for m in ns]
    v, how = _interpolate([float(m) for m in ns], vals, float(n), clamp=False)
    return max(v, 0.0), how


def _interpolate(xs: list[float], values: list[float], x: float, *,
                 clamp: bool = True) -> tuple[float, str]:
    """Piecewise linear through (xs, values); outside, linear from the two nearest points,
    clamped (``clamp``) between proportional scaling and the nearest value."""
    i = bisect_left(xs, x)
    if i < len(xs) and xs[i] == x:
        return values[i], "interpolated"
    if 0 < i < len(xs):  # bracketed
        x0, x1, v0, v1 = xs[i - 1], xs[i], values[i - 1], values[i]
        return v0 + (v1 - v0) * (x - x0) / (x1 - x0), "interpolated"
    j = 0 if i == 0 else len(xs) - 1
    xj, vj = xs[j], values[j]
    prop = vj * x / xj if xj > 0 else vj
    if len(xs) == 1:
        return max(prop, 0.0), "extrapolated"
    k = 1 if i == 0 else len(xs) - 2
    xk, vk = xs[k], values[k]
    lin = vj + (vj - vk) * (x - xj) / (xj - xk)
    if not clamp:
        return float(lin), "extrapolated"
    lo, hi = sorted((prop, vj))
    return float(min(max(lin, lo), hi)), "extrapolated"


def _finite_nonneg(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def _target_text(t: dict[str, Any]) -> str:
    return (f"{t.get('runtime')}:{t.get('device')}:{t.get('precision')} batch {t.get('batch')} "
            f"threads {t.get('threads')}")


def _atomic_write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# --------------------------------------------------------------------------------------------
# building a table


def machine_info(target: Target) -> dict[str, Any]:
    from .runtime import cpu_name

    info = {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "runtime": target.runtime,
            "runtime_version": runtime_version(target.runtime), "torch": torch.__version__}
    if target.device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _collect_cached(method, supernet: nn.Module, space: dict[str, Any], grid: WidthGrid,
                    progress: Progress | None) -> dict[str, OpSignature]:
    """``collect_signatures``, cached per (space, grid): they do not depend on the target, and
    width scaling every candidate at every grid point takes a while (~1-2 s per scale_width)."""
    ident = {"fingerprint": space.get("fingerprint"), "grid": grid.ident(), "format": VERSION,
             "nas2deploy": _dist_version("nas2deploy"), "torch_pruning": _dist_version("torch-pruning")}
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
        _atomic_write(path, json.dumps({"ident": ident, "signatures": [sigs[k].to_dict()
                                                                      for k in sorted(sigs)]}))
    except OSError:
        pass  # a read-only cache only costs time
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
    archs = method.candidate_networks(supernet)
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
    bar = _bar(progress, len(keys), f"measure ops ({target.runtime})")
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
        "date": _now(),
        "build_s": round(time.perf_counter() - t_start, 2),
        "collect_s": round(collect_s, 2),
        "load": {"loadavg_1m_before": load_before, "loadavg_1m_after": _loadavg(),
                 "median_round_spread": round(float(np.median(spreads)), 4),
                 "note": "loadavg above the core count means other work shared the CPU and the "
                         "figures are noisy: rebuild on a quiet machine (rebuild=True)"},
        "nas2deploy": _dist_version("nas2deploy"),
    }
    return LatencyTable(entries, meta)


def _dist_version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


# --------------------------------------------------------------------------------------------
# cache


def cache_root() -> Path:
    """``$NAS2DEPLOY_CACHE`` if set, else ``$XDG_CACHE_HOME/nas2deploy`` or ``~/.cache/nas2deploy``;
    tables go in its ``luts`` folder."""
    env = os.environ.get("NAS2DEPLOY_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "nas2deploy"


def table_cache_path(space: dict[str, Any], target: Target, *, input_size: int,
                     grid: "WidthGrid | Sequence[float] | str" = "dense",
                     fast_export: bool = True) -> Path:
    """Where the table of (space, target, this machine) is cached."""
    info = machine_info(target)
    ident = {"format": VERSION, "fingerprint": space.get("fingerprint"), "target": str(target),
             "batch": target.batch, "threads": target.threads, "cpu": info["cpu"],
             "gpu": info.get("gpu"), "runtime_version": info["runtime_version"],
             "input_size": int(input_size), "grid": as_grid(grid).ident(),
             "fast_export": bool(fast_export)}
    h = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
    name = (f"{space.get('name', 'space')}-{space.get('fingerprint')}-{target.runtime}-"
            f"{target.device}-{target.precision}-b{target.batch}-t{target.threads}-{h}.json")
    return cache_root() / "luts" / name


def get_or_build_table(method, supernet: nn.Module, target: Target, *, input_size: int,
                       progress: Progress | None = None, rebuild: bool = False,
                       grid: "WidthGrid | Sequence[float] | str" = "dense",
                       protocol: TableProtocol = TableProtocol(), fast_export: bool = True,
                       log: Callable[[str], None] = lambda m: None) -> LatencyTable:
    """The cached table of (space, target, machine); measured and cached on first use.

    A cached file that is corrupt is measured again (it is only a cache); one that belongs to
    another space or target cannot be found here, since both are in its name.
    """
    space = method.space(supernet)
    path = table_cache_path(space, target, input_size=input_size, grid=grid,
                            fast_export=fast_export)
    if path.exists() and not rebuild:
        try:
            table = LatencyTable.load(path, space_fingerprint=space.get("fingerprint"),
                                      target=target)
            log(f"latency table from cache: {path}")
            return table
        except UsageError as exc:
            log(f"cached latency table unusable ({exc}); measuring it again")
    log(f"measuring a latency table for {space.get('name')} on {target} (cached at {path})")
    table = build_table(method, supernet, target, input_size=input_size, grid=grid,
                        protocol=protocol, fast_export=fast_export, progress=progress)
    try:
        table.save(path)
    except UsageError as exc:  # an unwritable cache costs time on the next run, nothing else
        log(f"latency table not cached: {exc}")
    return table


# --------------------------------------------------------------------------------------------
# random subnets


def sample_architecture(method, supernet: nn.Module, rng: random.Random):
    """``method.sample(supernet, rng)``; for a method without one, random architecture
    parameters (each zeroed with a random probability, else uniform in (0.2, 1)) fed to
    ``method.decide`` — a stand-in until every method samples for itself."""
    try:
        return method.sample(supernet, rng)
    except NotImplementedError:
        pass
    params_fn = getattr(supernet, "arch_parameters", None)
    if params_fn is None:
        raise UsageError(f"method {method.name!r} cannot sample random subnets (no sample() and "
                         f"no arch_parameters())")
    params = list(params_fn())
    saved = [p.detach().clone() for p in params]
    keep = rng.uniform(0.15, 0.9)
    gen = torch.Generator().manual_seed(rng.getrandbits(31))
    try:
        with torch.no_grad():
            for p in params:
                vals = 0.2 + 0.8 * torch.rand(p.shape, generator=gen)
                mask = torch.rand(p.shape, generator=gen) < keep
                p.copy_(torch.where(mask, vals, torch.zeros_like(vals)))
        return method.decide(supernet)
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)


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
    """``n`` random subnets: ``method.sample`` (see ``sample_architecture``), then
    ``scale_width`` at a multiplier uniform in ``widths``."""
    from .materialize import materialize, scale_width

    rng = random.Random(seed)
    out = []
    bar = _bar(progress, n, desc)
    try:
        for _ in range(n):
            arch = sample_architecture(method, supernet, rng)
            w = round(rng.uniform(*widths), 3)
            torch.manual_seed(rng.getrandbits(31))
            out.append(Subnet(arch, w, scale_width(materialize(arch), w)))
            bar.update(1)
    finally:
        bar.close()
    return out


# --------------------------------------------------------------------------------------------
# models


class LUTModel(LatencyModel):
    """Latency ≈ the table's per-call overhead + Σ per-op entries (interpolated where needed)."""

    name = "lut"

    def __init__(self, table: LatencyTable):
        self.table = table
        self.scale = 1.0  # closed-loop correction (the pipeline multiplies it in)

    def predict(self, spec: dict[str, Any]) -> float:
        return self.scale * (self.table.overhead_ms + self.table.network_sum(spec)[0])

    def op_cost(self, sig) -> float:
        return self.scale * self.table.ms(sig)

    @property
    def base_ms(self) -> float:
        return self.scale * self.table.overhead_ms

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "table": _table_brief(self.table), "scale": self.scale}


FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "a+b*lut": ("one", "lut"),
    "a+b*lut+c*ops": ("one", "lut", "ops"),
    # the largest nets run slower per LUT-ms than mid-sized ones (onnxruntime: -9% bias above
    # 0.4 ms with a linear fit on DSO-NAS): a quadratic term takes the curvature
    "a+b*lut+q*lut^2+c*ops": ("one", "lut", "lut2", "ops"),
}


def _features(table: LatencyTable, spec: dict[str, Any]) -> dict[str, float]:
    total, n, _ = table.network_sum(spec)
    lut_ms = total + table.overhead_ms
    return {"one": 1.0, "lut": lut_ms, "lut2": lut_ms * lut_ms, "ops": float(n)}


def _fit(rows: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares on relative error: minimise Σ ((x·β − y) / y)²."""
    w = 1.0 / y
    beta, *_ = np.linalg.lstsq(rows * w[:, None], y * w, rcond=None)
    return beta


class CalibratedLUT(LatencyModel):
    """Latency ≈ a + b·L [+ q·L²] [+ c·ops] with L the plain LUT estimate, fitted to end-to-end
    measurements of sampled subnets by least squares on relative error. Of the forms in
    ``FEATURE_SETS`` the one with the lowest leave-one-out error on the calibration nets is
    kept. Outside the range of L the calibration saw, the curve continues along its tangent
    (a quadratic must not turn over). ``op_cost``/``base_ms`` are the tangent at the median
    calibration net, so gradient methods get additive per-op costs."""

    name = "calibrated"

    def __init__(self, table: LatencyTable, fit: dict[str, Any]):
        self.table = table
        self.fit = fit
        self.coef = {k: float(v) for k, v in fit["coefficients"].items()}
        self.scale = 1.0

    @classmethod
    def from_measurements(cls, table: LatencyTable, specs: Sequence[dict[str, Any]],
                          measured_ms: Sequence[float], *,
                          feature_sets: Iterable[str] = tuple(FEATURE_SETS),
                          info: dict[str, Any] | None = None) -> "CalibratedLUT":
        y = np.asarray(measured_ms, dtype=float)
        if len(specs) != len(y):
            raise UsageError(f"calibration got {len(specs)} subnets but {len(y)} measurements")
        if len(y) < 5:
            raise UsageError(f"calibration needs at least 5 measured subnets, got {len(y)}")
        if not np.all(np.isfinite(y)) or np.any(y <= 0):
            raise UsageError("calibration measurements must be finite and > 0")
        feats = [_features(table, s) for s in specs]
        scored = []  # (parameters, name, leave-one-out MAPE, X), simplest first
        for name in sorted(feature_sets, key=lambda k: len(FEATURE_SETS[k])):
            cols = FEATURE_SETS[name]
            # 5 nets per parameter beyond the intercept (a+b·L from 5 nets), so that a richer
            # form is only tried where the data can support it
            if len(y) < max(4, 5 * (len(cols) - 1)):
                continue
            X = np.array([[f[c] for c in cols] for f in feats])
            loo = []
            for i in range(len(y)):
                keep = np.arange(len(y)) != i
                beta = _fit(X[keep], y[keep])
                loo.append(float(X[i] @ beta / y[i] - 1))
            scored.append((len(cols), name, float(np.mean(np.abs(loo))), X))
        if not scored:
            raise UsageError(f"calibration needs at least 5 measured subnets, got {len(y)}")
        # the simplest form whose leave-one-out error is within 5% of the best one's
        best_loo = min(sc[2] for sc in scored)
        _, name, loo_mape, X = next(sc for sc in scored if sc[2] <= best_loo * 1.05 + 1e-12)
        cols = FEATURE_SETS[name]
        beta = _fit(X, y)
        pred = X @ beta
        resid = pred / y - 1
        raw = np.array([f["lut"] for f in feats])
        fit = {
            "form": name, "coefficients": {c: float(b) for c, b in zip(cols, beta)},
            "lut_range_ms": [float(raw.min()), float(raw.max())],
            "lut_ref_ms": float(np.median(raw)),
            "n": int(len(y)),
            "residuals_pct": [round(float(r) * 100, 3) for r in resid],
            "mape_pct": round(float(np.mean(np.abs(resid))) * 100, 3),
            "max_abs_pct": round(float(np.max(np.abs(resid))) * 100, 3),
            "loo_mape_pct": round(loo_mape * 100, 3),
            "plain_lut_mape_pct": round(float(np.mean(np.abs(raw / y - 1))) * 100, 3),
            "measured_ms": [round(float(v), 6) for v in y],
            "lut_ms": [round(float(v), 6) for v in raw],
            "ops": [int(f["ops"]) for f in feats],
            **(info or {}),
        }
        return cls(table, fit)

    @classmethod
    def calibrate(cls, table: LatencyTable, method, supernet: nn.Module, target: Target, *,
                  input_size: int, samples: int = 30, seed: int = 1234,
                  widths: tuple[float, float] = (0.25, 1.0), progress: Progress | None = None,
                  measure: Callable[[list[nn.Module]], list[float]] | None = None) -> "CalibratedLUT":
        """Sample ``samples`` subnets (``sample_subnets``), measure them end to end on ``target``
        (``measure_networks`` unless ``measure`` is given: nets -> p50 ms) and fit."""
        subs = sample_subnets(method, supernet, samples, seed=seed, widths=widths,
                              progress=progress, desc="calibration subnets")
        nets = [s.net for s in subs]
        if measure is None:
            ch = int(subs[0].spec["input"]["channels"])
            shape = (target.batch, ch, input_size, input_size)
            timings = measure_networks(nets, target, shape, progress=progress)
            ms = [t.p50_ms for t in timings]
        else:
            ms = list(measure(nets))
        return cls.from_measurements(
            table, [s.spec for s in subs], ms,
            info={"seed": seed, "widths": list(widths), "target": str(target),
                  "measured_by": "measure_networks (registered exporters, interleaved p50)"
                  if measure is None else "custom", "date": _now()})

    def _curve(self, lut_ms: float) -> tuple[float, float]:
        """(a + b·L + q·L², its slope) with L clamped to the calibrated range, continued
        linearly beyond it."""
        c = self.coef
        a, b, q = c.get("one", 0.0), c.get("lut", 0.0), c.get("lut2", 0.0)
        lo, hi = self.fit.get("lut_range_ms", (lut_ms, lut_ms))
        at = min(max(lut_ms, lo), hi)
        slope = b + 2 * q * at
        return a + b * at + q * at * at + slope * (lut_ms - at), slope

    def predict(self, spec: dict[str, Any]) -> float:
        f = _features(self.table, spec)
        value = self._curve(f["lut"])[0] + self.coef.get("ops", 0.0) * f["ops"]
        return self.scale * max(value, 0.0)

    def op_cost(self, sig) -> float:
        """slope·entry + c at the median calibration net, floored at 0 (a fit with a negative
        per-op term, e.g. OpenVINO fusing cheap ops away, would otherwise give some ops a
        negative cost). For a linear form without flooring, base_ms + Σ op_cost == predict."""
        ref = self.fit.get("lut_ref_ms", 0.0)
        slope = self._curve(ref)[1]
        ms, how = self.table.lookup(sig)
        c = self.coef.get("ops", 0.0) if how != "free" else 0.0
        return self.scale * max(slope * ms + c, 0.0)

    @property
    def base_ms(self) -> float:
        ref = self.fit.get("lut_ref_ms", 0.0)
        value, slope = self._curve(ref)
        return self.scale * (value - slope * ref + slope * self.table.overhead_ms)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "table": _table_brief(self.table), "fit": self.fit,
                "scale": self.scale}

    def to_dict(self) -> dict[str, Any]:
        return {"format": CALIBRATION_FORMAT, "version": VERSION,
                "table": {"space": self.table.meta.get("space"), "target": self.table.meta.get("target"),
                          "date": self.table.meta.get("date")},
                "fit": self.fit}

    @classmethod
    def from_dict(cls, table: LatencyTable, d: Any, source: str = "calibration") -> "CalibratedLUT":
        ok = (isinstance(d, dict) and d.get("format") == CALIBRATION_FORMAT
              and d.get("version") == VERSION and isinstance(d.get("fit"), dict)
              and isinstance(d["fit"].get("coefficients"), dict)
              and all(k in ("one", "lut", "lut2", "ops") and isinstance(v, (int, float))
                      and math.isfinite(v)
                      for k, v in d["fit"]["coefficients"].items()))
        if not ok:
            raise UsageError(f"{source} is not a valid nas2deploy latency calibration")
        if (d.get("table") or {}).get("date") != table.meta.get("date") \
                or (d.get("table") or {}).get("space") != table.meta.get("space"):
            raise UsageError(f"{source} was fitted to another latency table")
        return cls(table, d["fit"])


def _table_brief(table: LatencyTable) -> dict[str, Any]:
    m = table.meta
    return {"ops": len(table), "space": m.get("space"), "target": m.get("target"),
            "runtime_version": m.get("runtime_version"), "cpu": m.get("cpu"),
            "overhead_ms": table.overhead_ms, "date": m.get("date"), "grid": m.get("grid"),
            "load": m.get("load")}


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def get_or_calibrate(table: LatencyTable, method, supernet: nn.Module, target: Target, *,
                     input_size: int, samples: int = 30, seed: int = 1234,
                     min_width: float = 0.25, progress: Progress | None = None,
                     rebuild: bool = False,
                     log: Callable[[str], None] = lambda m: None) -> CalibratedLUT:
    """``CalibratedLUT.calibrate``, cached next to the table (keyed by the table and options)."""
    path = cache_root() / "luts" / (f"calibration-{table.ident()}-n{samples}-s{seed}"
                                    f"-w{min_width:g}.json")
    if path.exists() and not rebuild:
        try:
            text = path.read_text(encoding="utf-8")
            model = CalibratedLUT.from_dict(table, json.loads(text), f"calibration {path}")
            log(f"latency calibration from cache: {path}")
            return model
        except (OSError, ValueError, UsageError) as exc:
            log(f"cached calibration unusable ({exc}); measuring again")
    model = CalibratedLUT.calibrate(table, method, supernet, target, input_size=input_size,
                                    samples=samples, seed=seed, widths=(min_width, 1.0),
                                    progress=progress)
    try:
        _atomic_write(path, json.dumps(model.to_dict(), indent=1))
    except OSError as exc:
        log(f"latency calibration not cached: {exc}")
    return model


# --------------------------------------------------------------------------------------------
# entry points for the pipeline and the CLI


def make_latency_model(kind: str, *, method, supernet: nn.Module, target: Target, input_size: int,
                       anchors: Sequence[tuple[int, float]] | None = None,
                       min_width: float = 0.25, progress: Progress | None = None,
                       rebuild: bool = False, calibration_samples: int = 30, seed: int = 1234,
                       table_file: str | Path | None = None,
                       log: Callable[[str], None] = lambda m: None) -> LatencyModel:
    """The latency model the pipeline steers search and width with.

    ``flops``: ``FlopsProxy(anchors)``; ``anchors`` are (MACs, measured ms) pairs, e.g. of the
    largest and smallest subnets the pipeline already measured (required for this kind).
    ``lut``: ``LUTModel`` on the cached (or newly measured) table of this space and target.
    ``calibrated``: ``CalibratedLUT`` on that table, fitted to ``calibration_samples`` sampled
    subnets measured end to end (cached too).
    ``table_file``: use this table (e.g. measured on the device with ``nas2deploy lut build``)
    instead of the cache; it must match the space's fingerprint and the target.
    """
    if kind not in MODEL_KINDS:
        raise UsageError(f"unknown latency model {kind!r}; choose one of {', '.join(MODEL_KINDS)}")
    if kind == "flops":
        if not anchors or len(anchors) < 2:
            raise UsageError("the flops latency model needs two or more (MACs, ms) anchors")
        return FlopsProxy(list(anchors))
    if table_file is not None:
        table = LatencyTable.load(table_file, space_fingerprint=method.space(supernet).get(
            "fingerprint"), target=target)
        log(f"latency table {table_file}: {table.summary()}")
    else:
        table = get_or_build_table(method, supernet, target, input_size=input_size,
                                   grid=WidthGrid(min_width=min_width), progress=progress,
                                   rebuild=rebuild, log=log)
    if kind == "lut":
        return LUTModel(table)
    return get_or_calibrate(table, method, supernet, target, input_size=input_size,
                            samples=calibration_samples, seed=seed, min_width=min_width,
                            progress=progress, rebuild=rebuild, log=log)


def build_table_cli(space: str, target: str, input_size: int, out: Path | None,
                    progress: Progress | None = None, *, input_channels: int = 1,
                    num_classes: int = 10, method_options: dict[str, Any] | None = None,
                    threads: int = 1, batch: int = 1, rebuild: bool = True,
                    grid: "WidthGrid | Sequence[float] | str" = "dense",
                    log: Callable[[str], None] = lambda m: None) -> Path:
    """``nas2deploy lut build``: measure the table of method ``space`` (default options, or
    ``method_options``) for ``target`` at ``input_size``; write it to the cache (and to ``out``
    if given). Returns the path written (``out``, else the cache file)."""
    from .method import TaskSpec

    if not isinstance(input_size, int) or not 8 <= input_size <= 512:
        raise UsageError(f"--input-size must be in 8..512, not {input_size}")
    tgt = Target.parse(target, batch=batch, threads=threads)
    method = registry.methods.get(space)(method_options or {})
    supernet = method.build(TaskSpec(input_channels, input_size, num_classes))
    table = get_or_build_table(method, supernet, tgt, input_size=input_size, progress=progress,
                               rebuild=rebuild, grid=grid, log=log)
    if out is None:
        return table_cache_path(method.space(supernet), tgt, input_size=input_size, grid=grid)
    return table.save(Path(out))


# --------------------------------------------------------------------------------------------


class _Quiet:
    def update(self, n=1): ...
    def set_postfix(self, **kw): ...
    def close(self): ...


def _bar(progress: Progress | None, total: int, desc: str):
    return progress(total=total, desc=desc) if progress is not None else _Quiet()
