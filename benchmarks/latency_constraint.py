"""How well does search-and-export land under a latency budget on the real runtime?

Runs the whole pipeline (search with the method's default epochs, closed loop, retrain, export,
measure) for several budgets on each target and each method, and prints measured p50 / budget and
test accuracy per run, then a per-method summary with each method's in-window share. Final line:
``latency_hit: K/N runs within [0.90, 1.00] of budget``.

By default every method the project registers runs (``dsonas, densenas, tfnas, enas, nasrl,
mnasnet, random``); a method that is not installed or fails to load is named in a ``# skipped``
line. ``NAME:SPACE`` sets the method option ``space``: ``random:tfnas`` is random search of
TF-NAS's space, ``enas:micro`` ENAS in its micro space.

    python benchmarks/latency_constraint.py
        [--methods dsonas,densenas,tfnas,enas,nasrl,mnasnet,random]
        [--fractions 0.4,0.55,0.7,0.85] [--targets openvino:cpu,onnxruntime:cpu]
        [--search-epochs N] [--retrain-epochs N] [--input-size 32] [--seed 0]
        [--out rows.jsonl [--resume]] [--trace] [--verbose]

Each finished run is appended to ``--out`` as a JSON line; ``--resume`` skips the runs it holds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (ALL_METHODS, HI, LO, Journal, machine_line, parse_list,  # noqa: E402
                     parse_method_spec, pipeline_config, run_key, run_pipeline, say,
                     stop_cleanly_on_sigterm, unloadable, window_share)


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


def plan_runs(specs: list[str], fractions: list[float], targets: list[str], *, seed: int,
              search_epochs: int | None, retrain_epochs: int, input_size: int,
              dataset: str) -> list[dict[str, Any]]:
    runs = []
    for spec in specs:
        name, options = parse_method_spec(spec)
        for target in targets:
            for frac in fractions:
                ident = {"bench": "latency_constraint", "spec": spec, "method": name,
                         "options": options, "target": target, "fraction": frac, "seed": seed,
                         "search_epochs": search_epochs, "retrain_epochs": retrain_epochs,
                         "input_size": input_size, "dataset": dataset}
                runs.append({**ident, "key": run_key(**ident)})
    return runs


def row_line(r: dict[str, Any]) -> str:
    head = f"{r['spec']:<14} {r['target']:<16} {r['fraction']:>8.2f}"
    if r.get("error"):
        return f"{head}  error: {r['error']}"  # e.g. a budget below the smallest subnet
    return (f"{head} {r['budget_ms']:>10.4f} {r['p50_ms']:>9.4f} {r['ratio']:>6.3f} "
            f"{r['rounds']:>6} {r['width']:>6.3f} {r['top1']:>6.3f} {r['seconds']:>7.0f}")


def summarize(rows: list[dict[str, Any]]) -> tuple[list[str], str]:
    """(one summary line per method, the final line) over the finished rows; a failed run counts
    as a miss of its method."""
    lines, hits, total = [], 0, 0
    for spec in dict.fromkeys(r["spec"] for r in rows):
        mine = [r for r in rows if r["spec"] == spec]
        ok = [r for r in mine if not r.get("error")]
        h, n = window_share([r["ratio"] for r in ok])
        n = len(mine)
        hits, total = hits + h, total + n
        if not ok:
            lines.append(f"# {spec}: in-window share 0/{n}; every run failed")
            continue
        ratios = [r["ratio"] for r in ok]
        lines.append(
            f"# {spec}: in-window share {h}/{n} ({h / n:.0%}) within [{LO:.2f}, {HI:.2f}], "
            f"{sum(r <= HI for r in ratios)}/{n} under budget"
            + (f", {n - len(ok)} failed" if len(ok) < n else "")
            + f"; ratio median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max "
              f"{max(ratios):.3f}); top-1 median {statistics.median(r['top1'] for r in ok):.3f}")
    return lines, f"latency_hit: {hits}/{total} runs within [{LO:.2f}, {HI:.2f}] of budget"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", "--method", default=",".join(ALL_METHODS))
    ap.add_argument("--fractions", default="0.4,0.55,0.7,0.85",
                    help="budgets as fractions of the largest subnet's measured p50")
    ap.add_argument("--targets", default="openvino:cpu,onnxruntime:cpu")
    ap.add_argument("--search-epochs", type=int, default=None)
    ap.add_argument("--retrain-epochs", type=int, default=4)
    ap.add_argument("--input-size", type=int, default=32)
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="where search and retrain run")
    ap.add_argument("--out", default=None, help="JSON-lines file of finished runs")
    ap.add_argument("--resume", action="store_true", help="skip the runs --out already holds")
    ap.add_argument("--trace", action="store_true",
                    help="after each run, one line per closed-loop round and final attempt")
    ap.add_argument("--verbose", action="store_true", help="the pipeline's stage messages")
    args = ap.parse_args()
    stop_cleanly_on_sigterm()
    try:
        specs = parse_list(args.methods)
        names = [parse_method_spec(s)[0] for s in specs]
    except ValueError as exc:
        raise SystemExit(f"latency_constraint: {exc}")
    if args.resume and not args.out:
        raise SystemExit("latency_constraint: --resume needs --out FILE")
    skipped = unloadable(names)
    journal = Journal(args.out, resume=args.resume)
    print(machine_line())
    print(f"# window [{LO:.2f}, {HI:.2f}] of budget; p50 at batch 1, 1 thread; retrain "
          f"{args.retrain_epochs} epochs; {args.dataset} at {args.input_size}px")
    for name, why in skipped.items():
        print(f"# skipped {name}: {why}")
    specs = [s for s, n in zip(specs, names) if n not in skipped]
    print(f"{'method':<14} {'target':<16} {'fraction':>8} {'budget ms':>10} {'p50 ms':>9} "
          f"{'ratio':>6} {'rounds':>6} {'width':>6} {'top1':>6} {'time s':>7}", flush=True)
    runs = plan_runs(specs, [float(f) for f in parse_list(args.fractions)],
                     parse_list(args.targets), seed=args.seed, search_epochs=args.search_epochs,
                     retrain_epochs=args.retrain_epochs, input_size=args.input_size,
                     dataset=args.dataset)
    todo = [r for r in runs if journal.done(r["key"]) is None]
    say(f"{len(runs)} runs" + (f", {len(runs) - len(todo)} already in {args.out}"
                               if args.resume else ""))
    for r in runs:
        if journal.done(r["key"]) is not None:
            print(row_line(journal.rows[r["key"]]), flush=True)
    for i, run in enumerate(todo, 1):
        say(f"[{i}/{len(todo)}] {run['spec']} {run['target']} budget {run['fraction']:g}")
        cfg = pipeline_config(run["method"], run["options"], target=run["target"],
                              fraction=run["fraction"], seed=run["seed"],
                              search_epochs=run["search_epochs"],
                              retrain_epochs=run["retrain_epochs"], input_size=run["input_size"],
                              dataset=run["dataset"], out="unused", device=args.device)
        row = run_pipeline(cfg, keep=lambda b, m: {"trace": trace(m)}, verbose=args.verbose)
        journal.add(run["key"], {**{k: v for k, v in run.items() if k != "key"}, **row})
        print(row_line(journal.rows[run["key"]]), flush=True)
        if args.trace and row.get("trace"):
            print(row["trace"], flush=True)
    rows = [journal.rows[r["key"]] for r in runs if r["key"] in journal.rows]
    lines, final = summarize(rows)
    for line in lines:
        print(line)
    print(final)


if __name__ == "__main__":
    main()
