"""Shared by the benchmark scripts: the machine line every result is quoted with, method specs,
pipeline runs as JSON rows, the JSON-lines journal that lets a long benchmark resume, and the
small statistics the summaries print."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import nas2deploy.env as nd_env
from nas2deploy.env import cpu_name, cpuinfo, environment

# What decides the int8 kernels a CPU gets: without a VNNI flag, u8 x s8 pairs are summed with
# 16-bit saturation (VPMADDUBSW); AVX-512 doubles onnxruntime's channel block (8 -> 16).
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")

# The latency window a run should land in, as a share of its budget.
LO, HI = 0.90, 1.00

# Every method the project registers, in the order the summaries list them.
ALL_METHODS = ("dsonas", "densenas", "tfnas", "enas", "nasrl", "mnasnet", "random")


def machine_line() -> str:
    env = environment()
    isa = " ".join(k for k, v in cpu_isa().items() if v) or "none of " + "/".join(ISA_FLAGS)
    return (f"# {dt.date.today().isoformat()} | {env['cpu']} x{env['cpu_count']} | isa: {isa} | "
            f"torch {env['torch']} | onnxruntime {env['onnxruntime']} | openvino {env['openvino']}")


def cpu_isa() -> dict[str, bool]:
    """Which of ``ISA_FLAGS`` the CPU reports (all False where /proc/cpuinfo is missing)."""
    return nd_env.cpu_isa(ISA_FLAGS)


def isa_line() -> str:
    """CPU model, vendor family/model (VMs often hide the marketing name) and the int8 ISA."""
    info, isa = cpuinfo(), cpu_isa()
    vnni = isa["avx512_vnni"] or isa["avx_vnni"] or isa["amx_int8"]
    ident = ", ".join(f"{k} {info[k]}" for k in ("vendor_id", "cpu family", "model")
                      if k in info)
    return (f"# cpu: {cpu_name()}" + (f" ({ident})" if ident else "") + " | "
            + " ".join(f"{k}={'yes' if v else 'no'}" for k, v in isa.items())
            + f" | int8 dot product: {'VNNI' if vnni else 'no VNNI (16-bit saturating pairs)'}")


def stop_cleanly_on_sigterm() -> None:
    """SIGTERM (and SIGHUP) end the benchmark as Ctrl-C does: the run in progress unwinds and
    removes its scratch folders; the journal keeps every finished run."""
    def stop(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)


def say(msg: str) -> None:
    """A progress line on stderr (stdout holds only the table and the figure)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- method specs ---------------------------------------------------------------------------

def parse_method_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``name`` or ``name:space`` -> (method name, method options): ``random:tfnas`` searches
    TF-NAS's space at random, ``enas:micro`` is ENAS in its micro space; both set
    ``{"space": ...}``."""
    spec = spec.strip()
    name, sep, space = spec.partition(":")
    if not name or (sep and not space) or ":" in space:
        raise ValueError(f"bad method spec {spec!r}; use NAME or NAME:SPACE (e.g. random:tfnas)")
    return name, ({"space": space} if sep else {})


def parse_list(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def random_counterpart(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The ``random`` method's options that search the same space as ``name`` with ``options``."""
    return {"space": name, "space_options": dict(options)}


def unloadable(names: Iterable[str]) -> dict[str, str]:
    """{method name: why it cannot be used} for those of ``names`` not registered or failing to
    load (empty when all can run)."""
    from nas2deploy import registry

    entries = {e.name: e for e in registry.methods.entries()}
    why = {}
    for n in names:
        if n not in entries:
            why[n] = "not registered (no nas2deploy.methods entry point)"
        elif entries[n].obj is None:
            why[n] = f"registered but fails to load ({entries[n].error})"
    return why


def default_search_epochs(name: str) -> int | None:
    from nas2deploy import registry

    try:
        return int(registry.methods.get(name).default_search_epochs)
    except Exception:  # a method whose class computes it per instance (random)
        return None


# --- pipeline runs as rows --------------------------------------------------------------------

def run_key(**identity: Any) -> str:
    """A run's identity as one canonical string: the journal's key for ``--resume``."""
    return json.dumps(identity, sort_keys=True, separators=(",", ":"))


