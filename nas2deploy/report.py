"""The human side of a bundle: report.md with the architecture drawn and the search curves."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .architecture import Architecture  # noqa: E402

_COLORS = {"conv": "#4c72b0", "sep": "#55a868", "pool": "#c44e52", "mbconv": "#8172b2",
           "sum": "#cccccc", "bn_act": "#dddddd", "identity": "#eeeeee", "head": "#937860"}


def _label(node: dict[str, Any]) -> str:
    op = node["op"]
    if op == "conv":
        return f"conv{node['k']}x{node['k']}/{node['stride']}\n{node['c_in']}→{node['c_out']}"
    if op == "sep":
        return f"sep{node['k']}\n{node['c_out']}"
    if op == "pool":
        return f"{node['kind']}pool\n{node['c']}"
    if op == "mbconv":
        return f"mb k{node['k']} s{node['stride']}\n{node['c_in']}→{node['mid']}→{node['c_out']}"
    if op == "head":
        return f"head\n{node['c_in']}→{node['num_classes']}"
    return "+" if op == "sum" else op


def draw_architecture(spec: dict[str, Any], path: Path) -> None:
    """Nodes placed by their longest distance from the input; edges as lines."""
    depth = {"input": 0}
    for n in spec["nodes"]:
        depth[n["id"]] = 1 + max(depth[i] for i in n["inputs"])
    rows = defaultdict(list)
    for nid, d in depth.items():
        rows[d].append(nid)
    pos = {nid: (d, -k + (len(rows[d]) - 1) / 2) for d, ids in rows.items()
           for k, nid in enumerate(ids)}
    width = max(6.0, 0.9 * len(rows))
    height = max(3.0, 0.9 * max(len(v) for v in rows.values()))
    fig, ax = plt.subplots(figsize=(min(width, 60), min(height, 20)))
    for n in spec["nodes"]:
        for i in n["inputs"]:
            (x0, y0), (x1, y1) = pos[i], pos[n["id"]]
            ax.plot([x0, x1], [y0, y1], color="#999999", lw=0.8, zorder=1)
    ax.text(*pos["input"], "input", ha="center", va="center", fontsize=7,
            bbox={"boxstyle": "round", "fc": "white"})
    for n in spec["nodes"]:
        ax.text(*pos[n["id"]], _label(n), ha="center", va="center", fontsize=6, zorder=2,
                bbox={"boxstyle": "round", "fc": _COLORS.get(n["op"], "white"), "alpha": 0.9})
    ax.set_axis_off()
    ax.set_xlim(-0.7, max(rows) + 0.7)
    ax.set_title("derived architecture (materialized subnet), input → output left to right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_curves(manifest: dict[str, Any], path: Path) -> None:
    search = manifest["search"]["history"]
    retrain = manifest["retrain"]["history"]
    lat = manifest["latency"]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    after = range(len(search), len(search) + len(retrain))
    ax = axes[0]
    ax.plot([r.get("loss", float("nan")) for r in search], label="search")
    ax.plot(after, [r["loss"] for r in retrain], label="retrain")
    ax.set(xlabel="epoch", title="training loss")
    ax.legend()
    ax = axes[1]
    ax.plot([r.get("val_acc", float("nan")) for r in search], label="search (supernet)")
    ax.plot(after, [r.get("val_acc", float("nan")) for r in retrain], label="retrain (subnet)")
    ax.set(xlabel="epoch", title="validation accuracy")
    ax.legend()
    ax = axes[2]
    pred = [r.get("predicted_ms") for r in search]
    if any(p is not None for p in pred):
        ax.plot([p if p is not None else float("nan") for p in pred], label="derived net, predicted")
        ax.axhline(lat["budget_ms"], color="red", ls="--", label="budget")
        ax.set_ylabel("ms")
    alive = [r.get("alive_edges") for r in search]
    if any(a is not None for a in alive):
        ax2 = ax.twinx()
        ax2.plot([a if a is not None else float("nan") for a in alive], color="green",
                 label="alive edges")
        ax2.set_ylabel("alive edges")
        ax2.legend(loc="lower left", fontsize=7)
    ax.set(xlabel="search epoch", title="search: cost of the derived net")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax = axes[3]
    rounds = lat["rounds"]
    idx = [r["round"] for r in rounds]
    ax.plot(idx, [float("nan") if r["measured_p50_ms"] is None else r["measured_p50_ms"]
                  for r in rounds], "o-", label="measured p50")
    ax.plot(idx, [r["predicted_ms"] for r in rounds], "x--", label="predicted")
    ax.axhline(lat["budget_ms"], color="red", ls="--", label="budget")
    ax.set(xlabel="round", ylabel="ms", title="closed loop on the target")
    ax.set_xticks(idx)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(bundle: Path, manifest: dict[str, Any], arch: Architecture) -> dict[str, str]:
    draw_architecture(arch.network, bundle / "architecture.png")
    draw_curves(manifest, bundle / "curves.png")
    lat, acc, model = manifest["latency"], manifest["accuracy"], manifest["model"]
    t = manifest["target"]
    where = (f"{t['runtime']}:{t['device']}:{t['precision']}, batch {t['batch']}, "
             f"{t['threads']} thread(s)")
    measured = lat["measured"]
    if measured:
        verdict = "within budget" if lat["within_budget"] else "OVER BUDGET"
        head = (f"**Verdict: {verdict}**: measured p50 {measured['p50_ms']:.4f} ms vs budget "
                f"{lat['budget_ms']:.4f} ms ({lat['ratio_to_budget']:.2f}) on {where}.")
    else:
        head = (f"**Verdict: not measured here**: predicted {lat['predicted_ms']:.4f} ms vs budget "
                f"{lat['budget_ms']:.4f} ms on {where}; {lat['verdict']}.")
    lines = [
        f"# nas2deploy report: {manifest['method']['name']} on {manifest['dataset']['name']}",
        "", head, "",
        "| | |", "|---|---|",
        f"| test top-1 (PyTorch) | {acc['top1']:.4f} on {acc['samples']} images |",
    ]
    if acc["runtime_top1"] is not None:
        lines.append(f"| test top-1 ({acc['runtime']}) | {acc['runtime_top1']:.4f} |")
    lines += [
        f"| params / MACs | {model['params']:,} / {model['macs']:,} |",
        f"| width multiplier | {model['width_multiplier']:g} |",
        f"| predicted latency | {lat['predicted_ms']:.4f} ms ({lat['latency_model']['name']} model) |",
    ]
    if measured:
        lines.append(f"| measured p50 / p90 | {measured['p50_ms']:.4f} / {measured['p90_ms']:.4f} "
                     f"ms ({measured['runs']} runs) |")
    lines.append(f"| budget | {lat['budget_ms']:.4f} ms ({lat['budget_source']}) |")
    for fmt, p in manifest["parity"].items():
        if not p.get("verified", True):
            check = f"not verified here: {p.get('reason', '')}"
        elif "max_abs_diff" in p:
            check = f"max abs diff {p['max_abs_diff']:.2e} (atol {p['atol']:.0e})"
        else:
            check = (f"top-1 agreement with fp32 {p['top1_agreement']:.2%}, accuracy drop "
                     f"{p['accuracy_drop_points']:.2f} points")
        lines.append(f"| parity {fmt} | {check} |")
    quant = manifest.get("precision", {}).get("quantization")
    if quant:
        lines.append(f"| int8 quantization | {quant['method']}; calibrated on "
                     f"{quant['calibration_samples']} images ({quant['calibration_source']}) |")
    lines += ["", "Timing protocol: " + (measured["protocol"] if measured else "not timed here"), "",
              "## Closed-loop rounds", "",
              "| round | stage | width | predicted ms | measured p50 ms | within |",
              "|---|---|---|---|---|---|"]
    for r in lat["rounds"]:
        got = "-" if r["measured_p50_ms"] is None else f"{r['measured_p50_ms']:.4f}"
        ok = {True: "yes", False: "no"}.get(r["within_budget"], "-")
        lines.append(f"| {r['round']} | {r['stage']} | {r['width_multiplier']:g} | "
                     f"{r['predicted_ms']:.4f} | {got} | {ok} |")
    lines += ["", "## Architecture", "", "![architecture](architecture.png)", "",
              "## Search and retraining curves", "", "![curves](curves.png)", ""]
    (bundle / "report.md").write_text("\n".join(lines))
    return {"architecture_figure": "architecture.png", "curves_figure": "curves.png"}
