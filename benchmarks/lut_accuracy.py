"""How well do the latency models predict what the target runtime really measures?

Samples N random subnets of a space (its ``sample``, then ``scale_width`` at a random
multiplier), predicts each
with every model and measures each end to end on the target. The models:

- ``flops``: a + b·MACs through the largest and the smallest (min-width) subnet measured on
  the target (the pipeline's proxy before it had a per-layer term);
- ``flops_fit``: a + b·MACs fitted to those two and the calibration subnets;
- ``flops_layers``: a + b·MACs + c·layers (the pipeline's ``FlopsProxy``, which the pipeline
  refits on every network a search measures) fitted to the same networks;
- ``lut``: the space's lookup table on the target (cached; built on first use), overhead + Σ ops;
- ``calibrated``: that table fitted to a *separate* set of sampled subnets (another seed).

Every network is exported by the registered exporters exactly as a bundle is (dynamo ONNX, then
OpenVINO IR from it) -- ``--fast-export`` swaps the ONNX step for the legacy exporter -- and all
networks of a target (test, calibration, anchors) are timed interleaved in one batch, so a change
in machine load affects them alike. Prints MAPE, the share within ±10% and Kendall's tau per
model and target, the machine, and as the final line(s)
``lut_within_10pct: X% (calibrated, TARGET)``.

    python benchmarks/lut_accuracy.py --space dsonas --target openvino:cpu,onnxruntime:cpu \\
        [--samples 100] [--calibration 16] [--input-size 32] [--rebuild] [--csv out.csv]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_line  # noqa: E402

from nas2deploy import registry  # noqa: E402
from nas2deploy.counting import count_layers, count_macs  # noqa: E402
from nas2deploy.latency import FlopsProxy, TableProtocol, time_interleaved  # noqa: E402
from nas2deploy.latency.cache import get_or_build_table  # noqa: E402
from nas2deploy.latency.calibrate import CalibratedLUT  # noqa: E402
from nas2deploy.latency.collect import RunnerFactory, sample_subnets  # noqa: E402
from nas2deploy.latency.grid import WidthGrid  # noqa: E402
from nas2deploy.latency.table import LUTModel  # noqa: E402
from nas2deploy.materialize import materialize, scale_width  # noqa: E402
from nas2deploy.netspec import build_network  # noqa: E402
from nas2deploy.method import TaskSpec  # noqa: E402
from nas2deploy.runtime import exporter_for_runtime, export_chain, runner_for  # noqa: E402
from nas2deploy.exporter import ExportContext  # noqa: E402
from nas2deploy.target import Target  # noqa: E402

WITHIN = 0.10


def kendall_tau(x, y) -> float:
    """Kendall's tau-b (ties counted as neither concordant nor discordant)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    conc = disc = tx = ty = 0
    for i in range(len(x)):
        dx, dy = np.sign(x[i + 1:] - x[i]), np.sign(y[i + 1:] - y[i])
        prod = dx * dy
        conc += int((prod > 0).sum())
        disc += int((prod < 0).sum())
        tx += int(((dx == 0) & (dy != 0)).sum())
        ty += int(((dy == 0) & (dx != 0)).sum())
    denom = np.sqrt((conc + disc + tx) * (conc + disc + ty))
    return float((conc - disc) / denom) if denom > 0 else float("nan")


def metrics(pred, meas) -> dict:
    pred, meas = np.asarray(pred, float), np.asarray(meas, float)
    err = pred / meas - 1
    return {"mape": float(np.mean(np.abs(err))) * 100, "within": float(np.mean(np.abs(err) <= WITHIN)) * 100,
            "bias": float(np.median(err)) * 100, "worst": float(np.max(np.abs(err))) * 100,
            "tau": kendall_tau(pred, meas)}


