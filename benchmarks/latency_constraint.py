"""How well does search-and-export land under a latency budget on the real runtime?

Runs the whole pipeline (search with the method's default epochs, closed loop, retrain, export,
measure) for several budgets on each target and each method, and prints measured p50 / budget and
test accuracy per run, then a per-method summary. Final line:
``latency_hit: K/N runs within [0.90, 1.00] of budget``.

    python benchmarks/latency_constraint.py [--methods dsonas,densenas,tfnas]
        [--fractions 0.4,0.55,0.7,0.85] [--targets openvino:cpu,onnxruntime:cpu]
        [--search-epochs N] [--retrain-epochs N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_line  # noqa: E402

from nas2deploy.config import RunConfig  # noqa: E402
from nas2deploy.errors import Nas2DeployError  # noqa: E402
from nas2deploy.pipeline import search_and_export  # noqa: E402

LO, HI = 0.90, 1.00


def trace(m: dict) -> str:
    """The run's rounds as ``stage width:ratio``: p pre-retrain (ratio to the budget at start),
    f final attempt (its verdict; * kept), with r where the method re-sized the architecture
    before it."""
    lat, out, resized = m["latency"], [], 0
    for r in lat["rounds"]:
        tag = "p" if r["stage"] == "pre-retrain" else "f"
        mark = "r" if r.get("resized", 0) > resized else ""
        resized = r.get("resized", resized)
        kept = "*" if r.get("kept") else ""
        ratio = r.get("ratio_to_budget") or r["measured_p50_ms"] / lat["budget_ms_at_start"]
        out.append(f"{mark}{tag}{r['width_multiplier']:.3f}:{ratio:.3f}{kept}")
    return "#   " + " ".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", "--method", default="dsonas,densenas,tfnas")
    ap.add_argument("--fractions", default="0.4,0.55,0.7,0.85",
                    help="budgets as fractions of the largest subnet's measured p50")
    ap.add_argument("--targets", default="openvino:cpu,onnxruntime:cpu")
    ap.add_argument("--search-epochs", type=int, default=None)
    ap.add_argument("--retrain-epochs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trace", action="store_true",
                    help="after each run, one line per closed-loop round and final attempt")
    args = ap.parse_args()
    print(machine_line())
    print(f"# window [{LO:.2f}, {HI:.2f}] of budget; p50 at batch 1, 1 thread; retrain "
          f"{args.retrain_epochs} epochs")
    print(f"{'method':<9} {'target':<16} {'fraction':>8} {'budget ms':>10} {'p50 ms':>9} "
          f"{'ratio':>6} {'rounds':>6} {'width':>6} {'top1':>6} {'time s':>7}", flush=True)
    fractions = [float(f) for f in args.fractions.split(",")]
    per_method: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            for target in args.targets.split(","):
                for frac in fractions:
                    cfg = RunConfig(method=method, target=target, latency_fraction=frac,
                                    search_epochs=args.search_epochs,
                                    retrain_epochs=args.retrain_epochs, seed=args.seed,
                                    out=str(Path(tmp) / "b"), overwrite=True, export=["onnx"])
                    t0 = time.perf_counter()
                    try:
                        m = search_and_export(cfg).manifest
                    except Nas2DeployError as exc:  # e.g. a budget below the smallest subnet
                        print(f"{method:<9} {target:<16} {frac:>8.2f}  error: {exc}", flush=True)
                        continue
                    lat = m["latency"]
                    ratio = lat["ratio_to_budget"]
                    top1 = m["accuracy"]["top1"]
                    per_method.setdefault(method, []).append((ratio, top1))
                    print(f"{method:<9} {target:<16} {frac:>8.2f} {lat['budget_ms']:>10.4f} "
                          f"{lat['measured']['p50_ms']:>9.4f} {ratio:>6.3f} "
                          f"{len(lat['rounds']):>6} {m['model']['width_multiplier']:>6.3f} "
                          f"{top1:>6.3f} {time.perf_counter() - t0:>7.0f}", flush=True)
                    if args.trace:
                        print(trace(m), flush=True)
    hits = total = 0
    for method, rows in per_method.items():
        ratios = [r for r, _ in rows]
        h = sum(LO <= r <= HI for r in ratios)
        hits, total = hits + h, total + len(rows)
        print(f"# {method}: {h}/{len(rows)} within [{LO:.2f}, {HI:.2f}], {sum(r <= 1 for r in ratios)}"
              f"/{len(rows)} under budget; ratio median {statistics.median(ratios):.3f} "
              f"(min {min(ratios):.3f}, max {max(ratios):.3f}); top-1 median "
              f"{statistics.median(a for _, a in rows):.3f}")
    print(f"latency_hit: {hits}/{total} runs within [{LO:.2f}, {HI:.2f}] of budget")


if __name__ == "__main__":
    main()
