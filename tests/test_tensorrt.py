"""TensorRT: what is checked here, and the real engine where TensorRT and a GPU exist.

Everywhere: the ONNX graph against TensorRT's documented parser operators (a planted unsupported
node is caught and named; every op our exporter emits for the three spaces is covered), the
profile shapes, the trtexec script (``bash -n``, flags, files), the not-runnable artifact and the
one-line CLI refusals. No stand-in for TensorRT or trtexec is used: the builder, ``build-engine``
and the engine runner are exercised by the ``tensorrt``-marked tests at the end, which build, run
and time real engines and skip with the reason where TensorRT or the GPU is missing.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper

from nas2deploy import registry
from nas2deploy.bundle import FORMAT, FORMAT_VERSION, MANIFEST, read_manifest, sha256
from nas2deploy.cli import main
from nas2deploy.errors import ExportError, ShapeError, UnavailableError
from nas2deploy.exporter import Artifact, ExportContext, verify_parity
from nas2deploy.latency import Protocol, measure
from nas2deploy.target import Target
from nas2deploy_exporters import tensorrt as trt_mod
from nas2deploy_exporters.tensorrt import TensorRTExporter
from nas2deploy_exporters.tensorrt.check import check_graph, supported_ops
from nas2deploy_exporters.to_onnx import OnnxExporter

sys.path.insert(0, str(Path(__file__).parent))
from test_exporters import metadata  # noqa: E402
from test_exporters import small_net as _small_net  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TRT_MISSING = trt_mod.tensorrt_import_error()
CUDA_MISSING = trt_mod.cuda_missing()
CAN_BUILD_HERE = TRT_MISSING is None and CUDA_MISSING is None


@functools.lru_cache(maxsize=1)
def small_net():
    """The exporter tests' net (conv, sep, pool, BN, MBConv with SE and hswish), built once."""
    return _small_net()


def needs_tensorrt(fn):
    """Marked ``tensorrt`` and ``gpu``; skipped with the reason where either is missing."""
    missing = [m for m in (TRT_MISSING and f"tensorrt does not import here ({TRT_MISSING})",
                           CUDA_MISSING) if m]
    for mark in (pytest.mark.skipif(bool(missing), reason="; ".join(missing)),
                 pytest.mark.gpu, pytest.mark.tensorrt):
        fn = mark(fn)
    return fn


_ONNX: dict[bool, tuple[Path, Artifact]] = {}  # the small net's ONNX (and Q/DQ) files, made once


@pytest.fixture(scope="module", autouse=True)
def _onnx_cache(tmp_path_factory):
    _ONNX["dir"] = tmp_path_factory.mktemp("onnx-cache")
    yield
    _ONNX.clear()


def onnx_artifact(tmp: Path, qdq: bool) -> Artifact:
    """The default small net's onnx artifact in ``tmp``, copied from a single export."""
    if qdq not in _ONNX:
        folder = _ONNX["dir"] / ("qdq" if qdq else "fp32")
        folder.mkdir()
        ctx = ExportContext(folder, torch.randn(1, 1, 16, 16), Target.parse("tensorrt:cuda"),
                            metadata())
        art = OnnxExporter().export(small_net(), ctx)
        if qdq:
            quantize(folder / "model.onnx", folder / "model.int8.onnx", art.info["input_name"])
            art.files = {"model": "model.int8.onnx", "fp32": "model.onnx"}
        _ONNX[qdq] = (folder, art)
    folder, art = _ONNX[qdq]
    tmp.mkdir(parents=True, exist_ok=True)
    for rel in art.files.values():
        shutil.copy(folder / rel, tmp / rel)
    return Artifact(art.format, dict(art.files), json.loads(json.dumps(art.info)))


def export(tmp: Path, precision: str = "fp32", batch: int = 1, qdq: bool = False):
    """The fp32 onnx artifact (+ a Q/DQ copy, laid out as the onnx exporter lays out its int8
    artifact) then tensorrt for ``precision``."""
    net = small_net()
    x = torch.randn(batch, 1, 16, 16)
    ctx = ExportContext(tmp, x, Target.parse(f"tensorrt:cuda:{precision}", batch=batch), metadata())
    ctx.artifacts["onnx"] = onnx_artifact(tmp, qdq)
    art = TensorRTExporter().export(net, ctx)
    return art, ctx, net