def progress_factory(quiet: bool):
    if quiet:
        return None
    from tqdm.auto import tqdm

    def make(total=None, desc=None):
        return tqdm(total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True,
                    mininterval=2)

    return make


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", default="dsonas", help="a registered method name")
    ap.add_argument("--target", default="openvino:cpu,onnxruntime:cpu",
                    help="one target or several, comma-separated")
    ap.add_argument("--samples", type=int, default=100, help="test subnets (default 100)")
    ap.add_argument("--calibration", type=int, default=30, help="calibration subnets (default 30)")
    ap.add_argument("--input-size", type=int, default=32)
    ap.add_argument("--channels", type=int, default=1, help="input channels (digits: 1)")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--method-options", default="{}", help="JSON options for the method")
    ap.add_argument("--min-width", type=float, default=0.25)
    ap.add_argument("--grid", default="dense", help="'dense' or comma-separated multipliers")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    ap.add_argument("--calls", type=int, default=20, help="calls per network per round")
    ap.add_argument("--rebuild", action="store_true", help="measure the tables again")
    ap.add_argument("--fast-export", action="store_true",
                    help="export the networks with the legacy ONNX exporter (not what ships)")
    ap.add_argument("--csv", type=Path, help="write per-network figures here")
    ap.add_argument("--dump", type=Path, help="save the sampled specs and measurements here")
    ap.add_argument("--replay", type=Path,
                    help="score a --dump again with today's models (cached tables), measuring "
                         "nothing")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("CI", "true")
    progress = progress_factory(args.quiet)
    grid = "dense" if args.grid == "dense" else [float(g) for g in args.grid.split(",")]
    if grid == "dense":
        grid = WidthGrid(min_width=args.min_width)
    targets = [Target.parse(t) for t in args.target.split(",")]

    print(machine_line())
    load0 = os.getloadavg()[0]
    if not args.replay:
        print(f"# space {args.space}, {args.samples} test + {args.calibration} calibration subnets, "
              f"widths U[{args.min_width:g}, 1], input {args.channels}x{args.input_size}x"
              f"{args.input_size}, batch 1, 1 thread; loadavg(1m) at start {load0:.2f} on "
              f"{os.cpu_count()} CPUs"
              + (" -- the machine is busy: figures are noisy, rerun when it is quiet"
                 if load0 > 0.5 * (os.cpu_count() or 1) else ""))
    method = registry.methods.get(args.space)(json.loads(args.method_options))
    supernet = method.build(TaskSpec(args.channels, args.input_size, args.classes))
    if args.replay:
        d = json.loads(args.replay.read_text())
        cal_specs, test_specs, macs = d["calibration"], d["test"], d["macs"]
        measured = {k: np.array(v) for k, v in d["measured_ms"].items()}
        spreads = d["round_spread"]
        print(f"# replaying {args.replay}: {len(test_specs)} test + {len(cal_specs)} calibration "
              f"subnets measured {d['date']} on {d['machine'].lstrip('# ')}")
    else:
        cal_specs, test_specs, macs, measured, spreads = measure_all(args, method, supernet,
                                                                     targets, progress)
        if args.dump:
            args.dump.write_text(json.dumps({
                "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine_line(),
                "calibration": cal_specs, "test": test_specs, "macs": macs,
                "measured_ms": {k: v.tolist() for k, v in measured.items()},
                "round_spread": spreads}))
    tables = {}
    for target in targets:
        t = time.perf_counter()
        tables[str(target)] = get_or_build_table(
            method, supernet, target, input_size=args.input_size, grid=grid, progress=progress,
            rebuild=args.rebuild and not args.replay,
            log=lambda m: print(f"# {m}", file=sys.stderr))
        tb = tables[str(target)]
        print(f"# table {target}: {tb.summary()}; loadavg while built "
              f"{tb.meta['load']['loadavg_1m_before']}; fetched in {time.perf_counter() - t:.0f} s")
    anchor_layers = [count_layers(materialize(method.space(supernet).largest())),
                     count_layers(materialize(method.space(supernet).smallest()))]
    evaluate(args, targets, tables, cal_specs, test_specs, macs, measured, spreads, anchor_layers)


