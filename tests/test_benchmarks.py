"""The benchmarks' own logic, without their long runs: method specs, the tables and figures they
print from synthetic rows, resuming from their JSON-lines journal, and the MACs-targeted pruning
of the FLOPs-pruning baseline (one real Torch-Pruning call on a tiny net)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import _common  # noqa: E402
import latency_constraint  # noqa: E402
import vs_flops_pruning  # noqa: E402
import vs_random  # noqa: E402


# --- method specs -----------------------------------------------------------------------------

@pytest.mark.parametrize("spec, want", [
    ("dsonas", ("dsonas", {})),
    ("random:tfnas", ("random", {"space": "tfnas"})),
    ("enas:micro", ("enas", {"space": "micro"})),
    (" tfnas ", ("tfnas", {})),
])
def test_method_spec_parsing(spec, want):
    assert _common.parse_method_spec(spec) == want


@pytest.mark.parametrize("spec", ["", ":tfnas", "random:", "a:b:c"])
def test_bad_method_specs_are_refused(spec):
    with pytest.raises(ValueError, match="method spec"):
        _common.parse_method_spec(spec)


def test_random_searches_the_methods_own_space_with_its_options():
    assert _common.random_counterpart("enas", {"space": "micro"}) == {
        "space": "enas", "space_options": {"space": "micro"}}
    runs = vs_random.plan_runs(["enas:micro"], [0.6], ["onnxruntime:cpu"], [0], search_epochs=2,
                               retrain_epochs=1, input_size=16, dataset="digits")
    method, rand = runs
    assert (method["method"], method["options"]) == ("enas", {"space": "micro"})
    assert (rand["method"], rand["options"]) == ("random", {"space": "enas",
                                                            "space_options": {"space": "micro"}})
    assert method["search_epochs"] == rand["search_epochs"] == 2
    assert method["key"] != rand["key"]


def test_latency_constraint_lists_every_method_by_default():
    assert set(_common.ALL_METHODS) >= {"dsonas", "densenas", "tfnas", "enas", "nasrl", "mnasnet",
                                        "random"}
    runs = latency_constraint.plan_runs(["random:tfnas"], [0.4, 0.55, 0.7, 0.85],
                                        ["openvino:cpu", "onnxruntime:cpu"], seed=0,
                                        search_epochs=1, retrain_epochs=1, input_size=16,
                                        dataset="digits")
    assert len(runs) == 8 and all(r["options"] == {"space": "tfnas"} for r in runs)


# --- vs_random: beats_random ------------------------------------------------------------------

def _row(spec, side, frac, target, seed, top1, ratio=0.95, error=None):
    row = {"spec": spec, "side": side, "fraction": frac, "target": target, "seed": seed,
           "top1": top1, "ratio": ratio}
    if error:
        row = {k: v for k, v in row.items() if k not in ("top1", "ratio")}
        row.update(error=error, error_kind="usage")
    return row


def test_beats_random_counts_method_budget_cells_pooling_runtimes_and_seeds():
    rows = []
    # tfnas 0.4: better on openvino (0.9 vs 0.8), worse on onnxruntime (0.7 vs 0.75): pooled
    # means 0.80 vs 0.775, a win although one runtime loses
    for seed in (0, 1):
        rows += [_row("tfnas", "method", 0.4, "openvino:cpu", seed, 0.9),
                 _row("tfnas", "random", 0.4, "openvino:cpu", seed, 0.8),
                 _row("tfnas", "method", 0.4, "onnxruntime:cpu", seed, 0.7),
                 _row("tfnas", "random", 0.4, "onnxruntime:cpu", seed, 0.75)]
    # tfnas 0.6: a tie is not a win
    rows += [_row("tfnas", "method", 0.6, "openvino:cpu", 0, 0.9),
             _row("tfnas", "random", 0.6, "openvino:cpu", 0, 0.9)]
    # dsonas 0.4: random better
    rows += [_row("dsonas", "method", 0.4, "openvino:cpu", 0, 0.5),
             _row("dsonas", "random", 0.4, "openvino:cpu", 0, 0.6)]
    # dsonas 0.6: the method wins where it ran; random's only run failed: not compared
    rows += [_row("dsonas", "method", 0.6, "openvino:cpu", 0, 0.99),
             _row("dsonas", "random", 0.6, "openvino:cpu", 0, None, error="UsageError: below")]
    # a failed method run is left out of its cell's mean
    rows += [_row("dsonas", "method", 0.4, "openvino:cpu", 1, None, error="UsageError: below")]
    lines, won, compared = vs_random.summarize(rows)
    assert (won, compared) == (1, 3)
    assert vs_random.final_line(won, compared) == (
        "beats_random: 1/3 (method, budget) cells with mean top-1 higher than random's")
    pooled = [ln for ln in lines if " all " in ln]
    assert len(pooled) == 4
    tf04 = next(ln for ln in pooled if ln.startswith("tfnas") and " 0.40 " in ln)
    assert "0.800±" in tf04 and "0.775±" in tf04 and tf04.rstrip().endswith("yes")
    per_runtime = [ln for ln in lines[1:] if " all " not in ln]
    assert any(ln.startswith("tfnas") and "onnxruntime" in ln and ln.rstrip().endswith("no")
               for ln in per_runtime)
    ds06 = next(ln for ln in pooled if ln.startswith("dsonas") and " 0.60 " in ln)
    assert ds06.rstrip().endswith("n/a")


def test_beats_random_of_nothing_is_zero_of_zero():
    lines, won, compared = vs_random.summarize([])
    assert (won, compared) == (0, 0) and len(lines) == 1


# --- in-window shares -------------------------------------------------------------------------

def test_window_share_is_inclusive_at_both_ends():
    assert _common.window_share([0.9, 1.0, 0.8999, 1.0001, 0.95, None]) == (3, 6)


def test_latency_constraint_prints_each_methods_in_window_share():
    rows = [{"spec": "tfnas", "ratio": r, "top1": 0.9} for r in (0.92, 0.97, 1.05, 0.7)]
    rows += [{"spec": "random:tfnas", "ratio": 0.95, "top1": 0.8},
             {"spec": "random:tfnas", "error": "UsageError: below the smallest"}]
    lines, final = latency_constraint.summarize(rows)
    assert lines[0].startswith("# tfnas: in-window share 2/4 (50%)")
    assert lines[1].startswith("# random:tfnas: in-window share 1/2 (50%)")
    assert "1 failed" in lines[1]
    assert final == "latency_hit: 3/6 runs within [0.90, 1.00] of budget"


def test_flops_pruning_summary_counts_both_columns_in_window():
    rows = [{"spec": "tfnas", "n2d_ratio": 0.95, "ratio": 0.96, "top1": 0.9,
             "fp_ratio": 0.7, "fp_top1": 0.8},
            {"spec": "tfnas", "n2d_ratio": 1.02, "ratio": 0.99, "top1": 0.7,
             "fp_ratio": 0.93, "fp_top1": 0.6},
            {"spec": "tfnas", "error": "UsageError: below the smallest"},
            {"spec": "dsonas", "ratio": 0.9, "top1": 0.5, "fp_error": "RuntimeError: x"}]
    lines, final = vs_flops_pruning.summarize(rows)
    assert final == "in_window: nas2deploy 1/2, flops_pruning 1/2; top1: 0.800 vs 0.700"
    assert lines[0].startswith("# tfnas: in [0.90, 1.00] nas2deploy 1/2, flops_pruning 1/2")
    assert "2 runs with both columns" in lines[-1]
    assert "error" in vs_flops_pruning.row_line({"spec": "dsonas", "target": "t", "fraction": 0.4,
                                                 "seed": 0, "fp_error": "RuntimeError: x"})


# --- resume from the journal ------------------------------------------------------------------

def test_journal_resume_skips_finished_runs_and_retries_failures(tmp_path):
    out = tmp_path / "rows.jsonl"
    runs = vs_random.plan_runs(["tfnas", "dsonas"], [0.4, 0.6], ["onnxruntime:cpu"], [0, 1],
                               search_epochs=1, retrain_epochs=1, input_size=16, dataset="digits")
    assert len(runs) == 16 and len({r["key"] for r in runs}) == 16
    j = _common.Journal(out)
    j.add(runs[0]["key"], {"top1": 0.9, "ratio": 0.95})
    j.add(runs[1]["key"], {"error": "UsageError: below the smallest", "error_kind": "usage"})
    j.add(runs[2]["key"], {"error": "ParityError: off", "error_kind": "run"})
    j.add(runs[3]["key"], {"error": "ParityError: off", "error_kind": "run"})
    j.add(runs[3]["key"], {"top1": 0.8, "ratio": 0.97})  # retried: the later row stands
    with open(out, "a") as f:
        f.write('{"key": "torn')  # killed mid-write
    with pytest.raises(SystemExit, match="--resume"):
        _common.Journal(out)  # never appends to a file it was not told to resume
    again = _common.Journal(out, resume=True)
    replanned = vs_random.plan_runs(["tfnas", "dsonas"], [0.4, 0.6], ["onnxruntime:cpu"], [0, 1],
                                    search_epochs=1, retrain_epochs=1, input_size=16,
                                    dataset="digits")
    todo = [r["key"] for r in replanned if again.done(r["key"]) is None]
    assert todo == [r["key"] for r in runs if r["key"] not in
                    (runs[0]["key"], runs[1]["key"], runs[3]["key"])]
    assert again.done(runs[3]["key"])["top1"] == 0.8
    # other settings are other runs: nothing of this file counts as done for them
    other = vs_random.plan_runs(["tfnas"], [0.4], ["onnxruntime:cpu"], [0], search_epochs=2,
                                retrain_epochs=1, input_size=16, dataset="digits")
    assert all(again.done(r["key"]) is None for r in other)
    lines = out.read_text().splitlines()
    assert all(json.loads(ln)["key"] for ln in lines[:-1])


# --- the FLOPs-pruning baseline's surgery -----------------------------------------------------

def test_pruning_lands_near_the_asked_macs_ratio():
    import torch

    from nas2deploy import registry
    from nas2deploy.counting import count_macs
    from nas2deploy.materialize import materialize
    from nas2deploy.method import TaskSpec

    torch.manual_seed(0)
    method = registry.methods.get("tfnas")({
        "stem_channels": 8, "stem_block_channels": 8, "stem_se": 2, "tail_channels": 32,
        "stages": [[2, 16, 2, "relu"], [2, 32, 2, "hswish"]]})
    net = materialize(method.space(method.build(TaskSpec(1, 16, 10))).largest())
    x = net.example_input(1)
    full = count_macs(net, x)
    for ratio in (0.3, 0.6):
        pruned, width, got = vs_flops_pruning.prune_to_macs(net, ratio, x)
        assert got == pytest.approx(count_macs(pruned, x) / full)
        assert got <= ratio and got >= ratio - 0.08, (ratio, width, got)
        assert 0 < width < 1
        assert pruned(x).shape == (1, 10)
    assert count_macs(net, x) == full  # the trained net itself is left whole


def test_vs_random_stops_with_one_line_when_random_is_missing(monkeypatch, capsys):
    monkeypatch.setattr(vs_random, "unloadable",
                        lambda names: {"random": "not registered (no nas2deploy.methods entry "
                                                 "point)"} if "random" in names else {})
    monkeypatch.setattr(sys, "argv", ["vs_random.py", "--methods", "tfnas"])
    with pytest.raises(SystemExit) as exc:
        vs_random.main()
    assert str(exc.value) == ("vs_random: method 'random' is not registered (no "
                              "nas2deploy.methods entry point); it is needed for this comparison")
    assert capsys.readouterr().out == ""  # nothing was run or printed
