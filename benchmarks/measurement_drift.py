"""How repeatable is one latency measurement on this machine, alone and side by side?

The closed loop decides by measurement, so the spread of repeated measurements of one network
bounds how closely any method can land under a budget. This times the same candidate networks
(random TF-NAS subnets) repeatedly over a few minutes, two ways per repeat:

* **alone**: the pipeline's standalone protocol (``measure_model``), p50 in ms;
* **side by side**: interleaved with the largest subnet (``SideBySide``), p50 ratio to it.

Per network, the spread is (max − min) / median over the repeats; the table prints both
spreads per network and the final line their medians:
``spread: alone X% | side by side Y% (median over networks)``.

    python benchmarks/measurement_drift.py [--target openvino:cpu] [--nets 4] [--repeats 6]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_line  # noqa: E402

from nas2deploy import registry  # noqa: E402
from nas2deploy.materialize import materialize  # noqa: E402
from nas2deploy.method import TaskSpec  # noqa: E402
from nas2deploy.runtime import SideBySide, measure_model  # noqa: E402
from nas2deploy.target import Target  # noqa: E402


def spread(values: list[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default="openvino:cpu")
    ap.add_argument("--method", default="tfnas")
    ap.add_argument("--nets", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(machine_line())
    target = Target.parse(args.target, batch=1, threads=1)
    method = registry.methods.get(args.method)({})
    supernet = method.build(TaskSpec(1, 32, 10))
    shape = (1, 1, 32, 32)
    largest = materialize(method.largest(supernet))
    rng = random.Random(args.seed)
    nets = [materialize(method.sample(supernet, rng)) for _ in range(args.nets)]
    ref_ms = measure_model(largest, target, shape).p50_ms
    side = SideBySide(largest, target, shape, ref_ms)
    print(f"# {args.method} on {target}; largest {ref_ms:.4f} ms; {args.repeats} repeats of "
          f"{args.nets} networks, alone then side by side each time")
    alone: list[list[float]] = [[] for _ in nets]
    ratio: list[list[float]] = [[] for _ in nets]
    try:
        for r in range(args.repeats):
            for i, net in enumerate(nets):
                alone[i].append(measure_model(net, target, shape).p50_ms)
                ratio[i].append(side.measure(net).ratio)
            print(f"repeat {r + 1}: alone " + " ".join(f"{a[-1]:.4f}" for a in alone)
                  + " | ratio " + " ".join(f"{q[-1]:.3f}" for q in ratio), flush=True)
    finally:
        side.close()
    print(f"{'net':>4} {'alone median ms':>16} {'alone spread':>13} {'ratio median':>13} "
          f"{'ratio spread':>13}")
    for i in range(len(nets)):
        print(f"{i:>4} {statistics.median(alone[i]):>16.4f} {spread(alone[i]):>13.1%} "
              f"{statistics.median(ratio[i]):>13.3f} {spread(ratio[i]):>13.1%}")
    print(f"spread: alone {statistics.median(spread(a) for a in alone):.1%} | side by side "
          f"{statistics.median(spread(q) for q in ratio):.1%} (median over networks)")


if __name__ == "__main__":
    main()
