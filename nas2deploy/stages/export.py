"""Retrain and export: the sized network is retrained (fine-tuned from inherited weights, or from
scratch), exported into an attempt folder of its own, and every exported runtime verified against
the PyTorch subnet."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__, registry
from ..architecture import Architecture
from ..config import RunConfig
from ..data import Dataset
from ..data.searchdata import Batches
from ..device import on
from ..errors import PrecisionError
from ..exporter import ExportContext, verify_parity
from ..netspec import GraphNet
from ..records import Attempt
from ..rundir import spec_key
from ..runtime import export_chain
from ..target import Target
from ..train import fit, reinitialize
from .size import Aim
from .state import RunState


def retrain_and_export(run: RunState, aim: Aim, subnet: GraphNet, arch: Architecture,
                       width: float, resized: int, attempt: int, tmp: Path,
                       history: list[dict[str, Any]],
                       calibration: torch.Tensor | None) -> tuple[Attempt, ExportContext | None]:
    """Retrains ``subnet`` in place (with every rank), exports it into ``tmp/.attempt-N`` and
    verifies it (rank 0; the others get no export context)."""
    cfg, data, target, log = run.cfg, run.data, run.target, run.log
    if cfg.retrain_from == "scratch":
        reinitialize(subnet, cfg.seed)
    log(f"retraining ({cfg.retrain_from}) for {cfg.retrain_epochs} epochs on {data.device}")
    with on(subnet, run.compute):
        run.timings["retrain_s"] += fit(
            subnet, data, epochs=cfg.retrain_epochs, seed=cfg.seed, progress=run.progress,
            desc="retrain", history=history, compute=run.compute, world=run.world,
            checkpoints=run.loop(f"retrain-{attempt}", f"{spec_key(subnet.spec())}-x{width:g}"),
            log=log)
    subnet.eval()
    arch_final = Architecture(method=arch.method, network=subnet.spec(), space=arch.space,
                              decisions=arch.decisions, width_multiplier=width, seed=cfg.seed,
                              metadata={**arch.metadata, "nas2deploy_version": __version__})
    arch_final.metadata["predicted_ms"] = aim.predict(arch_final.network)

    exports = run.plan.exports
    if not run.world.leader:  # rank 0 alone exports, verifies and measures
        return Attempt(attempt, width, arch_final, "", {}, resized), None
    log(f"exporting {', '.join(exports)}")
    t = time.perf_counter()
    folder = tmp / f".attempt-{attempt}"
    xctx = ExportContext(folder, data.first("test", target.batch), target,
                         {"nas2deploy_version": __version__,
                          "architecture": arch_final.to_json()},
                         calibration=calibration)
    export_chain(subnet, exports, xctx)
    verification = (run.verify or verify)(subnet, exports, xctx, data, cfg)
    run.timings["export_s"] += time.perf_counter() - t
    return Attempt(attempt, width, arch_final, str(folder), verification, resized), xctx


def as_batches(ds: Dataset | Batches) -> Batches:
    """``ds`` as ``Batches`` (an in-memory ``Dataset``'s splits wrapped, not copied)."""
    if isinstance(ds, Batches):
        return ds
    return Batches.in_memory({"train": (ds.x_train, ds.y_train), "val": (ds.x_val, ds.y_val),
                              "test": (ds.x_test, ds.y_test)})


def eval_batches(data: Batches, batch: int, n: int):
    """The first ``n`` test images in runtime batches of ``batch``, on the CPU."""
    return data.ordered("test", batch_size=batch, limit=n, device="cpu")


@torch.no_grad()
def verify(subnet: GraphNet, exports: list[str], xctx: ExportContext, ds: Dataset | Batches,
           cfg: RunConfig) -> dict[str, Any]:
    """Every exported runtime against the fp32 PyTorch subnet on real test images.

    fp32: max |logit difference| within the exporter's tolerance. fp16/int8, whose logits move by
    design: top-1 agreement with the PyTorch subnet over the whole test split, and the accuracy
    drop, each against its threshold. A miss is a typed error, never a warning. Artifacts built
    for another machine (``runnable`` false) are recorded as not verified here, with the reason.
    """
    target = xctx.target
    batch = target.batch
    parity: dict[str, Any] = {}
    precision: dict[str, Any] = {"precision": target.precision}
    if target.precision != "fp32":
        precision.update(min_agreement=cfg.min_agreement,
                         max_accuracy_drop_points=cfg.max_accuracy_drop)
        onnx_info = xctx.artifacts.get("onnx").info if "onnx" in xctx.artifacts else {}
        if "quantization" in onnx_info:
            precision["quantization"] = onnx_info["quantization"]
    data = as_batches(ds)
    n_test = data.size("test") // batch * batch
    if target.precision != "fp32":  # the reference of the agreement check, once for all runtimes
        subnet.eval()
        ref, labels = [], []
        for x, y in eval_batches(data, batch, n_test):
            ref.append(subnet(x).argmax(1))
            labels.append(y)
        ref_top1, y_test = torch.cat(ref), torch.cat(labels)
        ref_acc = float((ref_top1 == y_test).float().mean())
    for name in exports:
        exporter = registry.exporters.get(name)()
        art = xctx.artifacts[name]
        if not art.runnable:
            parity[name] = {"verified": False, "reason": art.info.get("not_runnable_reason", "")}
            continue
        rt = Target(getattr(exporter, "runtime", None) or target.runtime, target.device,
                    target.precision, batch, target.threads)
        run = exporter.runner(xctx.bundle_dir, art, rt)
        if target.precision == "fp32":
            n = max(batch, min(cfg.parity_samples, data.size("test")) // batch * batch)
            worst = 0.0
            for x, _ in eval_batches(data, batch, n):
                worst = max(worst, verify_parity(subnet, run, x, atol=exporter.parity_atol))
            parity[name] = {"verified": True, "max_abs_diff": worst, "atol": exporter.parity_atol,
                            "samples": n, "inputs": "test split"}
            continue
        got = np.concatenate([np.asarray(run(x.numpy())).argmax(1)
                              for x, _ in eval_batches(data, batch, n_test)])
        agreement = float((got == ref_top1.numpy()).mean())
        acc = float((got == y_test.numpy()).mean())
        drop = 100.0 * (ref_acc - acc) or 0.0  # no "-0.00 points"
        parity[name] = {"verified": True, "top1_agreement": agreement, "top1": acc,
                        "reference_top1": ref_acc, "accuracy_drop_points": drop,
                        "samples": n_test, "inputs": "test split",
                        "reference": "fp32 PyTorch subnet"}
        if agreement < cfg.min_agreement or drop > cfg.max_accuracy_drop:
            raise PrecisionError(
                f"{name} at {target.precision}: top-1 agreement with the fp32 model "
                f"{agreement:.2%} (need >= {cfg.min_agreement:.2%}), accuracy drop "
                f"{drop:.2f} points (allowed {cfg.max_accuracy_drop:g}); raise "
                f"--calibration-samples or relax --min-agreement/--max-accuracy-drop")
    return {"parity": parity, "precision": precision}


def runtime_top1(run, ds: Dataset | Batches, batch: int) -> float:
    data = as_batches(ds)
    n = data.size("test") // batch * batch
    correct = 0
    for x, y in eval_batches(data, batch, n):
        correct += int((torch.from_numpy(run(x.numpy())).argmax(1) == y).sum())
    return correct / n if n else math.nan
