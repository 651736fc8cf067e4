"""The pipeline's final attempts: what the bundle keeps when the verdict misses the window.

The runtime's timing is replaced by a scripted one here (latency proportional to MACs for the
closed-loop rounds, and given ratios to the budget for the bundle's verdicts), so that the
decisions are tested, not this machine's speed; exports, retraining and parity are real.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from nas2deploy import load_bundle, pipeline
from nas2deploy.config import RunConfig
from nas2deploy.counting import count_macs, count_params
from nas2deploy.runtime import SideTiming


def scripted_side(verdicts: list[float], loads: list[int]):
    """A SideBySide whose measurements are MACs-proportional and whose verdicts (the timings of
    ``VERDICT_SECONDS``) are ``verdicts``, in order, as ratios to the budget."""

    class ScriptedSide:
        def __init__(self, reference, target, example_shape, reference_ms, **kw):
            self.reference_ms = reference_ms
            self._x = torch.zeros(example_shape)
            self._ref_macs = count_macs(reference, self._x)

        def _timing(self, ms: float) -> SideTiming:
            ratio = ms / self.reference_ms
            return SideTiming(p50_ms=ms, p90_ms=ms, raw_p50_ms=ms, raw_p90_ms=ms,
                              reference_p50_ms=self.reference_ms, ratio=ratio, runs=1,
                              instance_ratios=[ratio])

        def measure(self, model):
            return self._timing(self.reference_ms * count_macs(model, self._x) / self._ref_macs)

        def time(self, load, seconds=None):
            assert seconds == pipeline.VERDICT_SECONDS
            out = np.asarray(load()(self._x.numpy()))  # the artifact really loads and runs
            assert out.shape[0] == self._x.shape[0]
            loads.append(1)
            return self._timing(verdicts.pop(0) * 0.5 * self.reference_ms)

        def protocol_line(self, seconds=None):
            return "scripted"

        def close(self):
            pass

    return ScriptedSide


RANDOM = {"samples": 1, "layers": 2, "width": 16}
TINY_TFNAS = {"stem_channels": 8, "stem_block_channels": 8, "stem_se": 2, "tail_channels": 32,
              "stages": [[2, 8, 2, "relu"], [2, 16, 2, "hswish"], [1, 16, 1, "hswish"]]}


def run(tmp_path: Path, monkeypatch, verdicts: list[float], method: str = "example-random",
        options: dict | None = None, search_epochs: int = 1):
    loads: list[int] = []
    monkeypatch.setattr(pipeline, "SideBySide", scripted_side(list(verdicts), loads))
    cfg = RunConfig(method=method, target="openvino:cpu", export=["onnx", "openvino"],
                    input_size=16, search_epochs=search_epochs, retrain_epochs=1,
                    latency_fraction=0.5, out=str(tmp_path / "bundle"),
                    method_options=options or RANDOM)
    result = pipeline.search_and_export(cfg)
    finals = [r for r in result.manifest["latency"]["rounds"] if r["stage"].startswith("final")]
    return result, finals, loads


def bundle_matches_its_files(out: Path, manifest: dict) -> None:
    """The kept attempt's weights, architecture and ONNX file are one network."""
    assert not list(out.glob(".attempt-*"))
    model = load_bundle(out)
    assert count_params(model) == manifest["model"]["params"]
    arch = json.loads((out / "architecture.json").read_text())
    assert arch["width_multiplier"] == manifest["model"]["width_multiplier"]
    x = torch.randn(2, 1, 16, 16)
    sess = ort.InferenceSession(str(out / manifest["files"]["onnx"]),
                                providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4)


def test_a_verdict_under_the_low_water_mark_grows_and_the_closest_under_budget_is_kept(
        random_plugin, tmp_path, monkeypatch):
    result, finals, loads = run(tmp_path, monkeypatch, [0.80, 1.10, 0.93])
    widths = [r["width_multiplier"] for r in finals]
    assert len(finals) == len(loads) == 3
    assert widths[0] < 1.0 and widths[1] > widths[0]  # grew from 0.80 of the budget
    assert widths[0] < widths[2] < widths[1]  # then shrank between the two
    assert [r["kept"] for r in finals] == [False, False, True]
    lat = result.manifest["latency"]
    assert lat["within_budget"] and lat["ratio_to_budget"] == pytest.approx(0.93)
    assert result.manifest["model"]["width_multiplier"] == widths[2]
    bundle_matches_its_files(result.out, result.manifest)


def test_an_earlier_attempt_under_budget_is_kept_when_the_last_misses(
        random_plugin, tmp_path, monkeypatch):
    result, finals, _ = run(tmp_path, monkeypatch, [0.80, 1.10, 1.05])
    assert [r["kept"] for r in finals] == [True, False, False]
    lat = result.manifest["latency"]
    assert lat["within_budget"] and lat["ratio_to_budget"] == pytest.approx(0.80)
    assert result.exit_code == 0
    assert result.manifest["model"]["width_multiplier"] == finals[0]["width_multiplier"]
    bundle_matches_its_files(result.out, result.manifest)


def test_a_verdict_in_the_window_is_final(random_plugin, tmp_path, monkeypatch):
    result, finals, loads = run(tmp_path, monkeypatch, [0.93])
    assert len(finals) == len(loads) == 1 and finals[0]["kept"]
    bundle_matches_its_files(result.out, result.manifest)


def test_at_full_width_the_method_re_sizes_before_the_width_multiplier(tmp_path, monkeypatch):
    """TF-NAS at width 1.0 with a verdict under the low-water mark, then one over budget: the
    pipeline asks the method to re-size its architecture each time (``SearchMethod.resize``:
    elastic widths, depth, ops) instead of thinning every layer, retrains, and keeps the
    attempt that lands in the window."""
    result, finals, loads = run(tmp_path, monkeypatch, [0.80, 1.10, 0.95], method="tfnas",
                                options=TINY_TFNAS, search_epochs=2)
    assert len(finals) == len(loads) == 3
    assert [r["width_multiplier"] for r in finals] == [1.0, 1.0, 1.0]
    assert [r["resized"] - finals[0]["resized"] for r in finals] == [0, 1, 2]
    assert finals[0]["macs"] < finals[1]["macs"]  # grown from 0.80 of the budget
    assert finals[2]["macs"] < finals[1]["macs"]  # then shrunk from 1.10
    assert [r["kept"] for r in finals] == [False, False, True]
    assert result.manifest["model"]["resized"] == finals[2]["resized"]
    assert result.manifest["latency"]["ratio_to_budget"] == pytest.approx(0.95)
    bundle_matches_its_files(result.out, result.manifest)


def test_a_re_sized_attempt_that_misses_leaves_the_earlier_architecture(tmp_path, monkeypatch):
    result, finals, _ = run(tmp_path, monkeypatch, [0.85, 1.10, 1.05], method="tfnas",
                            options=TINY_TFNAS, search_epochs=2)
    assert [r["kept"] for r in finals] == [True, False, False]
    assert result.manifest["model"]["resized"] == finals[0]["resized"]
    assert result.manifest["model"]["macs"] == finals[0]["macs"]
    assert result.manifest["latency"]["ratio_to_budget"] == pytest.approx(0.85)
    bundle_matches_its_files(result.out, result.manifest)
