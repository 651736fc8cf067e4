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
from ..errors import PrecisionError
from ..exporter import ExportContext, verify_parity
from ..netspec import GraphNet
from ..records import Attempt
from ..runtime import export_chain
from ..target import Target
from ..train import predict, reinitialize, train
from .size import Aim
from .state import RunState


def retrain_and_export(run: RunState, aim: Aim, subnet: GraphNet, arch: Architecture,
                       width: float, resized: int, attempt: int, tmp: Path,
                       history: list[dict[str, Any]],
                       calibration: torch.Tensor | None) -> tuple[Attempt, ExportContext]:
    """Retrains ``subnet`` in place, exports it into ``tmp/.attempt-N`` and verifies it."""
    cfg, ds, target, log = run.cfg, run.ds, run.target, run.log
    if cfg.retrain_from == "scratch":
        reinitialize(subnet, cfg.seed)
    log(f"retraining ({cfg.retrain_from}) for {cfg.retrain_epochs} epochs")
    run.timings["retrain_s"] += train(
        subnet, ds.x_train, ds.y_train, epochs=cfg.retrain_epochs, seed=cfg.seed,
        x_val=ds.x_val, y_val=ds.y_val, progress=run.progress, desc="retrain",
        history=history)
    subnet.eval()
    arch_final = Architecture(method=arch.method, network=subnet.spec(), space=arch.space,
                              decisions=arch.decisions, width_multiplier=width, seed=cfg.seed,
                              metadata={**arch.metadata, "nas2deploy_version": __version__})
    arch_final.metadata["predicted_ms"] = aim.predict(arch_final.network)

    exports = run.plan.exports
    log(f"exporting {', '.join(exports)}")
    t = time.perf_counter()
    folder = tmp / f".attempt-{attempt}"
    xctx = ExportContext(folder, ds.x_test[: target.batch].clone(), target,
                         {"nas2deploy_version": __version__,
                          "architecture": arch_final.to_json()},
                         calibration=calibration)
    export_chain(subnet, exports, xctx)
    verification = (run.verify or verify)(subnet, exports, xctx, ds, cfg)
    run.timings["export_s"] += time.perf_counter() - t
    return Attempt(attempt, width, arch_final, str(folder), verification, resized), xctx


def verify(subnet: GraphNet, exports: list[str], xctx: ExportContext, ds: Dataset,
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
    n_test = len(ds.x_test) // batch * batch
    if target.precision != "fp32":  # the reference of the agreement check, once for all runtimes
        ref_top1 = predict(subnet, ds.x_test[:n_test]).argmax(1)
        ref_acc = float((ref_top1 == ds.y_test[:n_test]).float().mean())
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
            n = max(batch, min(cfg.parity_samples, len(ds.x_test)) // batch * batch)
            worst = 0.0
            for i in range(0, n, batch):
                worst = max(worst, verify_parity(subnet, run, ds.x_test[i:i + batch],
                                                 atol=exporter.parity_atol))
            parity[name] = {"verified": True, "max_abs_diff": worst, "atol": exporter.parity_atol,
                            "samples": n, "inputs": "test split"}
            continue
        got = np.concatenate([np.asarray(run(ds.x_test[i:i + batch].numpy())).argmax(1)
                              for i in range(0, n_test, batch)])
        agreement = float((got == ref_top1.numpy()).mean())
        acc = float((got == ds.y_test[:n_test].numpy()).mean())
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


def runtime_top1(run, ds: Dataset, batch: int) -> float:
    n = len(ds.x_test) // batch * batch
    correct = 0
    for i in range(0, n, batch):
        logits = run(ds.x_test[i:i + batch].numpy())
        correct += int((torch.from_numpy(logits).argmax(1) == ds.y_test[i:i + batch]).sum())
    return correct / n if n else math.nan
