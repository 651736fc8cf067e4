"""How repeatable is one latency measurement on this machine, alone and side by side?

The closed loop decides by measurement, so the spread of repeated measurements of one network
bounds how closely any method can land under a budget. This times the same candidate networks
(random TF-NAS subnets) repeatedly over a few minutes, four ways per repeat, each from a fresh
export:

* **alone, 1 load**: one compile/session, the standalone protocol, p50 in ms;
* **alone, N loads**: ``measure_model`` as the pipeline runs it, the median over N fresh loads;
* **side by side, 1 pair**: interleaved with the largest subnet, p50 ratio to it, one load each;
* **side by side, N pairs**: ``SideBySide`` as the pipeline runs it, median over N pairs.

Per network, the spread is (max − min) / median over the repeats; the table prints the spreads
per network and the final line their medians:
``spread: alone 1 load A% | alone N loads B% | side by side 1 pair C% | N pairs D%``.

    python benchmarks/measurement_drift.py [--target openvino:cpu] [--nets 4] [--repeats 6]
        [--instances 5]
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
from nas2deploy.latency import INSTANCES  # noqa: E402
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
    ap.add_argument("--instances", type=int, default=INSTANCES)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(machine_line())
    target = Target.parse(args.target, batch=1, threads=1)
    method = registry.methods.get(args.method)({})
    supernet = method.build(TaskSpec(1, 32, 10))
    shape = (1, 1, 32, 32)
    largest = materialize(method.space(supernet).largest())
    rng = random.Random(args.seed)
    nets = [materialize(method.space(supernet).draw(rng)) for _ in range(args.nets)]
    ref_ms = measure_model(largest, target, shape).p50_ms
    n = args.instances
    sides = {1: SideBySide(largest, target, shape, ref_ms, instances=1),
             n: SideBySide(largest, target, shape, ref_ms, instances=n)}
    ways = ["alone, 1 load", f"alone, {n} loads", "side by side, 1 pair",
            f"side by side, {n} pairs"]
    print(f"# {args.method} on {target}; largest {ref_ms:.4f} ms; {args.repeats} repeats of "
          f"{args.nets} networks, each way in turn: {'; '.join(ways)}")
    values: list[list[list[float]]] = [[[] for _ in nets] for _ in ways]
    try:
        for r in range(args.repeats):
            for i, net in enumerate(nets):
                values[0][i].append(measure_model(net, target, shape, instances=1).p50_ms)
                values[1][i].append(measure_model(net, target, shape, instances=n).p50_ms)
                values[2][i].append(sides[1].measure(net).ratio)
                values[3][i].append(sides[n].measure(net).ratio)
            print(f"repeat {r + 1}: " + " | ".join(
                " ".join(f"{v[i][-1]:.4f}" for i in range(len(nets))) for v in values), flush=True)
    finally:
        for side in sides.values():
            side.close()
    print(f"{'net':>4} " + " ".join(f"{w:>22}" for w in ways)
          + "   (spread: max - min over median)")
    for i in range(len(nets)):
        print(f"{i:>4} " + " ".join(f"{spread(v[i]):>22.1%}" for v in values))
    med = [statistics.median(spread(x) for x in v) for v in values]
    print(f"spread: alone 1 load {med[0]:.1%} | alone {n} loads {med[1]:.1%} | side by side 1 "
          f"pair {med[2]:.1%} | {n} pairs {med[3]:.1%} (median over networks)")

if __name__ == "__main__":
    main()
