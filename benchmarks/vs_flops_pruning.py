"""nas2deploy against what a user without it would do: FLOPs-targeted pruning of the largest net.

The baseline, per method space (``--methods``; ``NAME:SPACE`` picks a space) and seed: the
space's largest subnet (``space(supernet).largest()``, materialized), trained for as many epochs
as nas2deploy searches (``--pretrain-epochs``, default the search epochs), then pruned with
Torch-Pruning (L2 magnitude over the dependency graph: ``nas2deploy.materialize.scale_width``,
the surgery nas2deploy itself uses) to the MACs ratio the budget implies (budget / largest
subnet's measured p50 = the budget fraction), choosing the widest uniform width multiplier whose
MACs are at most that ratio, fine-tuned with ``nas2deploy.train.fit`` on the same data for as
many epochs as nas2deploy retrains, and exported with the same exporter. No channel alignment to
the runtime and no measurement steer it: the MACs ratio is the user's whole latency model.

The nas2deploy column is a full ``search_and_export`` run at the same budget, target and seed.
Both artifacts are then timed in the same session, side by side with the largest subnet, by the
pipeline's own timer (``nas2deploy.runtime.SideBySide``, the verdict's protocol): measured /
budget = (p50 / largest's p50, timed interleaved) / fraction, the verdict's own definition. The
manifest's verdict (``manifest``) is printed too. Top-1 is the PyTorch model's on the test split
for both, as the manifest records it.

Final line: ``in_window: nas2deploy K1/N, flops_pruning K2/N; top1: X vs Y`` (runs within
[0.90, 1.00] of the budget in the side-by-side timing; mean top-1 over the runs).

    python benchmarks/vs_flops_pruning.py [--methods dsonas,densenas,tfnas,enas]
        [--fractions 0.4,0.6,0.8] [--targets openvino:cpu,onnxruntime:cpu] [--seeds 1]
        [--search-epochs N] [--retrain-epochs N] [--pretrain-epochs N] [--input-size 32]
        [--out rows.jsonl [--resume]] [--verbose]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (HI, LO, Journal, default_search_epochs, machine_line,  # noqa: E402
                     parse_list, parse_method_spec, pipeline_config, run_key, run_pipeline, say,
                     stop_cleanly_on_sigterm, unloadable, window_share)

from nas2deploy import __version__, registry  # noqa: E402
from nas2deploy.config import RunConfig  # noqa: E402
from nas2deploy.counting import count_macs  # noqa: E402
from nas2deploy.data import open_dataset  # noqa: E402
from nas2deploy.device import on  # noqa: E402
from nas2deploy.device import resolve as resolve_compute  # noqa: E402
from nas2deploy.exporter import Artifact, ExportContext  # noqa: E402
from nas2deploy.materialize import materialize, scale_width  # noqa: E402
from nas2deploy.method import TaskSpec  # noqa: E402
from nas2deploy.netspec import GraphNet  # noqa: E402
from nas2deploy.runtime import (SideBySide, artifact_loader, export_chain,  # noqa: E402
                                exporter_for_runtime, resolve_chain)
from nas2deploy.stages.export import verify  # noqa: E402
from nas2deploy.stages.verdict import VERDICT_SECONDS  # noqa: E402
from nas2deploy.target import Target  # noqa: E402
from nas2deploy.train import accuracy, fit  # noqa: E402


def prune_to_macs(net: GraphNet, ratio: float, example: torch.Tensor, *, round_to: int = 1,
                  min_width: float = 0.05, iters: int = 8) -> tuple[GraphNet, float, float]:
    """(pruned copy, width multiplier, its MACs / ``net``'s MACs): the widest uniform width
    (Torch-Pruning's channel surgery) whose MACs are at most ``ratio`` of ``net``'s, found by
    bisection; ``min_width``'s net where even that is over."""
    full = count_macs(net, example)
    if ratio >= 1:
        return copy.deepcopy(net), 1.0, 1.0
    lo, hi = min_width, 1.0
    best = scale_width(net, lo, round_to=round_to)
    best_width, best_ratio = lo, count_macs(best, example) / full
    for _ in range(iters):
        mid = (lo + hi) / 2
        cand = scale_width(net, mid, round_to=round_to)
        got = count_macs(cand, example) / full
        if got <= ratio:
            lo, best, best_width, best_ratio = mid, cand, mid, got
        else:
            hi = mid
    return best, best_width, best_ratio


def bundle_loader(bundle: Path, manifest: dict[str, Any], target: Target):
    """Loads the bundle's artifact for ``target`` as ``nas2deploy measure`` does."""
    arts = {n: Artifact(n, a["files"], a.get("info", {}))
            for n, a in manifest.get("artifacts", {}).items()}
    return artifact_loader(None, target, bundle, arts)


class Baseline:
    """The largest subnet of each (space, seed), trained once and kept for every budget."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.compute = resolve_compute(args.device, "auto")
        self._data: dict[int, Any] = {}
        self._trained: dict[tuple[str, int], GraphNet] = {}

    def data(self, seed: int):
        if seed not in self._data:
            ds = open_dataset(self.args.dataset, input_size=self.args.input_size, seed=seed)
            self._data[seed] = (ds, ds.batches(device=self.compute.device, workers=0))
        return self._data[seed]

    def space(self, spec: str, seed: int):
        ds, _ = self.data(seed)
        name, options = parse_method_spec(spec)
        torch.manual_seed(seed)  # as the pipeline seeds before it builds the supernet
        method = registry.methods.get(name)(options)
        return method.space(method.build(TaskSpec(ds.channels, ds.input_size, ds.num_classes)))

    def trained_largest(self, spec: str, seed: int, epochs: int) -> GraphNet:
        if (spec, seed) not in self._trained:
            net = materialize(self.space(spec, seed).largest())
            say(f"  baseline: training the largest {spec} subnet for {epochs} epochs")
            with on(net, self.compute):
                fit(net, self.data(seed)[1], epochs=epochs, seed=seed, compute=self.compute)
            self._trained[(spec, seed)] = net.eval()
        return self._trained[(spec, seed)]

    def run(self, run: dict[str, Any], bundle: Path, manifest: dict[str, Any]) -> dict[str, Any]:
        """Prune, fine-tune, export; then time it and the nas2deploy bundle side by side."""
        spec, seed, frac = run["spec"], run["seed"], run["fraction"]
        _, data = self.data(seed)
        target = Target.parse(run["target"], batch=1, threads=1)
        largest = self.trained_largest(spec, seed, run["pretrain_epochs"])
        example = largest.example_input(1)
        pruned, width, macs_ratio = prune_to_macs(largest, frac, example)
        say(f"  baseline: pruned to width x{width:.3f} ({macs_ratio:.3f} of the MACs), "
            f"fine-tuning {run['retrain_epochs']} epochs")
        with on(pruned, self.compute):
            fit(pruned, data, epochs=run["retrain_epochs"], seed=seed, compute=self.compute)
        pruned.eval()
        top1 = accuracy(pruned, data.ordered("test", device="cpu"))
        shape = tuple(example.shape)
        with tempfile.TemporaryDirectory(prefix="n2d-prune-") as tmp:
            names = resolve_chain([exporter_for_runtime(target.runtime) or "onnx"])
            xctx = ExportContext(Path(tmp), data.first("test", target.batch), target,
                                 {"nas2deploy_version": __version__})
            export_chain(pruned, names, xctx)
            verify(pruned, names, xctx, data, RunConfig())  # a typed error on a parity miss
            reference = materialize(self.space(spec, seed).largest())
            side = SideBySide(reference, target, shape,
                              manifest["latency"]["reference"]["largest_p50_ms"])
            try:
                # alternate who goes first, so neither always meets the CPU a little warmer
                loads = [("n2d", bundle_loader(bundle, manifest, target)),
                         ("fp", artifact_loader(pruned, target, Path(tmp), xctx.artifacts))]
                if seed % 2:
                    loads.reverse()
                timed = {who: side.time(load, seconds=VERDICT_SECONDS) for who, load in loads}
            finally:
                side.close()
        return {"fp_top1": top1, "fp_width": width, "fp_macs_ratio": macs_ratio,
                "fp_macs": count_macs(pruned, example),
                "largest_macs": count_macs(largest, example),
                "fp_ratio": timed["fp"].ratio / frac, "n2d_ratio": timed["n2d"].ratio / frac,
                "reference_p50_ms": timed["n2d"].reference_p50_ms}


def baseline_row(baseline: Baseline, run: dict[str, Any], bundle: Path,
                 manifest: dict[str, Any]) -> dict[str, Any]:
    """``baseline.run``, or ``fp_error`` where the baseline fails (the nas2deploy row stays)."""
    try:
        return baseline.run(run, bundle, manifest)
    except Exception as exc:  # a pruning or export failure of the baseline is its result
        say(f"  baseline failed: {type(exc).__name__}: {exc}")
        return {"fp_error": f"{type(exc).__name__}: {exc}"}


def plan_runs(specs: list[str], fractions: list[float], targets: list[str], seeds: list[int], *,
              search_epochs: int | None, retrain_epochs: int, pretrain_epochs: int | None,
              input_size: int, dataset: str) -> list[dict[str, Any]]:
    runs = []
    for spec in specs:
        name, options = parse_method_spec(spec)
        epochs = search_epochs if search_epochs is not None else default_search_epochs(name)
        for seed in seeds:  # seed outermost per space: one trained largest net serves them all
            for target in targets:
                for frac in fractions:
                    ident = {"bench": "vs_flops_pruning", "spec": spec, "method": name,
                             "options": options, "fraction": frac, "target": target,
                             "seed": seed, "search_epochs": epochs,
                             "retrain_epochs": retrain_epochs,
                             "pretrain_epochs": (pretrain_epochs if pretrain_epochs is not None
                                                 else epochs or 0),
                             "input_size": input_size, "dataset": dataset}
                    runs.append({**ident, "key": run_key(**ident)})
    return runs


def row_line(r: dict[str, Any]) -> str:
    head = f"{r['spec']:<14} {r['target']:<16} {r['fraction']:>5.2f} {r['seed']:>4}"
    if r.get("error") or "fp_ratio" not in r:
        return f"{head}  error: {r.get('error') or r.get('fp_error')}"
    return (f"{head} {r['n2d_ratio']:>8.3f} {r['ratio']:>8.3f} {r['top1']:>7.3f} "
            f"{r['fp_ratio']:>8.3f} {r['fp_macs_ratio']:>6.3f} {r['fp_top1']:>7.3f}")


HEADER = (f"{'method':<14} {'target':<16} {'frac':>5} {'seed':>4} {'n2d m/b':>8} {'manifest':>8} "
          f"{'n2d top1':>7} {'fp m/b':>8} {'fp MACs':>6} {'fp top1':>7}")


def summarize(rows: list[dict[str, Any]]) -> tuple[list[str], str]:
    """(summary lines, final line) over the rows that have both columns."""
    ok = [r for r in rows if not r.get("error") and "fp_ratio" in r]
    n = len(ok)
    k1, _ = window_share([r["n2d_ratio"] for r in ok])
    k2, _ = window_share([r["fp_ratio"] for r in ok])
    t1 = statistics.fmean(r["top1"] for r in ok) if ok else float("nan")
    t2 = statistics.fmean(r["fp_top1"] for r in ok) if ok else float("nan")
    lines = []
    for spec in dict.fromkeys(r["spec"] for r in ok):
        mine = [r for r in ok if r["spec"] == spec]
        a, m = window_share([r["n2d_ratio"] for r in mine])
        b, _ = window_share([r["fp_ratio"] for r in mine])
        lines.append(f"# {spec}: in [{LO:.2f}, {HI:.2f}] nas2deploy {a}/{m}, "
                     f"flops_pruning {b}/{m}; "
                     f"under budget {sum(r['n2d_ratio'] <= HI for r in mine)}/{m} vs "
                     f"{sum(r['fp_ratio'] <= HI for r in mine)}/{m}; top-1 "
                     f"{statistics.fmean(r['top1'] for r in mine):.3f} vs "
                     f"{statistics.fmean(r['fp_top1'] for r in mine):.3f}")
    pct = (lambda k: f"{k / n:.0%}") if n else (lambda k: "-")
    lines.append(f"# in-window share: nas2deploy {pct(k1)}, flops_pruning {pct(k2)}; mean top-1 "
                 f"{t1:.3f} vs {t2:.3f} ({n} runs with both columns)")
    return lines, (f"in_window: nas2deploy {k1}/{n}, flops_pruning {k2}/{n}; top1: {t1:.3f} vs "
                   f"{t2:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default="dsonas,densenas,tfnas,enas")
    ap.add_argument("--fractions", default="0.4,0.6,0.8")
    ap.add_argument("--targets", default="openvino:cpu,onnxruntime:cpu")
    ap.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1")
    ap.add_argument("--search-epochs", type=int, default=None,
                    help="nas2deploy's search epochs (default: the method's own)")
    ap.add_argument("--retrain-epochs", type=int, default=12,
                    help="nas2deploy's retrain epochs, and the pruned net's fine-tuning epochs")
    ap.add_argument("--pretrain-epochs", type=int, default=None,
                    help="epochs the largest net is trained before pruning (default: the "
                         "search epochs)")
    ap.add_argument("--input-size", type=int, default=32)
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--device", default="auto", help="where training runs")
    ap.add_argument("--out", default=None, help="JSON-lines file of finished runs")
    ap.add_argument("--resume", action="store_true", help="skip the runs --out already holds")
    ap.add_argument("--verbose", action="store_true", help="the pipeline's stage messages")
    args = ap.parse_args()
    stop_cleanly_on_sigterm()
    specs = parse_list(args.methods)
    try:
        missing = unloadable(sorted({parse_method_spec(s)[0] for s in specs}))
    except ValueError as exc:
        raise SystemExit(f"vs_flops_pruning: {exc}")
    if missing:
        name, why = next(iter(missing.items()))
        raise SystemExit(f"vs_flops_pruning: method {name!r} is {why}")
    if args.resume and not args.out:
        raise SystemExit("vs_flops_pruning: --resume needs --out FILE")
    journal = Journal(args.out, resume=args.resume)
    runs = plan_runs(specs, [float(f) for f in parse_list(args.fractions)],
                     parse_list(args.targets), list(range(args.seeds)),
                     search_epochs=args.search_epochs, retrain_epochs=args.retrain_epochs,
                     pretrain_epochs=args.pretrain_epochs, input_size=args.input_size,
                     dataset=args.dataset)
    print(machine_line())
    print(f"# {args.dataset} at {args.input_size}px; m/b: measured p50 / budget, both artifacts "
          f"timed side by side with the largest subnet (the verdict's protocol, "
          f"{VERDICT_SECONDS:g} s each); manifest: the nas2deploy run's own verdict; fp: the "
          f"largest subnet pruned by Torch-Pruning to the budget's MACs ratio, fine-tuned "
          f"{args.retrain_epochs} epochs", flush=True)
    print(HEADER, flush=True)
    baseline = Baseline(args)
    todo = [r for r in runs if journal.done(r["key"]) is None]
    say(f"{len(runs)} runs" + (f", {len(runs) - len(todo)} already in {args.out}"
                               if args.resume else ""))
    for r in runs:
        if journal.done(r["key"]) is not None:
            print(row_line(journal.rows[r["key"]]), flush=True)
    for i, run in enumerate(todo, 1):
        say(f"[{i}/{len(todo)}] {run['spec']} {run['target']} budget {run['fraction']:g} "
            f"seed {run['seed']}")
        cfg = pipeline_config(run["method"], run["options"], target=run["target"],
                              fraction=run["fraction"], seed=run["seed"],
                              search_epochs=run["search_epochs"],
                              retrain_epochs=run["retrain_epochs"], input_size=run["input_size"],
                              dataset=run["dataset"], out="unused", device=args.device)
        row = run_pipeline(cfg, keep=lambda b, m, run=run: baseline_row(baseline, run, b, m),
                           verbose=args.verbose)
        journal.add(run["key"], {**{k: v for k, v in run.items() if k != "key"}, **row})
        print(row_line(journal.rows[run["key"]]), flush=True)
        say(f"  -> {row['seconds']:.0f} s")
    rows = [journal.rows[r["key"]] for r in runs if r["key"] in journal.rows]
    lines, final = summarize(rows)
    for line in lines:
        print(line)
    print(final)


if __name__ == "__main__":
    main()
