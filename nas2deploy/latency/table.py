"""The latency table of one (search space, target, machine), and the plain estimate on it.

Entries are keyed by ``OpSignature.key()``, never by position (the DenseNAS authors' code keeps a
positional table that does not match its own space, and reads it silently), and stored as JSON
with the metadata needed to know what they mean (runtime and version, device, CPU/GPU, threads,
batch, precision, protocol, date, width grid, interpolation, space fingerprint). An entry's
``ms`` is what the op adds inside a network (see ``collect.build_table``); a network's plain
estimate (``LUTModel``) is ``overhead_ms + Σ ms`` over its nodes.

Interpolation (only where an exact entry is missing): within the op's **family** (same type,
h, w, kernel, stride, SE presence, activation), linearly in its channels (c_in + c_out, plus
mid + se for MBConv) between the two nearest measured counts of the same alignment (all
divisible by 4, or not; both if one kind is missing); outside the measured range, linearly from
the two nearest, clamped between proportional and constant. Sums are interpolated in channels at
each measured input count, then linearly in the input count. A signature with no family in the
table is an error (the table does not cover the space).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from bisect import bisect_left
from pathlib import Path
from typing import Any

import numpy as np

from ..env import machine_info, write_atomic
from ..errors import UsageError
from ..netspec import OpSignature
from ..target import Target
from .grid import FREE_TYPES, SUM_TYPES, network_signatures
from .model import LatencyModel

FORMAT = "nas2deploy.latency_table"
VERSION = 1


INTERPOLATION = (
    "exact key; else within the family (type, h, w, kernel, stride, se>0, act) linear in channels "
    "(c_in+c_out, +mid+se for mbconv) between the nearest measured counts of the same alignment "
    "(all channel counts divisible by 4 or not; both kinds if one is missing); sums in channels "
    "at each measured input count, then linear in the input count; outside the measured range "
    "linear from the two nearest points, clamped between proportional and constant")


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
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, self.to_json())
            return path
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
        return {"name": self.name, "table": table_brief(self.table), "scale": self.scale}


def table_brief(table: LatencyTable) -> dict[str, Any]:
    m = table.meta
    return {"ops": len(table), "space": m.get("space"), "target": m.get("target"),
            "runtime_version": m.get("runtime_version"), "cpu": m.get("cpu"),
            "overhead_ms": table.overhead_ms, "date": m.get("date"), "grid": m.get("grid"),
            "load": m.get("load")}
