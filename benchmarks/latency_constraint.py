"""How well does search-and-export land under a latency budget on the real runtime?

Runs the whole pipeline (search, closed loop, retrain, export, measure) for several budgets on
each target and prints measured p50 / budget per run. Final line:
``latency_hit: K/N runs within [0.85, 1.00] of budget``.

    python benchmarks/latency_constraint.py [--method dsonas] [--fractions 0.4,0.55,0.7,0.85]
        [--targets openvino:cpu,onnxruntime:cpu] [--search-epochs N] [--retrain-epochs N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_line  # noqa: E402

from nas2deploy.config import RunConfig  # noqa: E402
from nas2deploy.pipeline import search_and_export  # noqa: E402

LO, HI = 0.85, 1.00


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", default="dsonas")
    ap.add_argument("--fractions", default="0.4,0.55,0.7,0.85",
                    help="budgets as fractions of the largest subnet's measured p50")
    ap.add_argument("--targets", default="openvino:cpu,onnxruntime:cpu")
    ap.add_argument("--search-epochs", type=int, default=None)
    ap.add_argument("--retrain-epochs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(machine_line())
    print(f"# method {args.method}; window [{LO:.2f}, {HI:.2f}] of budget; p50 at batch 1, 1 thread")
    print(f"{'target':<18} {'fraction':>8} {'budget ms':>10} {'p50 ms':>9} {'ratio':>6} "
          f"{'rounds':>6} {'width':>6} {'top1':>6}")
    hits, ratios = 0, []
    fractions = [float(f) for f in args.fractions.split(",")]
    targets = args.targets.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        for target in targets:
            for frac in fractions:
                cfg = RunConfig(method=args.method, target=target, latency_fraction=frac,
                                search_epochs=args.search_epochs, retrain_epochs=args.retrain_epochs,
                                seed=args.seed, out=str(Path(tmp) / "b"), overwrite=True,
                                export=["onnx"])
                m = search_and_export(cfg).manifest
                lat = m["latency"]
                ratio = lat["measured"]["p50_ms"] / lat["budget_ms"]
                ratios.append(ratio)
                hits += LO <= ratio <= HI
                print(f"{target:<18} {frac:>8.2f} {lat['budget_ms']:>10.4f} "
                      f"{lat['measured']['p50_ms']:>9.4f} {ratio:>6.3f} {len(lat['rounds']):>6} "
                      f"{m['model']['width_multiplier']:>6.3f} {m['accuracy']['top1']:>6.3f}",
                      flush=True)
    print(f"# median ratio {statistics.median(ratios):.3f}, min {min(ratios):.3f}, "
          f"max {max(ratios):.3f}")
    print(f"latency_hit: {hits}/{len(ratios)} runs within [{LO:.2f}, {HI:.2f}] of budget")


if __name__ == "__main__":
    main()
