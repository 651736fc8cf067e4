"""Latency lookup tables: building on real runtimes, JSON, refusals, interpolation, calibration,
cache.

The space here is a tiny chain defined in this file (stem conv -> optional sep -> optional
mbconv with a residual sum -> strided sep -> head, kernels 3 or 5), so every test runs in
seconds and none depends on a plugin's defaults. Nothing asserts a wall-clock speed: which model
predicts closer is printed by ``benchmarks/lut_accuracy.py``.
"""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest
from torch import nn

from nas2deploy.architecture import Architecture, fingerprint
from nas2deploy.env import cache_root, runtime_version
from nas2deploy.errors import UnavailableError, UsageError
from nas2deploy.latency import FlopsProxy, TableProtocol, Timing
from nas2deploy.latency import cache as lut_cache
from nas2deploy.latency import calibrate as lut_calibrate
from nas2deploy.latency import make as lut_make
from nas2deploy.latency.cache import get_or_build_table, table_cache_path
from nas2deploy.latency.calibrate import CalibratedLUT
from nas2deploy.latency.collect import (build_table, check_target, collect_signatures,
                                        measure_networks, sample_subnets)
from nas2deploy.latency.grid import WidthGrid, network_signatures, op_spec
from nas2deploy.latency.make import build_table_cli, make_latency_model
from nas2deploy.latency.table import FORMAT, VERSION, LatencyTable, LUTModel
from nas2deploy.method import Decision, SearchMethod, TaskSpec
from nas2deploy.netspec import OpSignature
from nas2deploy.space import SearchSpace
from nas2deploy.target import Target
from nas2deploy_exporters.to_onnx import OnnxExporter
from nas2deploy_exporters.to_openvino import OpenVINOExporter

onnx_missing = OnnxExporter.unavailable_reason()
openvino_missing = OpenVINOExporter.unavailable_reason()
needs_onnx = pytest.mark.skipif(bool(onnx_missing), reason=f"ONNX: {onnx_missing}")

GRID = (0.5, 0.75, 1.0)  # coarse, to keep tests fast; the default is the dense grid
FAST = TableProtocol(warmup=5, rounds=5, calls=10)


# --------------------------------------------------------------------------------------------
# a tiny search space


class TinySupernet(nn.Module):
    def __init__(self, task: TaskSpec):
        super().__init__()
        self.task = task


class TinyChain(SearchMethod):
    """stem conv(1->8) -> [sep 8 k] -> [mbconv 8 (mid 16) k, + residual sum] -> sep 8->16 s2 -> head.

    Choices: keep or drop the sep and the mbconv, kernel 3 or 5 for each.
    """

    name = "tinychain"

    def build(self, task: TaskSpec) -> TinySupernet:
        return TinySupernet(task)

    def describe(self, supernet) -> dict:
        t = supernet.task
        defining = {"tinychain": 1, "task": [t.input_channels, t.input_size, t.num_classes]}
        return {"name": self.name, "fingerprint": fingerprint(defining)}

    def space(self, supernet) -> SearchSpace:
        return SearchSpace(
            self.describe(supernet),
            largest=lambda: self.arch(supernet, sep=5, mb=5),
            smallest=lambda: self.arch(supernet, sep=None, mb=None),
            cover=lambda: [self.arch(supernet, sep=k, mb=k) for k in (3, 5)],
            sample=lambda rng: self.arch(supernet, sep=rng.choice([None, 3, 5]),
                                         mb=rng.choice([None, 3, 5])))

    def arch(self, supernet, *, sep: int | None, mb: int | None) -> Architecture:
        t = supernet.task
        nodes = [{"id": "stem", "op": "conv", "inputs": ["input"], "c_in": t.input_channels,
                  "c_out": 8, "k": 3}]
        cur = "stem"
        if sep:
            nodes.append({"id": "sep", "op": "sep", "inputs": [cur], "c_in": 8, "c_out": 8, "k": sep})
            cur = "sep"
        if mb:
            nodes.append({"id": "mb", "op": "mbconv", "inputs": [cur], "c_in": 8, "c_out": 8,
                          "mid": 16, "k": mb})
            nodes.append({"id": "add", "op": "sum", "inputs": ["mb", cur], "coeffs": [1.0, 0.5]})
            cur = "add"
        nodes += [{"id": "down", "op": "sep", "inputs": [cur], "c_in": 8, "c_out": 16, "k": 3,
                   "stride": 2},
                  {"id": "head", "op": "head", "inputs": ["down"], "c_in": 16,
                   "num_classes": t.num_classes}]
        net = {"input": {"channels": t.input_channels, "size": [t.input_size, t.input_size]},
               "num_classes": t.num_classes, "nodes": nodes, "output": "head"}
        return Architecture(method=self.name, network=net, space=self.describe(supernet),
                            decisions={"sep": sep, "mb": mb})

    def search(self, supernet, ctx):
        pass

    def decide(self, supernet, searched=None):
        return Decision(self.space(supernet).largest())


