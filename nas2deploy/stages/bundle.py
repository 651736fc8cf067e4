"""Bundle: the kept attempt's files move up into the bundle folder, then the architecture, the
weights, the report and the manifest (every figure the run measured, and how) are written."""

from __future__ import annotations

import datetime as dt
import shutil
import time
from pathlib import Path
from typing import Any

from .. import __version__
from ..bundle import FORMAT, FORMAT_VERSION, MANIFEST, save_weights, sha256
from ..counting import count_macs, count_params
from ..env import environment, write_json_atomic
from ..records import Budget
from ..runtime import artifact_loader, exporter_for_runtime
from ..train import accuracy
from .attempts import Exported
from .export import runtime_top1 as measure_runtime_top1
from .search import SearchResult
from .size import Aim, Sizing
from .state import RunState


def write_bundle(run: RunState, budget: Budget, aim: Aim, searched: SearchResult, sizing: Sizing,
                 kept: Exported, tmp: Path, history_retrain: list[dict[str, Any]],
                 t_all: float) -> dict[str, Any]:
    """Writes the bundle into ``tmp`` (the staged folder the caller commits); the manifest."""
    cfg, ds, target, method, log, rounds = (run.cfg, run.ds, run.target, run.method, run.log,
                                            sizing.rounds)
    rec, subnet, xctx = kept.record, kept.subnet, kept.xctx
    attempt, width, resized = rec.attempt, rec.width, rec.resized
    arch_final, verification = rec.architecture, rec.verification
    verdict = rec.verdict
    final = verdict.measured if verdict is not None else None
    within = verdict.within if verdict is not None else None
    verdict_budget = verdict.budget_ms if verdict is not None else budget.budget_ms
    budget_source = budget.source
    # the bundle is the attempt kept: its folder's files move up into the bundle
    for child in list(xctx.bundle_dir.iterdir()):
        child.rename(tmp / child.name)
    xctx.bundle_dir = tmp
    for extra in tmp.glob(".attempt-*"):
        shutil.rmtree(extra)
    if len([r for r in rounds if r["stage"].startswith("final")]) > 1:
        log(f"keeping attempt {attempt} (width x{width:g})")
    for r in rounds:
        if r["stage"].startswith("final"):
            r["kept"] = r["stage"].endswith(f"attempt {attempt})")
    top1 = accuracy(subnet, run.data.ordered("test", device="cpu"))
    # fp16/int8 verification already ran the target runtime over the whole test split
    checked = verification["parity"].get(exporter_for_runtime(target.runtime), {})
    runtime_top1 = checked.get("top1")
    if runtime_top1 is None and final is not None:
        runtime_top1 = measure_runtime_top1(
            artifact_loader(subnet, target, tmp, xctx.artifacts)(), run.data, target.batch)
    arch_final.metadata["measured_p50_ms"] = final["p50_ms"] if final else None
    if run.remote is None:
        run.side.close()
        if cfg.latency_ms is None:
            budget_source = (f"{cfg.latency_fraction:g} x largest subnet's p50 timed beside the "
                             f"bundle ({final['largest_p50_ms']:.4f} ms; {budget.largest_ms:.4f} "
                             f"ms measured alone when the search started)")

    files = {"architecture": "architecture.json", "weights": "model.safetensors",
             "report": "report.md", "manifest": MANIFEST}
    arch_final.save(tmp / files["architecture"])
    save_weights(subnet, tmp / files["weights"])
    for art in xctx.artifacts.values():
        for key, rel in art.files.items():
            files[f"{art.format}_{key}" if key != "model" else art.format] = rel
    run.timings["total_s"] = time.perf_counter() - t_all

    ctx = searched.ctx
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "nas2deploy_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "method": {"name": method.name, "paper": method.paper,
                   "config": method.config.to_dict(), "space": run.space.description},
        "dataset": ds.describe(),
        "preprocessing": {"layout": "NCHW", "input_shape": list(run.shape), "mean": ds.mean,
                          "std": ds.std, "note": "x = (pixel/255 - mean) / std per channel"},
        "target": target.to_dict(),
        "latency": {
            "budget_ms": verdict_budget if final else budget.budget_ms,
            "budget_source": budget_source,
            "budget_ms_at_start": budget.budget_ms,
            "reference": {"largest_p50_ms": budget.largest_ms,
                          "smallest_p50_ms": budget.smallest_ms,
                          "how": budget.how, "min_width": cfg.min_width},
            "latency_model": {**run.lat_model.describe(), "kind": cfg.latency_model,
                              "closed_loop_correction": aim.correction},
            "predicted_ms": arch_final.metadata["predicted_ms"],
            "measured": final, "within_budget": within,
            "ratio_to_budget": final["p50_ms"] / verdict_budget if final else None,
            "rounds": rounds,
            "verdict": ("measured on the target here" if final else
                        f"not measured: {run.remote}; run `nas2deploy measure BUNDLE` on the "
                        f"device (exit 3 there if over budget)"),
            **({"table": cfg.lut} if cfg.lut else {}),
        },
        "parity": verification["parity"],
        "precision": verification["precision"],
        "accuracy": {"top1": top1, "split": "test", "samples": run.data.size("test"),
                     "runtime_top1": runtime_top1, "runtime": target.runtime},
        "model": {"params": count_params(subnet), "macs": count_macs(subnet, run.example),
                  "width_multiplier": width, "nodes": len(arch_final.network["nodes"]),
                  "prune_further_level": sizing.level, "resized": resized},
        "search": {"epochs": searched.epochs, "levers": searched.decision.levers,
                   # what the search decided, before the closed loop re-sized or thinned it
                   "decided": searched.decision.arch.to_dict(),
                   "history": ctx.history,
                   "measurements": [{k: v for k, v in m.items() if k != "spec"}
                                    for m in ctx.measurements]},
        "retrain": {"from": cfg.retrain_from, "epochs": cfg.retrain_epochs,
                    "history": history_retrain},
        "artifacts": {name: {"files": a.files, "info": a.info}
                      for name, a in xctx.artifacts.items()},
        "files": files,
        "run_config": cfg.to_dict(),
        "seed": cfg.seed,
        "timings": run.timings,
        "compute": {**run.compute.describe(), "workers": cfg.workers,
                    "streamed": run.data.is_streamed,
                    "images_per_s": {**run.throughput, **_retrain_rate(history_retrain)}},
        "distributed": {**run.world.describe(ctx.batch_size),
                        **({"ranks_agree_on_decision": True} if run.world.distributed else {})},
        "environment": environment(),
    }
    if run.rundir is not None and run.rundir.resumed:
        manifest["resumed"] = {"run_dir": str(run.rundir.path),
                               "measurements_replayed": run.rundir.replayed,
                               "replay_diverged": run.rundir.diverged}
    from ..report import write_report  # matplotlib is only needed here

    figures = write_report(tmp, manifest, arch_final)
    files.update(figures)
    manifest["hashes"] = {rel: sha256(tmp / rel) for key, rel in sorted(files.items())
                          if key != "manifest"}
    write_json_atomic(tmp / MANIFEST, manifest)
    return manifest


def _retrain_rate(history: list[dict[str, Any]]) -> dict[str, float]:
    rates = [r["images_per_s"] for r in history if "images_per_s" in r]
    return {"retrain_images_per_s": sum(rates) / len(rates)} if rates else {}
