"""fp16 and int8 deployment on the real CPU runtimes: explicit Q/DQ quantization calibrated on
training images, OpenVINO's f16 precision hint, and the precision-aware verification (top-1
agreement and accuracy drop against the fp32 PyTorch model) that replaces the 1e-4 parity check."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from nas2deploy.cli import main
from nas2deploy.config import RunConfig
from nas2deploy.data import load_dataset
from nas2deploy.errors import PrecisionError, UsageError
from nas2deploy.exporter import ExportContext
from nas2deploy.netspec import build_network
from nas2deploy.pipeline import _verify
from nas2deploy.runtime import export_chain, runner_for
from nas2deploy.target import Target
from nas2deploy.train import accuracy, train
from nas2deploy_exporters.to_onnx import QUANTIZED_OPS

SPEC = {
    "input": {"channels": 1, "size": [16, 16]},
    "num_classes": 10,
    "nodes": [
        {"id": "stem", "op": "conv", "inputs": ["input"], "c_in": 1, "c_out": 16, "k": 3},
        {"id": "a", "op": "sep", "inputs": ["stem"], "c_in": 16, "c_out": 16, "k": 3},
        {"id": "p", "op": "pool", "inputs": ["stem"], "c": 16, "kind": "max", "k": 3},
        {"id": "mix", "op": "sum", "inputs": ["a", "p"], "coeffs": [0.7, 0.4]},
        {"id": "post", "op": "bn_act", "inputs": ["mix"], "c": 16},
        {"id": "down", "op": "conv", "inputs": ["post"], "c_in": 16, "c_out": 24, "k": 3,
         "stride": 2},
        {"id": "head", "op": "head", "inputs": ["down"], "c_in": 24, "num_classes": 10},
    ],
    "output": "head",
}


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits", input_size=16, seed=0)


@pytest.fixture(scope="module")
def trained(data):
    torch.manual_seed(0)
    net = build_network(SPEC)
    train(net, data.x_train, data.y_train, epochs=10, seed=0)
    net.eval()
    assert accuracy(net, data.x_test, data.y_test) > 0.85  # else agreement says little
    return net


def export(net, data, target: str, folder, calibration=True, formats=("onnx", "openvino")):
    tgt = Target.parse(target)
    ctx = ExportContext(folder, data.x_test[:1].clone(), tgt, {"k": "v"},
                        calibration=data.x_train[:256] if calibration else None)
    export_chain(net, list(formats), ctx)
    return tgt, ctx


def top1(run, x: torch.Tensor) -> np.ndarray:
    return np.concatenate([np.asarray(run(x[i:i + 1].numpy())).argmax(1) for i in range(len(x))])


def test_precision_matrix_of_targets():
    assert Target.parse("openvino:cpu:int8").precision == "int8"
    assert Target.parse("openvino:cpu:fp16").precision == "fp16"
    assert Target.parse("onnxruntime:cpu:int8").precision == "int8"
    assert Target.parse("tensorrt:cuda:fp16").precision == "fp16"
    with pytest.raises(UsageError, match="no fp16 convolution kernels"):
        Target.parse("onnxruntime:cpu:fp16")
    with pytest.raises(UsageError, match="fp32 only"):
        Target.parse("torch:cpu:int8")
    with pytest.raises(UsageError, match="unknown precision"):
        Target.parse("openvino:cpu:int4")


@pytest.mark.openvino
def test_int8_is_explicit_qdq_calibrated_on_training_images(trained, data, tmp_path):
    tgt, ctx = export(trained, data, "onnxruntime:cpu:int8", tmp_path)
    art = ctx.artifacts["onnx"]
    assert art.files == {"model": "model.int8.onnx", "fp32": "model.onnx"}
    q = art.info["quantization"]
    assert q["calibration_samples"] == 256 and q["calibration_source"].startswith("training")
    proto = onnx.load(str(tmp_path / "model.int8.onnx"))
    ops = Counter(n.op_type for n in proto.graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > ops["QuantizeLinear"]
    # Q/DQ only at the inputs and outputs of the MAC-heavy ops: every Q reads the graph input or
    # a conv's output, and the weighted sum's Mul/Add and the pool are not quantized themselves
    producers = {o: n for n in proto.graph.node for o in n.output}

    def readers(name):
        return [m for m in proto.graph.node if name in m.input]

    for n in proto.graph.node:
        if n.op_type == "QuantizeLinear":
            made_by = producers.get(n.input[0])
            read_by = {m.op_type for dq in readers(n.output[0]) for m in readers(dq.output[0])}
            assert (made_by is not None and made_by.op_type in QUANTIZED_OPS) \
                or read_by & set(QUANTIZED_OPS), n.name
    # the logits stay float (int8 logits tie, and argmax would flip)
    assert producers[proto.graph.output[0].name].op_type == "Gemm"
    # symmetric: every zero point is 0 (TensorRT's explicit quantization needs that)
    inits = {i.name: i for i in proto.graph.initializer}
    for n in proto.graph.node:
        if n.op_type == "QuantizeLinear" and len(n.input) > 2:
            assert not onnx.numpy_helper.to_array(inits[n.input[2]]).any()
    assert {p.key: p.value for p in proto.metadata_props}["k"] == "v"

    ref = trained(data.x_test).argmax(1).numpy()
    for name, runtime in (("onnx", "onnxruntime:cpu:int8"), ("openvino", "openvino:cpu:int8")):
        run = runner_for(trained, Target.parse(runtime), tmp_path, ctx.artifacts)
        got = top1(run, data.x_test)
        assert (got == ref).mean() >= 0.97, name
        # and it really is quantized: logits differ from fp32 by more than float noise
        x = data.x_test[:8]
        diff = np.abs(np.concatenate([run(x[i:i + 1].numpy()) for i in range(8)])
                      - trained(x).detach().numpy()).max()
        assert diff > 1e-4, name


def test_int8_without_calibration_data_says_it_is_a_probe(trained, data, tmp_path):
    _, ctx = export(trained, data, "onnxruntime:cpu:int8", tmp_path, calibration=False,
                    formats=("onnx",))
    q = ctx.artifacts["onnx"].info["quantization"]
    assert "latency probe only" in q["calibration_source"]


@pytest.mark.openvino
def test_openvino_fp16_sets_and_records_the_hint(trained, data, tmp_path):
    tgt, ctx = export(trained, data, "openvino:cpu:fp16", tmp_path)
    info = ctx.artifacts["openvino"].info
    assert info["inference_precision"] == "f16" and info["precision"] == "fp16"
    assert info["inference_precision_compiled"] in ("f16", "f32", "bf16")
    run = runner_for(trained, tgt, tmp_path, ctx.artifacts)
    assert str(run.compiled.get_property("INFERENCE_PRECISION_HINT")) != ""
    ref = trained(data.x_test).argmax(1).numpy()
    # what the CPU computes in: bf16 (8 mantissa bits, on CPUs with AVX512-BF16 or AMX) flips a
    # few near-tied test images (3 of 269 here on an AMD EPYC), f16 fewer, f32 none
    floor = {"bf16": 0.97, "f16": 0.99}.get(info["inference_precision_compiled"], 0.995)
    assert (top1(run, data.x_test) == ref).mean() >= floor, info["inference_precision_compiled"]


@pytest.mark.openvino
def test_verification_passes_and_fails_on_real_quantized_models(trained, data, tmp_path):
    cfg = RunConfig(min_agreement=0.95, max_accuracy_drop=3.0)
    good = tmp_path / "good"
    good.mkdir()
    _, ctx = export(trained, data, "openvino:cpu:int8", good)
    out = _verify(trained, ["onnx", "openvino"], ctx, data, cfg)
    assert out["precision"]["precision"] == "int8"
    assert out["precision"]["quantization"]["calibration_samples"] == 256
    for name in ("onnx", "openvino"):
        p = out["parity"][name]
        assert p["samples"] == len(data.x_test) and p["top1_agreement"] >= 0.95
        assert p["accuracy_drop_points"] == pytest.approx(100 * (p["reference_top1"] - p["top1"]))

    # Calibrated on images 200x too bright, the activation ranges are so coarse that most real
    # inputs collapse to a few int8 levels: a real quantized model that must be refused.
    bad = tmp_path / "bad"
    bad.mkdir()
    tgt = Target.parse("onnxruntime:cpu:int8")
    ctx = ExportContext(bad, data.x_test[:1].clone(), tgt, {},
                        calibration=data.x_train[:64] * 200.0)
    export_chain(trained, ["onnx"], ctx)
    with pytest.raises(PrecisionError, match="top-1 agreement"):
        _verify(trained, ["onnx"], ctx, data, cfg)


@pytest.fixture
def trained_random_config(tmp_path):
    """A small net trained to ~99%: the agreement check measures the precision, not coin flips.
    (``tiny_random_config`` trains 3 epochs to ~35%, and a 0.9 latency fraction shrinks its net
    to 2 channels: near-tied logits that flip even at fp16.) The budget is generous so the net
    keeps its width."""
    cfg = tmp_path / "trained.toml"
    cfg.write_text('method = "example-random"\ninput-size = 16\nsearch-epochs = 1\nretrain-epochs = 12\n'
                   'latency-ms = 100.0\n'
                   '[method-options]\nsamples = 1\nlayers = 2\nwidth = 16\n'
                   'ops = ["sep3", "mb3_e3"]\n')
    return cfg


@pytest.mark.openvino
@pytest.mark.parametrize("target", ["onnxruntime:cpu:int8", "openvino:cpu:int8",
                                    "openvino:cpu:fp16"])
def test_reduced_precision_end_to_end_manifest(random_plugin, trained_random_config, tmp_path,
                                                target):
    # the default thresholds (agreement >= 99%, drop <= 1 point), as a user gets them
    out = tmp_path / "b"
    res = CliRunner().invoke(main, ["search-and-export", "--config", str(trained_random_config),
                                    "--target", target, "--export", "onnx,openvino",
                                    "--out", str(out), "--quiet", "--calibration-samples", "128"],
                             catch_exceptions=False)
    assert res.exit_code in (0, 3), res.output
    m = json.loads((out / "manifest.json").read_text())
    precision = target.rsplit(":", 1)[1]
    assert m["target"]["precision"] == precision
    assert m["precision"]["precision"] == precision
    assert m["precision"]["min_agreement"] == RunConfig.min_agreement == 0.99
    assert m["precision"]["max_accuracy_drop_points"] == RunConfig.max_accuracy_drop == 1.0
    for name in ("onnx", "openvino"):
        p = m["parity"][name]
        assert p["verified"] and p["top1_agreement"] >= 0.99 and p["accuracy_drop_points"] <= 1
        assert p["samples"] == m["accuracy"]["samples"] and "max_abs_diff" not in p
    report = (out / "report.md").read_text()
    if precision == "int8":
        q = m["precision"]["quantization"]
        assert q["calibration_samples"] == 128
        # 7-bit weights: right on x86 CPUs without VNNI too (tests/test_int8_overflow.py)
        assert q["overflow_safe"] is True and "7-bit" in q["weights"]
        assert m["artifacts"]["onnx"]["files"]["model"] == "model.int8.onnx"
        assert m["artifacts"]["openvino"]["info"]["source"] == "model.int8.onnx"
        assert (out / "model.int8.onnx").is_file() and (out / "model.onnx").is_file()
        assert "int8 quantization" in report
    else:
        assert "quantization" not in m["precision"]
        assert m["artifacts"]["openvino"]["info"]["inference_precision"] == "f16"
    assert "top-1 agreement" in res.output and "top-1 agreement" in report


@pytest.mark.parametrize("args,needle", [
    (["--target", "onnxruntime:cpu:fp16"], "no fp16 convolution kernels"),
    (["--target", "openvino:cpu:int8", "--latency-model", "lut"], "--latency-model flops"),
    (["--calibration-samples", "0"], "--calibration-samples"),
    (["--min-agreement", "1.5"], "--min-agreement"),
    (["--max-accuracy-drop", "-1"], "--max-accuracy-drop"),
])
def test_precision_bad_inputs(args, needle, tmp_path):
    res = CliRunner().invoke(main, ["search-and-export", "--out", str(tmp_path / "b"), *args])
    assert res.exit_code == 2, res.output
    assert needle in res.output and "Traceback" not in res.output
    assert not (tmp_path / "b").exists()