def quantize(src: Path, dst: Path, input_name: str) -> None:
    """A symmetric Q/DQ ONNX, the form TensorRT's explicit quantization takes."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(0)

    class Reader:
        def __init__(self):
            self.it = iter([{input_name: rng.standard_normal((8, 1, 16, 16)).astype(np.float32)}
                            for _ in range(2)])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})


def tiny_graph(nodes, *, opset=18, in_dims=("batch", 3, 8, 8), extra_init=()):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_dims))
    y = helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=list(extra_init))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


# --------------------------------------------------------------------------------------------
# the supported-operator check


def test_data_file_is_the_documented_table():
    table = supported_ops()
    assert table["source"].startswith("https://github.com/onnx/onnx-tensorrt/")
    assert table["tensorrt_version"].startswith("10")
    assert table["opsets"]["min"] <= 18 <= table["opsets"]["max"]
    ours = {"Conv", "Relu", "Clip", "Add", "Mul", "Sigmoid", "HardSigmoid", "HardSwish",
            "GlobalAveragePool", "ReduceMean", "AveragePool", "MaxPool", "Gemm", "MatMul",
            "Flatten", "Reshape", "Concat", "BatchNormalization", "QuantizeLinear",
            "DequantizeLinear", "Identity", "Constant", "Shape", "Gather", "Unsqueeze",
            "Squeeze", "Cast", "Slice", "Transpose", "Sub", "Div"}
    assert ours <= set(table["ops"]), ours - set(table["ops"])
    assert len(table["ops"]) > 120 and {"Unique", "QLinearConv"} <= set(table["unsupported"])
    assert not set(table["ops"]) & set(table["unsupported"])


def test_planted_unsupported_nodes_are_named():
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="stem_relu"),
             helper.make_node("Unique", ["r"], ["u"], name="planted_unique"),
             helper.make_node("MyNMS", ["u"], ["n"], name="planted_plugin", domain="com.example"),
             helper.make_node("NotAnOnnxOp", ["n"], ["y"], name="planted_unknown")]
    proto = tiny_graph(nodes)
    proto.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(ExportError) as err:
        check_graph(proto)
    msg = str(err.value)
    assert "3 node(s)" in msg and "stem_relu" not in msg
    assert "planted_unique (Unique): documented as unsupported" in msg
    assert "planted_plugin (MyNMS) in domain 'com.example'" in msg
    assert "planted_unknown (NotAnOnnxOp): not in the supported list" in msg
    assert "\n" not in msg


def test_restrictions_opset_and_newer_ops():
    zp = helper.make_tensor("zp", TensorProto.INT8, [], [3])
    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
    q = tiny_graph([helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="q1"),
                    helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dq1")],
                   extra_init=[zp, scale])
    with pytest.raises(ExportError, match=r"q1 \(QuantizeLinear\): zero point must be 0"):
        check_graph(q)
    pool = tiny_graph([helper.make_node("MaxPool", ["x"], ["y"], name="p", kernel_shape=[2, 2],
                                        dilations=[2, 2])])
    with pytest.raises(ExportError, match=r"p \(MaxPool\): dilations \[2, 2\]"):
        check_graph(pool)
    with pytest.raises(ExportError, match="opset 8 is outside"):
        check_graph(tiny_graph([helper.make_node("Relu", ["x"], ["y"])], opset=8))
    newer = tiny_graph([helper.make_node("DeformConv", ["x", "x", "x"], ["y"], name="dc")])
    assert check_graph(newer)["needs_newer_tensorrt"] == {"DeformConv": "10.1"}
    with pytest.raises(ExportError, match="needs TensorRT >= 10.1, this is 10.0.1"):
        check_graph(newer, tensorrt_version="10.0.1")


def test_planted_node_in_an_exported_network_fails_the_export(tmp_path):
    net = small_net()
    ctx = ExportContext(tmp_path, torch.randn(1, 1, 16, 16), Target.parse("tensorrt:cuda"), {})
    ctx.artifacts["onnx"] = onnx_artifact(tmp_path, qdq=False)
    proto = onnx.load(str(tmp_path / "model.onnx"))
    out = proto.graph.output[0].name
    proto.graph.node[-1].output[0] = "pre_out"
    proto.graph.node.append(helper.make_node("Unique", ["pre_out"], [out], name="planted"))
    onnx.save(proto, str(tmp_path / "model.onnx"))
    with pytest.raises(ExportError, match=r"planted \(Unique\)"):
        TensorRTExporter().export(net, ctx)
    assert not (tmp_path / "tensorrt").exists()  # nothing is written for a graph that cannot build


@pytest.mark.parametrize("space", ["dsonas", "densenas", "tfnas"])
def test_every_op_of_the_largest_networks_is_supported(space, tmp_path):
    from nas2deploy.materialize import materialize
    from nas2deploy.method import TaskSpec

    method = registry.methods.get(space)()
    net = materialize(method.space(method.build(TaskSpec(3, 32, 10))).largest()).eval()
    ctx = ExportContext(tmp_path, torch.randn(1, 3, 32, 32), Target.parse("tensorrt:cuda"), {})
    OnnxExporter().export(net, ctx)
    checked = check_graph(onnx.load(str(tmp_path / "model.onnx")))
    assert {"Conv", "Gemm"} <= set(checked["op_types"]) and not checked["needs_newer_tensorrt"]


def test_qdq_graph_passes_the_check(tmp_path):
    art, _, _ = export(tmp_path, "int8", qdq=True)
    ops = set(art.info["onnx_check"]["op_types"])
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops


def test_the_onnx_exporters_int8_artifact_is_taken(tmp_path):
    net = small_net()
    ctx = ExportContext(tmp_path, torch.randn(2, 1, 16, 16),
                        Target.parse("tensorrt:cuda:int8", batch=2), metadata(),
                        calibration=torch.randn(64, 1, 16, 16))
    onnx_art = OnnxExporter().export(net, ctx)
    if "fp32" not in onnx_art.files:
        pytest.skip("the onnx exporter writes no Q/DQ model for int8 targets")
    ctx.artifacts["onnx"] = onnx_art
    art = TensorRTExporter().export(net, ctx)
    assert art.info["onnx"] == onnx_art.files["model"] and art.info["onnx_qdq"] == art.info["onnx"]
    assert art.info["onnx_fp32"] == onnx_art.files["fp32"]
    assert "--int8" in (tmp_path / art.files["script"]).read_text()


# --------------------------------------------------------------------------------------------
# shapes and the profile


def _save(proto, folder: Path, name="m.onnx") -> str:
    onnx.save(proto, str(folder / name))
    return name


def test_profile_follows_target_batch_and_static_axes(tmp_path):
    rel = _save(tiny_graph([helper.make_node("Relu", ["x"], ["y"])]), tmp_path)
    plan, _ = trt_mod.make_plan(tmp_path, rel, "fp16", 4, (4, 3, 8, 8))
    assert (plan.min, plan.opt, plan.max) == ((1, 3, 8, 8), (4, 3, 8, 8), (32, 3, 8, 8))
    big, _ = trt_mod.make_plan(tmp_path, rel, "fp16", 64)
    assert big.max[0] == 64 and big.opt[0] == 64
    with pytest.raises(ShapeError, match="does not fit"):
        trt_mod.make_plan(tmp_path, rel, "fp32", 1, (1, 3, 16, 16))
    dyn = _save(tiny_graph([helper.make_node("Relu", ["x"], ["y"])], in_dims=("b", 3, "h", 8)),
                tmp_path, "dyn.onnx")
    with pytest.raises(ExportError, match="dynamic in axis 2"):
        trt_mod.make_plan(tmp_path, dyn, "fp32", 1)
    static = _save(tiny_graph([helper.make_node("Relu", ["x"], ["y"])], in_dims=(2, 3, 8, 8)),
                   tmp_path, "static.onnx")
    assert trt_mod.make_plan(tmp_path, static, "fp32", 2)[0].max[0] == 2
    with pytest.raises(ShapeError, match="static batch of 2"):
        trt_mod.make_plan(tmp_path, static, "fp32", 4)
    with pytest.raises(ExportError, match="no QuantizeLinear"):
        trt_mod.make_plan(tmp_path, rel, "int8", 1)


# --------------------------------------------------------------------------------------------
# the script, the README and the artifact written where TensorRT is absent


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_build_script_per_precision(precision, tmp_path):
    art, ctx, _ = export(tmp_path, precision, batch=2, qdq=precision == "int8")
    script = tmp_path / art.files["script"]
    text = script.read_text()
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert os.access(script, os.X_OK) and text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text and "command -v trtexec" in text
    name = art.info["input_name"]
    assert f"--minShapes={name}:1x1x16x16" in text
    assert f"--optShapes={name}:2x1x16x16" in text
    assert f"--maxShapes={name}:32x1x16x16" in text
    assert "--timingCacheFile=\"$HERE/timing.cache\"" in text
    flags = {"fp32": "--noTF32", "fp16": "--fp16", "int8": "--int8"}
    assert flags[precision] in text
    assert all(f not in text for p, f in flags.items() if p != precision)
    assert "calib" not in text  # int8 is explicit quantization: no calibrator on the device
    onnx_rel = "model.int8.onnx" if precision == "int8" else "model.onnx"
    assert art.info["onnx"] == onnx_rel and f'ONNX="$HERE/../{onnx_rel}"' in text
    for ref in re.findall(r'\$HERE/([^"\s}]+)', text):
        target = (script.parent / ref).resolve()
        assert target.is_relative_to(tmp_path.resolve())
        assert target.suffix != ".onnx" or target.is_file()
    assert art.info["script_check"].startswith("bash -n passed")
    readme = (tmp_path / art.files["readme"]).read_text()
    assert "nas2deploy build-engine" in readme and "--target tensorrt:cuda" in readme
    assert precision in readme and onnx_rel in readme


def test_broken_script_fails_the_check(tmp_path):
    art, ctx, _ = export(tmp_path)
    plan, _ = trt_mod.make_plan(tmp_path, "model.onnx", "fp32", 1)
    script = tmp_path / art.files["script"]
    script.write_text(script.read_text() + "if then\n")
    with pytest.raises(ExportError, match="fails `bash -n`"):
        trt_mod.check_script(tmp_path, art.files["script"], plan)
    script.write_text('HERE=x\ntrtexec --onnx="$HERE/../missing.onnx"\n')
    with pytest.raises(ExportError, match="missing.onnx, which is not in the bundle"):
        trt_mod.check_script(tmp_path, art.files["script"], plan)


@pytest.mark.skipif(CAN_BUILD_HERE, reason="TensorRT and a GPU are here: the engine is built")
def test_export_without_tensorrt_is_not_runnable(tmp_path):
    art, _, _ = export(tmp_path, "fp16")
    assert art.runnable is False and art.info["engine_built"] is False
    reason = art.info["not_runnable_reason"]
    assert "\n" not in reason and "nas2deploy build-engine" in reason
    assert ("tensorrt is not installed here" in reason) == (TRT_MISSING is not None)
    assert set(art.files) == {"script", "readme"} and not (tmp_path / trt_mod.ENGINE).exists()
    assert art.info["precision"] == "fp16" and art.info["profile"]["opt"][0] == 1
    json.dumps(art.info)
    with pytest.raises(UnavailableError) as err:
        TensorRTExporter().runner(tmp_path, art, Target.parse("tensorrt:cuda:fp16"))
    assert "\n" not in str(err.value) and "build-engine" in str(err.value)


def test_int8_needs_the_qdq_onnx(tmp_path):
    with pytest.raises(ExportError, match="Q/DQ"):
        export(tmp_path, "int8", qdq=False)


# --------------------------------------------------------------------------------------------
# bundles and the command line


def make_bundle(folder: Path, precision: str = "fp32", *, batch: int = 1, qdq: bool = False) -> Path:
    """A bundle as search-and-export writes it, limited to what build-engine/measure read."""
    folder.mkdir(parents=True, exist_ok=True)
    art, ctx, _ = export(folder, precision, batch=batch, qdq=qdq)
    arts = {"onnx": ctx.artifacts["onnx"], "tensorrt": art}
    files = {}
    for a in arts.values():
        for key, rel in a.files.items():
            files[a.format if key == "model" else f"{a.format}_{key}"] = rel
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "target": Target.parse(f"tensorrt:cuda:{precision}", batch=batch).to_dict(),
                "latency": {"budget_ms": 1000.0},
                "preprocessing": {"input_shape": [batch, 1, 16, 16]},
                "artifacts": {n: {"files": a.files, "info": a.info} for n, a in arts.items()},
                "files": {**files, "manifest": MANIFEST},
                "hashes": {rel: sha256(folder / rel) for k, rel in files.items()}}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return folder


def assert_one_line_error(res, code: int, *needles: str):
    """Exit ``code``, no traceback, one ``error:`` line on stderr (after any progress lines)."""
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output
    err = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith("[nas2deploy]")]
    assert len(err) == 1 and err[0].startswith("error: "), res.stderr
    for n in needles:
        assert n in err[0], err[0]


no_build_possible = pytest.mark.skipif(
    CAN_BUILD_HERE or (trt_mod.find_trtexec() is not None and CUDA_MISSING is None),
    reason="TensorRT and a GPU are here: build-engine succeeds")


@no_build_possible
def test_cli_build_engine_without_tensorrt_exits_2(tmp_path):
    bundle = make_bundle(tmp_path / "b")
    res = CliRunner().invoke(main, ["build-engine", str(bundle)])
    assert_one_line_error(res, 2, "cannot build a TensorRT engine on this machine")
    from nas2deploy.engine import gpu_visible

    if TRT_MISSING and trt_mod.find_trtexec() is None:
        assert "TensorRT is missing" in res.stderr
    if not gpu_visible():
        assert "no CUDA GPU is visible" in res.stderr
    res = CliRunner().invoke(main, ["build-engine", str(bundle), "--trtexec"])
    assert_one_line_error(res, 2)


@pytest.mark.skipif(CAN_BUILD_HERE, reason="TensorRT and a GPU are here: measure runs")
def test_cli_measure_tensorrt_without_tensorrt_exits_2(tmp_path):
    bundle = make_bundle(tmp_path / "b", "fp16")
    res = CliRunner().invoke(main, ["measure", str(bundle), "--target", "tensorrt:cuda"])
    assert_one_line_error(res, 2, "tensorrt")
    assert "measurements" not in json.loads((bundle / MANIFEST).read_text())
    # the real console script, in a subprocess
    exe = Path(sys.executable).with_name("nas2deploy")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "nas2deploy.cli"]
    proc = subprocess.run(cmd + ["measure", str(bundle), "--target", "tensorrt:cuda"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error: ")


def test_cli_measure_of_a_bundle_without_the_tensorrt_artifact(tmp_path):
    bundle = make_bundle(tmp_path / "b")
    m = json.loads((bundle / MANIFEST).read_text())
    del m["artifacts"]["tensorrt"]
    (bundle / MANIFEST).write_text(json.dumps(m))
    res = CliRunner().invoke(main, ["measure", str(bundle), "--target", "tensorrt:cuda"])
    assert_one_line_error(res, 2, "--export tensorrt")
    res = CliRunner().invoke(main, ["build-engine", str(bundle)])
    assert_one_line_error(res, 2, "--export onnx,tensorrt")


# --------------------------------------------------------------------------------------------
# searching here for a device this machine cannot run (the Jetson workflow's step 2)

TINY_DSONAS = {"levels": 1, "ops": ["sep3"], "stages": 1, "blocks_per_stage": 1, "base_width": 4}


@pytest.fixture
def device_table(tmp_path, monkeypatch):
    """A latency table as `nas2deploy lut build --target tensorrt:cuda:fp16` writes it on the
    device. No device here: the table is really built (onnxruntime, this CPU) and then labelled
    as the device's, which is all the workstation side reads of it. Its costs are then set
    in proportion to each op's size (and a fixed overhead): as measured, this tiny space's ops
    are all per-call overhead, and a budget of 0.95 x the largest fell below the smallest at
    width 0.25 whenever the CPU's noise went the wrong way (one CI run in several)."""
    from nas2deploy.latency.make import build_table_cli

    monkeypatch.setenv("NAS2DEPLOY_CACHE", str(tmp_path / "cache"))
    path = build_table_cli("dsonas", "onnxruntime:cpu", 8, tmp_path / "measured.json", None,
                           method_options=TINY_DSONAS, grid=(0.5, 1.0))
    d = json.loads(Path(path).read_text())
    d["meta"]["target"].update(runtime="tensorrt", device="cuda", precision="fp16")
    d["meta"]["overhead_ms"] = 0.002
    for e in d["entries"].values():
        sig = e["sig"]
        e["ms"] = 1e-4 * sig["h"] * sig["w"] * sig["c_out"] * max(sig["kernel"], 1) ** 2 / 64
    out = tmp_path / "jetson.lut.json"
    out.write_text(json.dumps(d))
    return out