def manifest_row(m: dict[str, Any]) -> dict[str, Any]:
    """What the benchmarks read from a bundle's manifest."""
    lat = m["latency"]
    return {"top1": m["accuracy"]["top1"], "runtime_top1": m["accuracy"].get("runtime_top1"),
            "budget_ms": lat["budget_ms"], "p50_ms": lat["measured"]["p50_ms"],
            "ratio": lat["ratio_to_budget"], "within": lat["within_budget"],
            "largest_ms": lat["reference"]["largest_p50_ms"],
            "width": m["model"]["width_multiplier"], "macs": m["model"]["macs"],
            "rounds": len(lat["rounds"])}


def pipeline_config(method: str, options: dict[str, Any], *, target: str, fraction: float,
                    seed: int, search_epochs: int | None, retrain_epochs: int, input_size: int,
                    dataset: str, out: str | Path, device: str = "auto"):
    from nas2deploy.config import RunConfig

    return RunConfig(method=method, method_options=dict(options), target=target,
                     latency_fraction=fraction, seed=seed, search_epochs=search_epochs,
                     retrain_epochs=retrain_epochs, input_size=input_size, dataset=dataset,
                     out=str(out), overwrite=True, export=["onnx"], device=device)


def run_pipeline(cfg, *, keep: Callable[[Path, dict[str, Any]], dict[str, Any]] | None = None,
                 verbose: bool = False) -> dict[str, Any]:
    """One ``search_and_export`` in a scratch folder -> a row: ``manifest_row`` fields and
    ``seconds``, or ``error`` (with ``error_kind`` "usage" for bad input such as a budget below
    the smallest subnet, which a rerun would meet again). ``keep(bundle_dir, manifest)`` runs
    while the bundle still exists; what it returns joins the row."""
    from nas2deploy.errors import Nas2DeployError, UsageError
    from nas2deploy.pipeline import search_and_export

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="n2d-bench-") as tmp:
        cfg.out = str(Path(tmp) / "bundle")
        try:
            res = search_and_export(cfg, log=(lambda m: say("  " + m)) if verbose else
                                    (lambda m: None))
            row = manifest_row(res.manifest)
            if keep is not None:
                row.update(keep(res.out, res.manifest))
        except Nas2DeployError as exc:
            row = {"error": f"{type(exc).__name__}: {exc}",
                   "error_kind": "usage" if isinstance(exc, UsageError) else "run"}
    row["seconds"] = time.perf_counter() - t0
    return row


# --- the journal ------------------------------------------------------------------------------

class Journal:
    """Rows as JSON lines, one per finished run, flushed to disk as each run ends: an interrupted
    benchmark keeps what it finished, and ``--resume`` skips it. A torn last line (killed while
    writing) is ignored."""

    def __init__(self, path: str | Path | None, resume: bool = False):
        self.path = Path(path) if path is not None else None
        self.rows: dict[str, dict[str, Any]] = {}
        if self.path is None:
            return
        if resume and self.path.is_file():
            self.rows = read_rows(self.path)
        elif not resume and self.path.exists() and self.path.stat().st_size > 0:
            raise SystemExit(f"{self.path} exists: pass --resume to continue it, or another --out")

    def done(self, key: str) -> dict[str, Any] | None:
        """The finished row of ``key``; a run that failed for a reason a retry may not meet
        again (not bad input) counts as not done."""
        row = self.rows.get(key)
        if row is None or (row.get("error") and row.get("error_kind") != "usage"):
            return None
        return row

    def add(self, key: str, row: dict[str, Any]) -> None:
        row = {**row, "key": key}
        self.rows[key] = row
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())


def read_rows(path: str | Path) -> dict[str, dict[str, Any]]:
    """{key: row} of a journal; a later row of one key replaces an earlier one (a retried run)."""
    rows: dict[str, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("key"), str):
                rows[row["key"]] = row
    return rows


# --- statistics -------------------------------------------------------------------------------

def mean_sd(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def fmt_mean_sd(xs: list[float]) -> str:
    m, s = mean_sd(xs)
    return "-" if math.isnan(m) else f"{m:.3f}±{s:.3f}"


def fmt_mean(xs: list[float]) -> str:
    return f"{statistics.fmean(xs):.3f}" if xs else "-"


def in_window(ratio: float | None, lo: float = LO, hi: float = HI) -> bool:
    return ratio is not None and lo <= ratio <= hi


def window_share(ratios: list[float | None], lo: float = LO, hi: float = HI) -> tuple[int, int]:
    """(runs within [lo, hi] of the budget, runs)."""
    return sum(in_window(r, lo, hi) for r in ratios), len(ratios)

