"""``nas2deploy measure``: time a bundle's artifact on the machine it runs on."""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

from .bundle import MANIFEST, load_bundle, read_manifest
from .env import cpu_name, utc_now, write_json_atomic
from .errors import BundleError, UsageError
from .exporter import Artifact
from .latency import measure_instances
from .outdir import locked_bundle
from .runtime import artifact_loader, exporter_for_runtime, random_input
from .target import Target, supported_precisions


def measure_bundle(bundle: str | Path, *, target: str | None = None, threads: int | None = None,
                   record: bool = True) -> dict[str, Any]:
    most = 4 * (os.cpu_count() or 1)
    if threads is not None and not 1 <= threads <= most:
        raise UsageError(f"--threads must be in 1..{most} (4 x this machine's CPUs), not "
                         f"{threads}")
    # recording holds the bundle's lock: no run replaces the bundle, and no other update of the
    # manifest is lost, between reading the manifest and writing it back
    with locked_bundle(bundle) if record else nullcontext(Path(bundle)) as root:
        return _measure(root, target, threads, record)


def _measure(root: Path, target: str | None, threads: int | None,
             record: bool) -> dict[str, Any]:
    manifest = read_manifest(root)
    t = manifest["target"]
    try:
        tgt = Target.parse(target or f"{t['runtime']}:{t['device']}:{t['precision']}",
                           batch=int(t["batch"]),
                           threads=int(t["threads"]) if threads is None else threads)
        shape = tuple(manifest["preprocessing"]["input_shape"])
        budget = float(manifest["latency"]["budget_ms"])
        artifacts = {name: Artifact(name, a["files"], a.get("info", {}))
                     for name, a in manifest.get("artifacts", {}).items()}
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{root / MANIFEST} is incomplete ({exc}); re-run search-and-export") from exc
    exporter = exporter_for_runtime(tgt.runtime)
    if target and target.count(":") < 2:  # no precision given: the one the bundle deploys
        built = artifacts[exporter].info.get("precision") if exporter in artifacts else None
        precision = built or (t["precision"] if t["precision"] in
                              supported_precisions(tgt.runtime) else "fp32")
        tgt = replace(tgt, precision=precision)
    model = load_bundle(root) if exporter is None else None
    load = artifact_loader(model, tgt, root, artifacts)
    run = load()  # fails here, before any timing, if the artifact cannot be loaded
    x = random_input((tgt.batch, *shape[1:]))
    rep = measure_instances(load, x, batch=tgt.batch, threads=tgt.threads)
    rec = {"when": utc_now(),
           "target": str(tgt), "threads": tgt.threads, "batch": tgt.batch, "cpu": cpu_name(),
           "p50_ms": rep.p50_ms, "p90_ms": rep.p90_ms, "runs": rep.runs, "protocol": rep.protocol,
           "p50_per_load_ms": rep.instance_p50_ms,
           "budget_ms": budget, "within_budget": rep.p50_ms <= budget}
    if tgt.device == "cuda":
        from .engine import gpu_info

        rec["gpu"] = gpu_info()
    details = getattr(run, "details", None)  # what a runner can say beyond wall-clock time
    if callable(details):
        rec["runtime"] = details(x)
    if record:
        manifest.setdefault("measurements", []).append(rec)
        write_json_atomic(root / MANIFEST, manifest)
    return rec