@pytest.mark.skipif(CAN_BUILD_HERE, reason="TensorRT and a GPU are here: the target is timed here")
def test_search_for_a_device_target_steers_by_its_table(tmp_path, device_table):
    cfg = tmp_path / "c.toml"
    cfg.write_text('method = "dsonas"\ninput-size = 8\nsearch-epochs = 1\nretrain-epochs = 1\n'
                   'target = "tensorrt:cuda:fp16"\nexport = "onnx,tensorrt"\nlatency-fraction = 0.95\n'
                   '[method-options]\nlevels = 1\nops = ["sep3"]\nstages = 1\n'
                   'blocks_per_stage = 1\nbase_width = 4\n')
    out = tmp_path / "bundle"
    res = CliRunner().invoke(main, ["search-and-export", "--config", str(cfg), "--out", str(out),
                                    "--quiet"])
    assert_one_line_error(res, 2, "cannot be timed on this machine", "nas2deploy lut build",
                          "--lut FILE")
    assert not out.exists()

    res = CliRunner().invoke(main, ["search-and-export", "--config", str(cfg), "--out", str(out),
                                    "--quiet", "--lut", str(device_table), "--json"])
    assert res.exit_code == 0, res.output
    m = read_manifest(out)
    lat = m["latency"]
    assert lat["within_budget"] is None and lat["measured"] is None
    assert "nas2deploy measure" in lat["verdict"] and lat["table"] == str(device_table)
    assert lat["latency_model"]["kind"] == "lut"
    assert "predicted by the device's table" in lat["budget_source"]
    assert [r["measured_p50_ms"] for r in lat["rounds"]] == [None]
    assert m["parity"]["onnx"]["verified"] and not m["parity"]["tensorrt"]["verified"]
    assert (out / "tensorrt" / "build_engine.sh").is_file()
    assert "not measured here" in (out / "report.md").read_text()
    assert "unverified" in res.output

    # int8 needs int8 candidates measured on the device: refused here with the reason
    res = CliRunner().invoke(main, ["search-and-export", "--config", str(cfg), "--out",
                                    str(tmp_path / "b3"), "--quiet", "--target",
                                    "tensorrt:cuda:int8", "--lut", str(device_table)])
    assert_one_line_error(res, 2, "cannot be searched on this machine", "run the search on the device")

    # a table from another target is refused by name
    d = json.loads(device_table.read_text())
    d["meta"]["target"]["precision"] = "fp32"
    wrong = tmp_path / "fp32.lut.json"
    wrong.write_text(json.dumps(d))
    res = CliRunner().invoke(main, ["search-and-export", "--config", str(cfg), "--out",
                                    str(tmp_path / "b2"), "--quiet", "--lut", str(wrong)])
    assert_one_line_error(res, 2, "was measured for target")


