"""Latency measurement with a real onnxruntime runner, and the FLOPs proxy used during search.

Nothing here asserts a wall-clock speed: only the protocol's bookkeeping and the proxy's algebra.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from nas2deploy.counting import count_macs
from nas2deploy.exporter import ExportContext
from nas2deploy.latency import FlopsProxy, Protocol, measure
from nas2deploy.netspec import build_network
from nas2deploy.target import Target
from nas2deploy_exporters.to_onnx import OnnxExporter

onnx_missing = OnnxExporter.unavailable_reason()


def spec(width: int = 8, mid: int = 16) -> dict:
    return {
        "input": {"channels": 1, "size": [16, 16]},
        "num_classes": 10,
        "nodes": [
            {"id": "stem", "op": "conv", "inputs": ["input"], "c_in": 1, "c_out": width, "k": 3},
            {"id": "mb", "op": "mbconv", "inputs": ["stem"], "c_in": width, "c_out": width,
             "mid": mid, "k": 3},
            {"id": "head", "op": "head", "inputs": ["mb"], "c_in": width, "num_classes": 10},
        ],
        "output": "head",
    }


@pytest.fixture(scope="module")
def ort_runner(tmp_path_factory):
    if onnx_missing:
        pytest.skip(f"ONNX: {onnx_missing}")
    torch.manual_seed(0)
    net = build_network(spec()).eval()
    bundle = tmp_path_factory.mktemp("latency")
    target = Target("onnxruntime", threads=1)
    ctx = ExportContext(bundle, net.example_input(1), target, {})
    art = OnnxExporter().export(net, ctx)
    return OnnxExporter().runner(bundle, art, target)


@pytest.fixture
def x():
    return np.random.default_rng(0).standard_normal((1, 1, 16, 16), dtype=np.float32)


def test_measure_with_onnxruntime_runner(ort_runner, x):
    proto = Protocol(warmup=5, runs=200, min_runs=20, max_seconds=0.5, min_seconds=0.0)
    rep = measure(ort_runner, x, batch=1, threads=1, protocol=proto)
    assert 0 < rep.min_ms <= rep.p50_ms <= rep.p90_ms
    assert rep.min_ms <= rep.mean_ms
    assert proto.min_runs <= rep.runs <= proto.runs
    assert len(rep.samples_ms) == rep.runs
    assert "1 intra-op thread" in rep.protocol and "batch 1" in rep.protocol
    assert "samples_ms" not in rep.to_dict() and len(rep.to_dict(samples=True)["samples_ms"]) == rep.runs


def test_measure_stops_at_min_runs_when_over_time(ort_runner, x):
    proto = Protocol(warmup=1, runs=500, min_runs=12, max_seconds=0.0)
    rep = measure(ort_runner, x, batch=4, threads=3, protocol=proto)
    assert rep.runs == 12
    assert "3 intra-op thread" in rep.protocol and "batch 4" in rep.protocol


def test_measure_counts_every_call(x):
    calls = []
    proto = Protocol(warmup=3, runs=25, min_runs=5, max_seconds=60.0, min_seconds=0.0)
    rep = measure(lambda a: calls.append(a.shape), x, protocol=proto)
    assert len(calls) == 3 + 25 and rep.runs == 25


def test_measure_goes_on_until_min_seconds_of_calls(x):
    calls = []
    proto = Protocol(warmup=0, runs=10, min_runs=5, max_seconds=60.0, min_seconds=0.05,
                     max_runs=100000)

    def slow(a):
        calls.append(1)
        time.sleep(0.001)

    rep = measure(slow, x, protocol=proto)
    assert rep.runs == len(calls) > 10  # 10 calls of ≥1 ms cannot fill 50 ms
    assert "at least 0.05 s" in rep.protocol
    capped = measure(slow, x, protocol=Protocol(warmup=0, runs=10, min_seconds=60.0, max_runs=15))
    assert capped.runs == 15


def test_flops_proxy_fits_two_anchors_exactly():
    small, large = spec(8, 16), spec(16, 48)
    proxy = FlopsProxy([(1, 0.0), (2, 0.0)])  # placeholder, only to reach .macs
    m_small, m_large = proxy.macs(small), proxy.macs(large)
    assert m_small < m_large
    net = build_network(small)
    assert m_small == count_macs(net, net.example_input(1))
    proxy = FlopsProxy([(m_small, 0.08), (m_large, 0.20)])
    assert proxy.predict(small) == pytest.approx(0.08, rel=1e-9)
    assert proxy.predict(large) == pytest.approx(0.20, rel=1e-9)
    assert proxy.a > 0 and proxy.b > 0  # per-call overhead plus a cost per MAC
    d = proxy.describe()
    assert d["name"] == "flops" and len(d["anchors"]) == 2


def test_flops_proxy_is_monotonic_in_macs():
    specs = [spec(w, m) for w, m in [(4, 8), (8, 16), (8, 32), (12, 32), (16, 48), (24, 64)]]
    proxy = FlopsProxy([(10_000, 0.05), (400_000, 0.4)])
    macs = [proxy.macs(s) for s in specs]
    preds = [proxy.predict(s) for s in specs]
    order = np.argsort(macs)
    assert all(np.diff(np.asarray(preds)[order]) > 0)


def test_flops_proxy_needs_two_anchors():
    with pytest.raises(ValueError):
        FlopsProxy([(1000, 0.1)])


def deep_spec(blocks: int, width: int = 8, mid: int = 16) -> dict:
    s = spec(width, mid)
    nodes = s["nodes"][:1]
    prev = "stem"
    for i in range(blocks):
        nodes.append({"id": f"mb{i}", "op": "mbconv", "inputs": [prev], "c_in": width,
                      "c_out": width, "mid": mid, "k": 3})
        prev = f"mb{i}"
    nodes.append({"id": "head", "op": "head", "inputs": [prev], "c_in": width, "num_classes": 10})
    return {**s, "nodes": nodes}


def test_flops_proxy_fits_a_cost_per_layer_from_three_anchors():
    """Networks with the same MACs but more layers cost more on a CPU runtime; three anchors
    whose layer counts differ recover a + b·MACs + c·layers exactly, and a fourth network is
    predicted by the same law."""
    a, b, c = 0.02, 2e-6, 0.004
    probe = FlopsProxy([(1, 0.1), (2, 0.2)])
    law = {}
    for s in (deep_spec(1, 8, 16), deep_spec(1, 8, 64), deep_spec(4, 8, 16), deep_spec(3, 16, 32)):
        macs, layers = probe.features(s)
        law[id(s)] = (s, macs, layers, a + b * macs + c * layers)
    (s1, m1, l1, t1), (s2, m2, l2, t2), (s3, m3, l3, t3), (s4, m4, l4, t4) = law.values()
    assert l1 == l2 < l3  # same layers, more MACs; then more layers
    proxy = FlopsProxy([(m1, l1, t1), (m2, l2, t2), (m3, l3, t3)])
    assert (proxy.a, proxy.b, proxy.c) == pytest.approx((a, b, c), rel=1e-6)
    assert proxy.predict(s4) == pytest.approx(t4, rel=1e-6)
    # two anchors: the old law, a + b·MACs, and no per-layer term
    two = FlopsProxy([(m1, l1, t1), (m2, l2, t2)])
    assert two.c == 0.0 and two.predict(s2) == pytest.approx(t2, rel=1e-9)
    # observe: a measured network joins the fit; the version tells caches to drop their costs
    version = two.version
    two.observe(s3, t3)
    assert two.version == version + 1 and two.observed == 1 and len(two.anchors) == 3
    assert two.predict(s4) == pytest.approx(t4, rel=1e-6)
    assert two.describe()["ms_per_layer"] == pytest.approx(c, rel=1e-6)


def test_nonneg_least_squares_clamps_a_negative_intercept():
    from nas2deploy.latency.model import _nonneg_lstsq

    x = np.array([1.0, 2.0, 3.0])
    a = np.stack([np.ones(3), x], axis=1)
    coef = _nonneg_lstsq(a, 2 * x - 1)  # unconstrained: intercept −1, slope 2
    assert coef[0] == 0.0
    assert coef[1] == pytest.approx(22 / 14)  # Σxy / Σx² with the intercept held at 0
    assert _nonneg_lstsq(a, 0.5 + 0.25 * x) == pytest.approx([0.5, 0.25])


def test_side_by_side_reports_the_ratio_at_the_reference_speed_of_the_start():
    """Bookkeeping of SideBySide: the candidate's p50 is its ratio to the reference, timed
    interleaved in one run, times the reference's p50 when the budget was set. A 3 ms call beside
    a tiny eager network is many times slower than it, whatever the machine."""
    from nas2deploy.runtime import SideBySide

    net = build_network(spec(8, 16)).eval()
    side = SideBySide(net, Target.parse("torch:cpu"), (1, 1, 16, 16), reference_ms=0.5,
                      seconds=0.3, instances=3)
    loads = []

    def load():
        loads.append(1)

        def slow(x):
            time.sleep(0.003)
            return np.zeros((1, 10), np.float32)
        return slow

    try:
        t = side.time(load)
    finally:
        side.close()
    assert len(loads) == 3 and len(t.instance_ratios) == 3  # a fresh load per pair
    assert t.raw_p50_ms >= 3.0 and t.ratio > 3.0
    assert t.ratio == pytest.approx(float(np.median(t.instance_ratios)))
    assert t.ratio == pytest.approx(t.raw_p50_ms / t.reference_p50_ms)
    assert t.p50_ms == pytest.approx(t.ratio * 0.5)
    assert t.runs >= SideBySide.ROUNDS * 3 * 3
    assert "3 pairs of fresh loads" in side.protocol_line()
    with pytest.raises(RuntimeError, match="closed"):
        side.time(load)


def test_measure_instances_is_the_median_over_fresh_loads():
    """Each load is timed on its own share of the protocol; the p50 is the median load's, so one
    slow (or fast) compile of the same files does not decide the figure."""
    from nas2deploy.latency import measure_instances

    delays = iter([0.001, 0.004, 0.002])
    calls: list[float] = []

    def load():
        d = next(delays)

        def run(x):
            calls.append(d)
            time.sleep(d)
        return run

    proto = Protocol(warmup=1, runs=30, min_runs=5, max_seconds=60.0, min_seconds=0.0)
    rep = measure_instances(load, np.zeros((1, 1), np.float32), protocol=proto, instances=3)
    assert len(rep.instance_p50_ms) == 3
    assert rep.instance_p50_ms[0] < rep.instance_p50_ms[2] < rep.instance_p50_ms[1]
    assert rep.p50_ms == rep.instance_p50_ms[2]  # the middle load, not the pooled calls
    assert calls.count(0.004) == 1 + 10  # warm-up, then runs split three ways
    assert rep.runs == 30 and "median over 3 fresh loads" in rep.protocol
    assert "instance_p50_ms" in rep.to_dict()