@pytest.fixture(autouse=True, scope="module")
def private_cache(tmp_path_factory):
    """Nothing in these tests writes to the user's cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("NAS2DEPLOY_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def tiny():
    method = TinyChain()
    return method, method.build(TaskSpec(1, 16, 4))


@pytest.fixture(scope="module")
def ort_table(tiny):
    if onnx_missing:
        pytest.skip(f"ONNX: {onnx_missing}")
    method, supernet = tiny
    return build_table(method, supernet, Target("onnxruntime"), input_size=16, grid=GRID,
                       protocol=FAST)


class Recorder:
    """A progress factory that records what it was asked for."""

    def __init__(self):
        self.bars = []

    def __call__(self, total=None, desc=None):
        rec = self

        class Bar:
            def __init__(self):
                self.n = 0
                rec.bars.append((desc, total, self))

            def update(self, n=1):
                self.n += n

            def set_postfix(self, **kw):
                pass

            def close(self):
                pass

        return Bar()


# --------------------------------------------------------------------------------------------
# building


def _expected_keys(method, supernet, grid) -> set[str]:
    from nas2deploy.materialize import materialize, scale_width

    keys = set()
    for arch in method.space(supernet).covering():
        net = materialize(arch)
        for m in grid:
            scaled = net if m == 1.0 else scale_width(net, m)
            keys |= {s.key() for s in network_signatures(scaled.spec()).values()}
    return keys


def _check_table(table: LatencyTable, method, supernet, target: Target):
    want = _expected_keys(method, supernet, GRID)
    assert want <= set(table.entries)  # every signature of every scaled candidate, by key
    assert any(e["sig"]["type"] == "sum" for e in table.entries.values())  # twin of each wsum
    for key, e in table.entries.items():
        assert OpSignature(**e["sig"]).key() == key
        assert np.isfinite(e["ms"]) and e["ms"] >= 0 and e["p50_ms"] > 0
        assert e["runs"] == FAST.rounds * FAST.calls
    m = table.meta
    assert m["space"]["fingerprint"] == method.space(supernet)["fingerprint"]
    assert m["target"] == {"runtime": target.runtime, "device": "cpu", "precision": "fp32",
                           "batch": 1, "threads": 1}
    for key in ("runtime_version", "cpu", "threads", "batch", "precision", "protocol", "date",
                "grid", "interpolation", "overhead_ms", "export"):
        assert m.get(key) not in (None, ""), key
    assert m["grid"]["width_multipliers"] == list(GRID)
    assert 0 < table.overhead_ms < 5.0


@needs_onnx
def test_build_table_onnxruntime(tiny, ort_table):
    method, supernet = tiny
    _check_table(ort_table, method, supernet, Target("onnxruntime"))
    assert "TorchScript" in ort_table.meta["export"]
    assert ort_table.meta["runtime_version"] == runtime_version("onnxruntime")


@pytest.mark.openvino
@pytest.mark.skipif(bool(openvino_missing), reason=f"OpenVINO: {openvino_missing}")
def test_build_table_openvino(tiny):
    method, supernet = tiny
    target = Target("openvino")
    rec = Recorder()
    table = build_table(method, supernet, target, input_size=16, grid=GRID, protocol=FAST,
                        progress=rec)
    _check_table(table, method, supernet, target)
    assert "exporter 'openvino'" in table.meta["export"]
    measured = [bar for desc, total, bar in rec.bars if desc.startswith("measure ops")]
    assert measured and measured[0].n == len(table)


def test_progress_and_collect_dense_grid(tiny):
    method, supernet = tiny
    rec = Recorder()
    grid = WidthGrid(min_width=0.5)
    sigs = collect_signatures(method, supernet, grid, progress=rec)
    dense = grid.resolve(method.space(supernet).covering())
    # widest prunable channel count is the mbconv's mid (16): multipliers k/16 for k = 8..16
    assert dense == tuple(round(k / 16, 6) for k in range(8, 17))
    assert WidthGrid().resolve(method.space(supernet).covering())[0] == 0.25
    # sums only at the dense points nearest the coarse grid (0.5, 0.625, ..., 1.0)
    assert grid.sum_points(dense) == {0.5, 0.625, 0.75, 0.875, 1.0}
    wsum_ch = {s.c_in for s in sigs.values() if s.type == "wsum"}
    assert wsum_ch == {4, 5, 6, 7, 8}  # 8 channels at 0.5 ... 1.0
    (desc, total, bar), = rec.bars
    assert desc == "collect ops" and total == 2 * len(dense) and bar.n == total
    assert {s.type for s in sigs.values()} >= {"conv", "sep", "mbconv", "wsum", "sum", "head"}


def test_tensorrt_is_refused_clearly():
    with pytest.raises(UnavailableError, match="TensorRT"):
        check_target(Target("tensorrt", "cuda"))


# --------------------------------------------------------------------------------------------
# JSON, refusals, corruption


@needs_onnx
def test_json_round_trip(tiny, ort_table, tmp_path):
    method, supernet = tiny
    path = ort_table.save(tmp_path / "t.json")
    back = LatencyTable.load(path, space_fingerprint=method.space(supernet)["fingerprint"],
                             target=Target("onnxruntime"))
    assert back.entries == ort_table.entries and back.meta == ort_table.meta
    spec = method.space(supernet).draw(random.Random(3)).network
    assert LUTModel(back).predict(spec) == LUTModel(ort_table).predict(spec)


@needs_onnx
def test_refuses_other_space(ort_table, tmp_path):
    path = ort_table.save(tmp_path / "t.json")
    with pytest.raises(UsageError, match="fingerprint") as exc:
        LatencyTable.load(path, space_fingerprint="0123456789abcdef")
    assert "\n" not in str(exc.value)


@needs_onnx
@pytest.mark.parametrize("target", [Target("openvino"), Target("onnxruntime", threads=2),
                                    Target("onnxruntime", batch=4)])
def test_refuses_other_target(ort_table, tmp_path, target):
    path = ort_table.save(tmp_path / "t.json")
    with pytest.raises(UsageError, match="measured for target") as exc:
        LatencyTable.load(path, target=target)
    assert "\n" not in str(exc.value)


@needs_onnx
@pytest.mark.parametrize("damage, match", [
    (lambda text: text[: len(text) // 2], "not valid JSON"),
    (lambda text: "", "not valid JSON"),
    # a measured value can be 0.0, and -0.0 is valid: the corruption must not depend on it
    (lambda text: re.sub(r'"ms": [-0-9.e+]+', '"ms": -1.0', text, count=1), "corrupt"),
    (lambda text: text.replace('"sig": {', '"sig": {"extra": 1, ', 1), "corrupt"),
    (lambda text: text.replace('"overhead_ms"', '"overhead_gone"', 1), "corrupt"),
    (lambda text: json.dumps({"hello": 1}), "not a nas2deploy latency table"),
])
def test_corrupt_table_is_a_usage_error(ort_table, tmp_path, damage, match):
    path = tmp_path / "t.json"
    path.write_text(damage(ort_table.to_json()))
    with pytest.raises(UsageError, match=match) as exc:
        LatencyTable.load(path)
    assert "\n" not in str(exc.value)


def test_unreadable_table_is_a_usage_error(tmp_path):
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(UsageError, match="not text|not valid JSON"):
        LatencyTable.load(tmp_path / "bin.json")
    with pytest.raises(UsageError, match="cannot read"):
        LatencyTable.load(tmp_path / "missing.json")


# --------------------------------------------------------------------------------------------
# interpolation (synthetic tables: no timing involved)


def _entry(sig: OpSignature, ms: float) -> tuple[str, dict]:
    return sig.key(), {"ms": ms, "p50_ms": ms, "p90_ms": ms, "runs": 1, "sig": sig.to_dict()}


def _synthetic(entries: list[tuple[OpSignature, float]]) -> LatencyTable:
    meta = {"space": {"name": "x", "fingerprint": "f"}, "overhead_ms": 0.01,
            "target": {"runtime": "onnxruntime", "device": "cpu", "precision": "fp32",
                       "batch": 1, "threads": 1}}
    return LatencyTable.from_dict({"format": FORMAT, "version": VERSION, "meta": meta,
                                   "entries": dict(_entry(s, v) for s, v in entries)})


def sep(c: int, k: int = 3) -> OpSignature:
    return OpSignature("sep", 8, 8, c, c, kernel=k, act="relu")


def test_interpolation_between_grid_points():
    table = _synthetic([(sep(8), 0.010), (sep(16), 0.030), (sep(32), 0.070), (sep(8, k=5), 1.0)])
    assert table.lookup(sep(16)) == (0.030, "exact")
    ms, how = table.lookup(sep(12))  # halfway between 8 and 16 channels, same alignment
    assert how == "interpolated" and ms == pytest.approx(0.020)
    assert table.ms(sep(24)) == pytest.approx(0.050)
    assert table.ms(sep(12, k=5)) == pytest.approx(1.0 * 12 / 8)  # one point: proportional
    # Below the measured range: linear from the two nearest, clamped between proportional
    # (0.010 * 4/8) and constant (0.010).
    ms, how = table.lookup(sep(4))
    assert how == "extrapolated" and 0.005 <= ms <= 0.010
    with pytest.raises(UsageError, match="does not cover this space"):
        table.ms(OpSignature("maxpool", 8, 8, 8, 8, kernel=3, act="relu"))
    assert table.lookup(OpSignature("identity", 8, 8, 8, 8)) == (0.0, "free")


def test_interpolation_keeps_channel_alignment_apart():
    # aligned (multiple of 4) counts are fast, unaligned slow: as onnxruntime's depthwise convs
    table = _synthetic([(sep(8), 0.002), (sep(16), 0.004), (sep(9), 0.020), (sep(15), 0.032)])
    assert table.ms(sep(12)) == pytest.approx(0.003)  # from 8 and 16 only
    assert table.ms(sep(11)) == pytest.approx(0.024)  # from 9 and 15 only
    only_aligned = _synthetic([(sep(8), 0.002), (sep(16), 0.004)])
    assert only_aligned.ms(sep(10)) == pytest.approx(0.0025)  # no unaligned entry: use all


def test_sums_interpolate_in_channels_then_inputs():
    def wsum(c, n):
        return OpSignature("wsum", 8, 8, c, c, mid=n)

    table = _synthetic([(wsum(8, 2), 0.002), (wsum(16, 2), 0.004),
                        (wsum(8, 6), 0.010), (wsum(16, 6), 0.020)])
    assert table.ms(wsum(12, 2)) == pytest.approx(0.003)
    assert table.ms(wsum(12, 4)) == pytest.approx((0.003 + 0.015) / 2)  # inputs 2..6 halfway
    assert table.ms(wsum(8, 1)) == pytest.approx(0.0)  # 0.002 - (0.010-0.002)/4, floored at 0
    with pytest.raises(UsageError):  # plain sums are another family
        table.ms(OpSignature("sum", 8, 8, 8, 8, mid=2))


def test_weighted_sums_are_their_own_type(tiny):
    method, supernet = tiny
    sigs = network_signatures(method.space(supernet).largest().network)
    assert sigs["add"].type == "wsum" and sigs["add"].mid == 2
    spec = op_spec(sigs["add"])
    coeffs = spec["nodes"][0]["coeffs"]
    assert len(set(coeffs)) == 2  # distinct: equal ones would be merged into one Mul


# --------------------------------------------------------------------------------------------
# models


@needs_onnx
def test_lut_model_sums_entries(tiny, ort_table):
    method, supernet = tiny
    model = LUTModel(ort_table)
    spec = method.space(supernet).largest().network
    sigs = network_signatures(spec)
    expected = ort_table.overhead_ms + sum(ort_table.ms(s) for s in sigs.values())
    assert model.predict(spec) == pytest.approx(expected)
    assert model.base_ms == ort_table.overhead_ms
    assert model.predict(spec) == pytest.approx(model.base_ms + sum(model.op_cost(s)
                                                                    for s in sigs.values()))
    assert model.describe()["table"]["space"]["fingerprint"] == ort_table.meta["space"]["fingerprint"]


def test_calibration_fit_recovers_a_linear_gap():
    table = _synthetic([(sep(8), 0.010), (sep(16), 0.030)])
    rng = random.Random(0)
    specs, truth = [], []
    for _ in range(10):
        n = rng.randint(1, 6)
        nodes = [{"id": f"s{i}", "op": "sep", "inputs": [f"s{i - 1}" if i else "input"],
                  "c_in": 8, "c_out": 8, "k": 3} for i in range(n)]
        specs.append({"input": {"channels": 8, "size": [8, 8]}, "num_classes": 8,
                      "nodes": nodes, "output": f"s{n - 1}"})
        truth.append(0.02 + 1.5 * (0.01 + 0.010 * n) + 0.001 * n)  # a + b·LUT + c·ops
    model = CalibratedLUT.from_measurements(table, specs, truth)
    assert model.fit["mape_pct"] < 1e-6
    for spec, y in zip(specs, truth):
        assert model.predict(spec) == pytest.approx(y)
        sigs = network_signatures(spec).values()
        assert model.base_ms + sum(model.op_cost(s) for s in sigs) == pytest.approx(y)
    assert set(model.describe()["fit"]) >= {"coefficients", "residuals_pct", "loo_mape_pct", "n"}
    with pytest.raises(UsageError, match="at least"):
        CalibratedLUT.from_measurements(table, specs[:2], truth[:2])


def _held_out_errors(tiny, runtime: str, n: int = 24, n_cal: int = 10):
    """Plain-LUT and calibrated relative errors on held-out subnets of the tiny space; the
    calibration is fitted on ``n_cal`` others (fixed seeds). All ``n`` are measured end to end in
    one interleaved batch, so machine load hits both sets alike. The table is dense (every channel
    count exact: onnxruntime is far from linear in channels) from width 0.5 up. Which model is
    closer is a figure of the machine, printed by ``benchmarks/lut_accuracy.py`` (MAPE of both); the tests below
    check that the measurements are taken and used correctly."""
    method, supernet = tiny
    target = Target(runtime)
    table = build_table(method, supernet, target, input_size=16,
                        grid=WidthGrid(min_width=0.5))
    subs = sample_subnets(method, supernet, n, seed=11, widths=(0.5, 1.0))
    protocol = TableProtocol(rounds=21, calls=30)
    timings = measure_networks([s.net for s in subs], target, (1, 1, 16, 16),
                               fast_export=True, protocol=protocol)
    y = np.array([t.p50_ms for t in timings])
    specs = [s.spec for s in subs]
    cal = CalibratedLUT.from_measurements(table, specs[:n_cal], y[:n_cal])
    plain = LUTModel(table)
    e_plain = np.array([plain.predict(s) / m - 1 for s, m in zip(specs[n_cal:], y[n_cal:])])
    e_cal = np.array([cal.predict(s) / m - 1 for s, m in zip(specs[n_cal:], y[n_cal:])])
    return e_plain, e_cal, cal, timings, protocol


def _check_calibration_measured_correctly(tiny, runtime: str, n: int, n_cal: int) -> None:
    e_plain, e_cal, cal, timings, protocol = _held_out_errors(tiny, runtime, n=n, n_cal=n_cal)
    # every network timed under the protocol asked for, in milliseconds
    assert len(timings) == n
    for t in timings:
        assert t.runs == protocol.rounds * protocol.calls
        assert 0 < t.p50_ms <= t.p90_ms < 1000, t
    y = np.array([t.p50_ms for t in timings])
    # the calibration is fitted to exactly the calibration nets' measurements ...
    fit = cal.fit
    assert fit["n"] == n_cal
    assert fit["measured_ms"] == pytest.approx(list(y[:n_cal]), rel=1e-5, abs=1e-6)
    # ... and, being least squares on relative error over forms that all contain a + b*LUT (the
    # plain table is a=0, b=1), it cannot fit them worse than the plain table does, on any CPU
    rms_cal = np.sqrt(np.mean((np.array(fit["residuals_pct"]) / 100) ** 2))
    plain_in = np.array(fit["lut_ms"]) / np.array(fit["measured_ms"]) - 1
    assert rms_cal <= np.sqrt(np.mean(plain_in ** 2)) + 1e-3, (rms_cal, plain_in)
    assert np.isfinite(e_plain).all() and np.isfinite(e_cal).all()
    assert len(e_plain) == len(e_cal) == n - n_cal


@pytest.mark.openvino
@pytest.mark.skipif(bool(openvino_missing), reason=f"OpenVINO: {openvino_missing}")
def test_calibration_fitted_to_measured_subnets_openvino(tiny):
    _check_calibration_measured_correctly(tiny, "openvino", n=18, n_cal=8)


@needs_onnx
def test_calibration_fitted_to_measured_subnets_onnxruntime(tiny):
    _check_calibration_measured_correctly(tiny, "onnxruntime", n=24, n_cal=10)


def test_make_latency_model_kinds(tiny, tmp_path, monkeypatch):
    method, supernet = tiny
    flops = make_latency_model("flops", method=method, supernet=supernet,
                               target=Target("onnxruntime"), input_size=16,
                               anchors=[(1000, 0.01), (5000, 0.03)])
    assert isinstance(flops, FlopsProxy)
    with pytest.raises(UsageError, match="anchors"):
        make_latency_model("flops", method=method, supernet=supernet,
                           target=Target("onnxruntime"), input_size=16)
    with pytest.raises(UsageError, match="unknown latency model"):
        make_latency_model("magic", method=method, supernet=supernet,
                           target=Target("onnxruntime"), input_size=16)


@needs_onnx
def test_make_latency_model_calibrated_is_cached(tiny, ort_table, monkeypatch, tmp_path):
    """The calibrated kind end to end, with the runtime replaced by a known truth
    (1.3·LUT + 2 µs) so it runs in a second; the second call measures nothing."""
    method, supernet = tiny
    monkeypatch.setenv("NAS2DEPLOY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(lut_make, "get_or_build_table", lambda *a, **k: ort_table)
    measured = []

    def fake_measure(nets, target, shape, **kw):
        measured.append(len(nets))
        plain = LUTModel(ort_table)
        return [Timing(1.3 * plain.predict(n.spec()) + 0.002, 0.0, 1, 0.0) for n in nets]

    monkeypatch.setattr(lut_calibrate, "measure_networks", fake_measure)
    kw = dict(method=method, supernet=supernet, target=Target("onnxruntime"), input_size=16,
              min_width=0.5, calibration_samples=8)
    model = make_latency_model("calibrated", **kw)
    assert isinstance(model, CalibratedLUT) and measured == [8]
    assert model.fit["mape_pct"] < 1e-6
    spec = method.space(supernet).largest().network
    assert model.predict(spec) == pytest.approx(1.3 * LUTModel(ort_table).predict(spec) + 0.002)
    again = make_latency_model("calibrated", **kw)
    assert measured == [8] and again.fit == model.fit
    assert isinstance(make_latency_model("lut", **kw), LUTModel)


@needs_onnx
def test_machine_differences(ort_table):
    assert ort_table.machine_differences(Target("onnxruntime")) == []
    other = LatencyTable(ort_table.entries, {**ort_table.meta, "cpu": "Some Other CPU"})
    (diff,) = other.machine_differences(Target("onnxruntime"))
    assert diff.startswith("cpu:")


# --------------------------------------------------------------------------------------------
# cache


@needs_onnx
def test_cache_reuses_the_table(tiny, tmp_path, monkeypatch):
    method, supernet = tiny
    monkeypatch.setenv("NAS2DEPLOY_CACHE", str(tmp_path / "cache"))
    calls = []
    real = build_table

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **{**kwargs, "protocol": FAST})

    monkeypatch.setattr(lut_cache, "build_table", counting)
    target = Target("onnxruntime")
    first = get_or_build_table(method, supernet, target, input_size=16, grid=GRID)
    path = table_cache_path(method.space(supernet), target, input_size=16, grid=GRID)
    assert path.is_file() and path.parent == tmp_path / "cache" / "luts"
    second = get_or_build_table(method, supernet, target, input_size=16, grid=GRID)
    assert len(calls) == 1
    assert second.entries == first.entries and second.meta == first.meta
    # another target is another cache entry; rebuild=True measures again
    assert table_cache_path(method.space(supernet), Target("openvino"), input_size=16,
                            grid=GRID) != path
    get_or_build_table(method, supernet, target, input_size=16, grid=GRID, rebuild=True)
    assert len(calls) == 2
    # a corrupt cache file is measured again, not trusted and not fatal
    path.write_text("{ truncated")
    get_or_build_table(method, supernet, target, input_size=16, grid=GRID)
    assert len(calls) == 3


def test_cache_root_follows_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("NAS2DEPLOY_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "nas2deploy"
    monkeypatch.setenv("NAS2DEPLOY_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"


@needs_onnx
def test_build_table_cli_with_a_registered_method(tmp_path, monkeypatch):
    monkeypatch.setenv("NAS2DEPLOY_CACHE", str(tmp_path / "cache"))
    opts = {"levels": 1, "ops": ["sep3"], "stages": 1, "blocks_per_stage": 1, "base_width": 4}
    out = build_table_cli("dsonas", "onnxruntime:cpu", 8, tmp_path / "lut.json", None,
                          method_options=opts, grid=(0.5, 1.0))
    table = LatencyTable.load(out, target=Target("onnxruntime"))
    assert table.meta["space"]["name"] == "dsonas" and len(table) > 3
    with pytest.raises(UsageError, match="unknown method"):
        build_table_cli("nope", "onnxruntime:cpu", 8, None, None)
    with pytest.raises(UsageError, match="input-size"):
        build_table_cli("dsonas", "onnxruntime:cpu", 4, None, None)