# --------------------------------------------------------------------------------------------
# the real thing: TensorRT and a CUDA GPU


@needs_tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_real_engine_builds_runs_and_is_timed(precision, tmp_path):
    art, _, net = export(tmp_path, precision, batch=4)
    assert art.runnable and art.info["engine_built"] and (tmp_path / trt_mod.ENGINE).is_file()
    assert (tmp_path / trt_mod.CACHE).stat().st_size > 0
    run = TensorRTExporter().runner(tmp_path, art, Target.parse(f"tensorrt:cuda:{precision}", batch=4))
    x = torch.randn(64, 1, 16, 16)
    if precision == "fp32":
        for i in range(0, 64, 4):
            assert verify_parity(net, run, x[i:i + 4], atol=TensorRTExporter.parity_atol) \
                <= TensorRTExporter.parity_atol
    else:
        with torch.no_grad():
            ref = net(x).numpy()
        got = np.concatenate([run(x[i:i + 4].numpy()) for i in range(0, 64, 4)])
        assert got.shape == ref.shape and np.abs(got - ref).max() < 5e-2
        assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.95
    assert run(x[:1].numpy()).shape == (1, 10) and run(x[:32].numpy()).shape == (32, 10)
    with pytest.raises(ShapeError, match="outside the engine's profile"):
        run(x[:33].numpy())
    rep = measure(run, x[:4].numpy(), batch=4,
                  protocol=Protocol(warmup=10, runs=50, min_runs=10, max_seconds=5, min_seconds=0.1))
    assert 0 < rep.p50_ms <= rep.p90_ms
    gpu = run.gpu_times_ms(x[:4].numpy(), runs=20, warmup=5)
    assert len(gpu) == 20 and min(gpu) > 0 and np.median(gpu) <= rep.p50_ms