def measure_all(args, method, supernet, targets, progress):
    """Sample, export (once for all targets) and time every network; returns
    (calibration specs, test specs, MACs of [largest, smallest, cal..., test...],
    {target: p50 ms of the same list}, {target: median round spread})."""
    widths = (args.min_width, 1.0)
    t0 = time.perf_counter()
    test = sample_subnets(method, supernet, args.samples, seed=args.seed, widths=widths,
                          progress=progress, desc="test subnets")
    cal = sample_subnets(method, supernet, args.calibration, seed=args.seed + 10_000,
                         widths=widths, progress=progress, desc="calibration subnets")
    seen = {json.dumps(s.spec, sort_keys=True) for s in cal}
    test = [s for s in test if json.dumps(s.spec, sort_keys=True) not in seen]
    largest = materialize(method.space(supernet).largest())
    smallest = scale_width(materialize(method.space(supernet).smallest()), args.min_width)
    nets = [largest, smallest] + [s.net for s in cal] + [s.net for s in test]
    print(f"# sampled in {time.perf_counter() - t0:.0f} s; {len(test)} test subnets after "
          f"dropping any equal to a calibration one")
    # export every network once for all targets (the bundle's path), then time per target
    x = torch.randn(1, args.channels, args.input_size, args.input_size,
                    generator=torch.Generator().manual_seed(0))
    names = sorted({n for n in (exporter_for_runtime(t.runtime) for t in targets) if n})
    if args.fast_export:
        names = []
    runners = {str(t): [] for t in targets}
    with tempfile.TemporaryDirectory(prefix="lut-accuracy-") as tmp:
        t = time.perf_counter()
        bar = progress(total=len(nets), desc="export networks") if progress else None
        for i, net in enumerate(nets):
            folder = Path(tmp) / f"n{i:04d}"
            if args.fast_export:
                for target in targets:
                    runners[str(target)].append(RunnerFactory(
                        target, folder / target.runtime, fast_export=True)(net, x))
            else:
                ctx = ExportContext(folder, x, targets[0], {})
                arts = export_chain(net.eval(), names, ctx)
                for target in targets:
                    runners[str(target)].append(runner_for(net, target, folder, arts))
            if bar:
                bar.update(1)
        if bar:
            bar.close()
        export_s = time.perf_counter() - t
        proto = TableProtocol(warmup=10, rounds=args.rounds, calls=args.calls)
        measured = {}
        for target in targets:
            tm = time_interleaved(runners[str(target)], [x.numpy()] * len(nets), proto,
                                  progress=progress, desc=f"time {target.runtime}")
            measured[str(target)] = tm
    load1 = os.getloadavg()[0]
    how = "legacy ONNX" if args.fast_export else "registered exporters: " + ", ".join(names)
    print(f"# networks exported in {export_s:.0f} s ({how}); timed {proto.describe(1, 1)}; "
          f"loadavg(1m) now {load1:.2f}")

    example = largest.example_input(1)
    macs = [count_macs(n, example) for n in nets]
    ms = {k: np.array([t.p50_ms for t in tm]) for k, tm in measured.items()}
    spreads = {k: float(np.median([t.round_spread for t in tm])) for k, tm in measured.items()}
    return [s.spec for s in cal], [s.spec for s in test], macs, ms, spreads


def evaluate(args, targets, tables, cal_specs, test_specs, macs, measured, spreads,
             anchor_layers) -> None:
    rows = []
    finals = []
    print(f"{'target':<22} {'model':<13} {'MAPE %':>7} {'±10% %':>7} {'bias %':>7} {'worst %':>8} "
          f"{'tau':>6}")
    for target in targets:
        key = str(target)
        ms = np.asarray(measured[key], dtype=float)
        spread = spreads[key]
        table = tables[key]
        n_cal = len(cal_specs)
        flops = FlopsProxy([(macs[0], ms[0]), (macs[1], ms[1])])
        # the same networks the calibrated table is fitted to: the two anchors and the cal subnets
        layers = anchor_layers + [count_layers(build_network(sp)) for sp in cal_specs]
        fit_points = [(macs[i], layers[i], ms[i]) for i in range(2 + n_cal)]
        fit2 = FlopsProxy([(m, t) for m, _, t in fit_points])
        fit3 = FlopsProxy(fit_points)
        calibrated = CalibratedLUT.from_measurements(
            table, cal_specs, ms[2:2 + n_cal], info={"seed": args.seed + 10_000, "target": key})
        plain = LUTModel(table)
        test_ms = ms[2 + n_cal:]
        preds = {
            "flops": [flops.a + flops.b * m for m in macs[2 + n_cal:]],
            "flops_fit": [fit2.a + fit2.b * m for m in macs[2 + n_cal:]],
            "flops_layers": [fit3.predict(sp) for sp in test_specs],
            "lut": [plain.predict(s) for s in test_specs],
            "calibrated": [calibrated.predict(s) for s in test_specs],
        }
        for model, p in preds.items():
            m = metrics(p, test_ms)
            print(f"{key:<22} {model:<13} {m['mape']:>7.2f} {m['within']:>7.1f} {m['bias']:>+7.1f} "
                  f"{m['worst']:>8.1f} {m['tau']:>6.3f}")
        fit = calibrated.fit
        print(f"#   {key}: {len(test_ms)} test nets, measured {test_ms.min():.4f}..{test_ms.max():.4f} "
              f"ms p50 (median round spread {spread * 100:.1f}%); calibration on {n_cal} nets: "
              f"{fit['form']} {json.dumps({k: float(f'{v:.4g}') for k, v in fit['coefficients'].items()})}, "
              f"in-sample MAPE {fit['mape_pct']:.2f}%, leave-one-out {fit['loo_mape_pct']:.2f}%")
        within = metrics(preds["calibrated"], test_ms)["within"]
        finals.append(f"lut_within_10pct: {within:.0f}% (calibrated, {target.runtime}:{target.device})")
        for i, spec in enumerate(test_specs):
            rows.append({"target": key, "ops": table.network_sum(spec)[1],
                         "macs": macs[2 + n_cal + i], "measured_ms": test_ms[i],
                         **{f"{k}_ms": v[i] for k, v in preds.items()}})
    if args.csv:
        import csv

        with args.csv.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    for line in finals:
        print(line)


if __name__ == "__main__":
    main()
