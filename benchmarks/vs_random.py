"""Does each NAS method beat random search of its own space, under the same latency budget?

For every method (``--methods``; ``NAME:SPACE`` picks a space, e.g. ``enas:micro``) and the
built-in ``random`` method searching that method's space (method options
``{"space": NAME, "space_options": <the method's options>}``), at each budget (``--fractions`` of
the largest subnet's measured p50), on each CPU runtime (``--targets``) and for each seed
(``--seeds N``: seeds 0..N-1), the whole pipeline runs (search with the same number of epochs for
both, closed loop, retrain, export, measured verdict); test top-1, the measured p50 and the budget
are read from the bundle's manifest.

The table has one row per (method, budget, runtime) and, under each budget, one pooled row
(runtime ``all``). The final figure counts **(method, budget) cells, pooling both runtimes and all
seeds**: a cell is won when the method's mean top-1 over its runs is strictly higher than
random's over the same runs; a cell where either side has no finished run is left out of N.
Final line:
``beats_random: K/N (method, budget) cells with mean top-1 higher than random's``.

The embedded digits saturate near 99% top-1 at the default sizes. Harder settings that need no
download: a smaller ``--input-size`` (16 or 8, the glyphs' own resolution: the stride-2 stages
leave the network few pixels) and fewer ``--retrain-epochs``. Subsampling the training split
would need an option of the dataset loader, which has none yet. ``--dataset cifar10:DIR`` runs on
CIFAR-10 where its batch files are on disk.

    python benchmarks/vs_random.py [--methods dsonas,densenas,tfnas,enas]
        [--fractions 0.4,0.6,0.8] [--targets openvino:cpu,onnxruntime:cpu] [--seeds 3]
        [--search-epochs N] [--retrain-epochs N] [--input-size 32] [--dataset digits]
        [--out rows.jsonl [--resume]] [--verbose]

Each finished run is appended to ``--out`` as a JSON line at once; ``--resume`` reads that file
and runs only what it lacks, so an interrupted benchmark loses at most the run in progress.
Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (Journal, default_search_epochs, fmt_mean, fmt_mean_sd,  # noqa: E402
                     machine_line, mean_sd, parse_list, parse_method_spec, pipeline_config,
                     random_counterpart, run_key, run_pipeline, say, stop_cleanly_on_sigterm,
                     unloadable)

SIDES = ("method", "random")


def plan_runs(specs: list[str], fractions: list[float], targets: list[str], seeds: list[int], *,
              search_epochs: int | None, retrain_epochs: int, input_size: int,
              dataset: str) -> list[dict[str, Any]]:
    """Every run of the benchmark: for each spec, budget, target and seed, the method and its
    random counterpart, both searching the same number of epochs (the method's default where
    ``search_epochs`` is None)."""
    runs = []
    for spec in specs:
        name, options = parse_method_spec(spec)
        epochs = search_epochs if search_epochs is not None else default_search_epochs(name)
        for frac in fractions:
            for target in targets:
                for seed in seeds:
                    for side in SIDES:
                        method, opts = ((name, options) if side == "method"
                                        else ("random", random_counterpart(name, options)))
                        ident = {"bench": "vs_random", "spec": spec, "side": side,
                                 "method": method, "options": opts, "fraction": frac,
                                 "target": target, "seed": seed, "search_epochs": epochs,
                                 "retrain_epochs": retrain_epochs, "input_size": input_size,
                                 "dataset": dataset}
                        runs.append({**ident, "key": run_key(**ident)})
    return runs


def summarize(rows: list[dict[str, Any]]) -> tuple[list[str], int, int]:
    """(table lines, cells won, cells compared) of finished rows (each with ``spec``, ``side``,
    ``fraction``, ``target`` and ``top1``/``ratio``, or ``error``)."""
    by: dict[tuple, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    groups: dict[tuple, list[str]] = {}  # (spec, fraction) -> its runtimes, first seen first
    for r in rows:
        runtimes = groups.setdefault((r["spec"], r["fraction"]), [])
        if r["target"] not in runtimes:
            runtimes.append(r["target"])
        if not r.get("error"):
            for target in (r["target"], "all"):
                by[(r["spec"], r["fraction"], target)][r["side"]].append(r)
    order = [(*g, t) for g, runtimes in groups.items() for t in [*runtimes, "all"]]
    lines = [f"{'method':<14} {'budget':>6} {'runtime':<16} {'seeds':>5} "
             f"{'top1 method':>13} {'top1 random':>13} {'lat/bud M':>9} {'lat/bud R':>9} "
             f"{'beats':>5}"]
    won = compared = 0
    for cell in order:
        spec, frac, target = cell
        m, r = by[cell]["method"], by[cell]["random"]
        mt, rt = [x["top1"] for x in m], [x["top1"] for x in r]
        seeds = len({x.get("seed") for x in m + r})
        if m and r:
            beats = mean_sd(mt)[0] > mean_sd(rt)[0]
            verdict = "yes" if beats else "no"
            if target == "all":
                won, compared = won + beats, compared + 1
        else:
            verdict = "n/a"
        lat_m, lat_r = fmt_mean([x["ratio"] for x in m]), fmt_mean([x["ratio"] for x in r])
        lines.append(f"{spec:<14} {frac:>6.2f} {target:<16} {seeds:>5} {fmt_mean_sd(mt):>13} "
                     f"{fmt_mean_sd(rt):>13} {lat_m:>9} {lat_r:>9} {verdict:>5}")
    return lines, won, compared


def final_line(won: int, compared: int) -> str:
    return (f"beats_random: {won}/{compared} (method, budget) cells with mean top-1 higher than "
            f"random's")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default="dsonas,densenas,tfnas,enas")
    ap.add_argument("--fractions", default="0.4,0.6,0.8",
                    help="budgets as fractions of the largest subnet's measured p50")
    ap.add_argument("--targets", default="openvino:cpu,onnxruntime:cpu")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    ap.add_argument("--search-epochs", type=int, default=None,
                    help="both sides' search epochs (default: the method's own)")
    ap.add_argument("--retrain-epochs", type=int, default=12)
    ap.add_argument("--input-size", type=int, default=32)
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--device", default="auto", help="where search and retrain run")
    ap.add_argument("--out", default=None, help="JSON-lines file of finished runs")
    ap.add_argument("--resume", action="store_true", help="skip the runs --out already holds")
    ap.add_argument("--verbose", action="store_true", help="the pipeline's stage messages")
    args = ap.parse_args()
    stop_cleanly_on_sigterm()
    specs = parse_list(args.methods)
    try:
        names = {parse_method_spec(s)[0] for s in specs}
    except ValueError as exc:
        raise SystemExit(f"vs_random: {exc}")
    missing = unloadable(["random", *sorted(names)])
    if missing:
        name, why = next(iter(missing.items()))
        raise SystemExit(f"vs_random: method {name!r} is {why}; it is needed for this comparison")
    if args.resume and not args.out:
        raise SystemExit("vs_random: --resume needs --out FILE")
    journal = Journal(args.out, resume=args.resume)
    runs = plan_runs(specs, [float(f) for f in parse_list(args.fractions)],
                     parse_list(args.targets), list(range(args.seeds)),
                     search_epochs=args.search_epochs, retrain_epochs=args.retrain_epochs,
                     input_size=args.input_size, dataset=args.dataset)
    print(machine_line())
    print(f"# {args.dataset} at {args.input_size}px; search epochs "
          f"{args.search_epochs or 'the method default'} (random: the same), retrain "
          f"{args.retrain_epochs}; top-1 on the test split; lat/bud: mean measured p50 / budget "
          f"(M: the method, R: random); cells pool runtimes and seeds per (method, budget)",
          flush=True)
    todo = [r for r in runs if journal.done(r["key"]) is None]
    say(f"{len(runs)} runs, {len(runs) - len(todo)} already in {args.out}" if args.resume
        else f"{len(runs)} runs")
    for i, run in enumerate(todo, 1):
        say(f"[{i}/{len(todo)}] {run['method']} {run['options'] or ''} {run['target']} "
            f"budget {run['fraction']:g} seed {run['seed']}")
        cfg = pipeline_config(run["method"], run["options"], target=run["target"],
                              fraction=run["fraction"], seed=run["seed"],
                              search_epochs=run["search_epochs"],
                              retrain_epochs=run["retrain_epochs"], input_size=run["input_size"],
                              dataset=run["dataset"], out="unused", device=args.device)
        row = run_pipeline(cfg, verbose=args.verbose)
        ident = {k: v for k, v in run.items() if k != "key"}
        journal.add(run["key"], {**ident, **row})
        say(f"  -> error: {row['error']}" if row.get("error") else
            f"  -> top1 {row['top1']:.3f}, {row['ratio']:.3f} of budget, {row['seconds']:.0f} s")
    rows = [journal.rows[r["key"]] for r in runs if r["key"] in journal.rows]
    lines, won, compared = summarize(rows)
    for line in lines:
        print(line)
    failed = [r for r in rows if r.get("error")]
    for r in failed:
        print(f"# failed: {r['method']} {r['target']} budget {r['fraction']:g} seed {r['seed']}: "
              f"{r['error']}")
    print(final_line(won, compared))


if __name__ == "__main__":
    main()