@needs_tensorrt
def test_real_int8_engine_from_qdq_onnx(tmp_path):
    art, _, net = export(tmp_path, "int8", batch=2, qdq=True)
    run = TensorRTExporter().runner(tmp_path, art, Target.parse("tensorrt:cuda:int8", batch=2))
    x = torch.randn(32, 1, 16, 16)
    with torch.no_grad():
        ref = net(x).numpy()
    got = np.concatenate([run(x[i:i + 2].numpy()) for i in range(0, 32, 2)])
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.8


@needs_tensorrt
def test_real_build_engine_and_measure_cli(tmp_path):
    bundle = make_bundle(tmp_path / "b", "fp16", batch=2)
    (bundle / trt_mod.ENGINE).unlink()  # built again, as on the device
    res = CliRunner().invoke(main, ["build-engine", str(bundle), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["device"] and info["tensorrt_version"] and info["precision"] == "fp16"
    read_manifest(bundle)
    res = CliRunner().invoke(main, ["measure", str(bundle), "--target", "tensorrt:cuda", "--json"])
    assert res.exit_code in (0, 3), res.output
    rec = json.loads(res.stdout)
    assert rec["target"] == "tensorrt:cuda:fp16" and rec["gpu"]["name"]
    assert rec["runtime"]["tensorrt_version"] and rec["runtime"]["gpu_compute_p50_ms"] > 0
    res = CliRunner().invoke(main, ["measure", str(bundle), "--target", "tensorrt:cuda:fp32"])
    assert_one_line_error(res, 2, "is fp16")
    if trt_mod.find_trtexec():
        res = CliRunner().invoke(main, ["build-engine", str(bundle), "--trtexec", "--json"])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["built_with"].startswith("trtexec")
        read_manifest(bundle)


@needs_tensorrt
def test_real_latency_table_runner_for_tensorrt(tmp_path):
    from nas2deploy.latency.collect import RunnerFactory

    factory = RunnerFactory(Target.parse("tensorrt:cuda:fp16"), tmp_path, fast_export=True)
    assert factory.chain == ["onnx", "tensorrt"]
    net = small_net()
    x = torch.randn(1, 1, 16, 16)
    run = factory(net, x)
    with torch.no_grad():
        assert np.abs(run(x.numpy()) - net(x).numpy()).max() < 5e-2


def test_measure_without_precision_takes_the_artifacts(tmp_path):
    bundle = make_bundle(tmp_path / "b", "fp16")  # onnx artifact fp32, target tensorrt fp16
    res = CliRunner().invoke(main, ["measure", str(bundle), "--target", "onnxruntime:cpu",
                                    "--json", "--no-record"])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)
    assert rec["target"] == "onnxruntime:cpu:fp32" and "gpu" not in rec


def test_exporters_command_lists_tensorrt():
    res = CliRunner().invoke(main, ["exporters"])
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("tensorrt"))
    assert "runtime=tensorrt" in line and "available" in line


def test_jetson_example():
    folder = ROOT / "examples" / "jetson"
    script = folder / "edge_workflow.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert os.access(script, os.X_OK)
    readme = (folder / "README.md").read_text()
    for step in ("nas2deploy lut build --space dsonas --target tensorrt:cuda:fp16 --out jetson.lut.json",
                 "--latency-model lut --lut jetson.lut.json --export onnx,tensorrt --out bundle",
                 "nas2deploy build-engine bundle", "nas2deploy measure bundle --target tensorrt:cuda"):
        assert step in readme.replace("\\\n    ", ""), step
    res = subprocess.run(["bash", str(script)], capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k != "JETSON"})
    assert res.returncode != 0 and "set JETSON=user@host" in res.stderr
