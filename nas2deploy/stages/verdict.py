"""Verdict: the exported artifact timed on the target, alone and beside the largest subnet, and
checked against the budget. That measurement, not the estimate, decides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..exporter import ExportContext
from ..latency import LatencyReport, measure_instances
from ..netspec import GraphNet
from ..records import Budget, Verdict
from ..runtime import artifact_loader, random_input
from .state import RunState

# Seconds of timed calls per network in the bundle's side-by-side verdict (the rounds use 1.5 s).
VERDICT_SECONDS = 3.0


def report_dict(rep: LatencyReport) -> dict[str, Any]:
    return {"p50_ms": rep.p50_ms, "p90_ms": rep.p90_ms, "mean_ms": rep.mean_ms, "runs": rep.runs,
            "protocol": rep.protocol, "p50_per_load_ms": rep.instance_p50_ms}


def measure_verdict(run: RunState, budget: Budget, subnet: GraphNet, folder: Path,
                    xctx: ExportContext) -> Verdict:
    cfg, target, side = run.cfg, run.target, run.side
    run.log(f"measuring the exported model on {target}")
    load = artifact_loader(subnet, target, folder, xctx.artifacts)
    standalone = measure_instances(load, random_input(run.shape, cfg.seed),
                                   batch=target.batch, threads=target.threads)
    beside = side.time(load, seconds=VERDICT_SECONDS)
    if cfg.latency_ms is None:
        # A budget that is a fraction of the largest subnet is checked as what it is: the
        # ratio of the two, timed side by side now (the budget in ms is restated at the
        # largest subnet's speed in this run).
        verdict_budget = cfg.latency_fraction * beside.reference_p50_ms
        final = {"p50_ms": beside.raw_p50_ms, "p90_ms": beside.raw_p90_ms,
                 "runs": beside.runs, "protocol": side.protocol_line(VERDICT_SECONDS),
                 "largest_p50_ms": beside.reference_p50_ms,
                 "ratio_to_largest": beside.ratio,
                 "ratio_per_load": beside.instance_ratios,
                 "standalone": report_dict(standalone)}
    else:
        verdict_budget = budget.budget_ms
        final = {**report_dict(standalone),
                 "side_by_side": {"p50_ms": beside.raw_p50_ms,
                                  "largest_p50_ms": beside.reference_p50_ms,
                                  "ratio_to_largest": beside.ratio,
                                  "ratio_per_load": beside.instance_ratios}}
    within = final["p50_ms"] <= verdict_budget
    ratio = final["p50_ms"] / verdict_budget
    return Verdict(final, verdict_budget, within, ratio, beside.p50_ms)
