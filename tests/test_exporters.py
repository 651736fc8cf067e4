"""Exporters: files written, metadata embedded, parity with PyTorch, typed errors.

The conformance test at the end runs every exporter registered under ``nas2deploy.exporters``
(built-in or third-party) through export → runner → verify_parity on one small net, so
registering an exporter enrols it here.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

import nas2deploy
from nas2deploy.counting import count_params
from nas2deploy.errors import ExportError, ParityError, ShapeError
from nas2deploy.exporter import Artifact, ExportContext, verify_parity
from nas2deploy.netspec import build_network
from nas2deploy.registry import exporters as exporter_registry
from nas2deploy.target import Target, runtimes
from nas2deploy_exporters._common import import_openvino
from nas2deploy_exporters.to_onnx import OnnxExporter
from nas2deploy_exporters.to_openvino import OpenVINOExporter

# conv stem, a separable conv and a pool mixed by a weighted sum, BN+act, an MBConv with SE and
# stride 2, a residual MBConv, head: every op kind a materialized subnet is made of.
SPEC = {
    "input": {"channels": 1, "size": [16, 16]},
    "num_classes": 10,
    "nodes": [
        {"id": "stem", "op": "conv", "inputs": ["input"], "c_in": 1, "c_out": 8, "k": 3},
        {"id": "sep", "op": "sep", "inputs": ["stem"], "c_in": 8, "c_out": 8, "k": 3},
        {"id": "pool", "op": "pool", "inputs": ["stem"], "c": 8, "kind": "avg"},
        {"id": "mix", "op": "sum", "inputs": ["sep", "pool"], "coeffs": [0.7, 0.3]},
        {"id": "post", "op": "bn_act", "inputs": ["mix"], "c": 8},
        {"id": "mb1", "op": "mbconv", "inputs": ["post"], "c_in": 8, "c_out": 16, "mid": 24,
         "k": 3, "stride": 2, "se": 4, "act": "hswish"},
        {"id": "mb2", "op": "mbconv", "inputs": ["mb1"], "c_in": 16, "c_out": 16, "mid": 32,
         "k": 5},
        {"id": "head", "op": "head", "inputs": ["mb2"], "c_in": 16, "num_classes": 10},
    ],
    "output": "head",
}

ov_missing = OpenVINOExporter.unavailable_reason()
onnx_missing = OnnxExporter.unavailable_reason()
requires_onnx = pytest.mark.skipif(onnx_missing is not None, reason=f"ONNX: {onnx_missing}")


def small_net(seed: int = 0) -> torch.nn.Module:
    """The test net with non-trivial BN statistics (train-mode forwards on shifted inputs)."""
    torch.manual_seed(seed)
    net = build_network(SPEC)
    net.train()
    with torch.no_grad():
        for _ in range(5):
            net(torch.randn(16, 1, 16, 16) * 2.0 + 0.5)
    return net.eval()


def metadata() -> dict[str, str]:
    return {"architecture": json.dumps(SPEC, sort_keys=True),
            "nas2deploy_version": nas2deploy.__version__}


@contextlib.contextmanager
def captured_fd1():
    """Capture what is written to file descriptor 1 (Python prints and C-level writes alike)."""
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 1)
        box: dict[str, str] = {}
        try:
            yield box
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
            tmp.seek(0)
            box["text"] = tmp.read().decode(errors="replace")


@pytest.fixture(scope="module")
def net():
    return small_net()


@pytest.fixture(scope="module")
def x():
    torch.manual_seed(1)
    return torch.randn(1, 1, 16, 16)


@pytest.fixture(scope="module")
def exported_and_stdout(net, x, tmp_path_factory):
    """The ONNX export, done once into one bundle directory, and what it wrote to stdout.

    The net is handed over in train() mode: the export must use eval semantics (running BN
    statistics; the parity tests check that) and give the module back in the mode it came in.
    """
    if onnx_missing:
        pytest.skip(f"ONNX: {onnx_missing}")
    bundle = tmp_path_factory.mktemp("bundle")
    ctx = ExportContext(bundle, x, Target("onnxruntime"), metadata())
    net.train()
    with captured_fd1() as out:
        ctx.artifacts["onnx"] = OnnxExporter().export(net, ctx)
    assert net.training, "export did not give the module back in train() mode"
    net.eval()
    return ctx, out["text"]


@pytest.fixture(scope="module")
def exported(exported_and_stdout):
    return exported_and_stdout[0]


# ---------------------------------------------------------------- ONNX

def test_onnx_file_opset_metadata_checker(exported):
    import onnx

    art = exported.artifacts["onnx"]
    assert art.format == "onnx" and art.files == {"model": "model.onnx"}
    path = exported.bundle_dir / "model.onnx"
    assert path.is_file()
    assert not (exported.bundle_dir / "model.onnx.data").exists()  # weights inside the file
    proto = onnx.load(str(path), load_external_data=False)
    onnx.checker.check_model(proto, full_check=True)
    opset = {o.domain: o.version for o in proto.opset_import}.get("", 0)
    assert opset >= 17 and art.info["opset"] == opset
    props = {p.key: p.value for p in proto.metadata_props}
    for key, value in metadata().items():
        assert props[key] == value
    assert json.loads(props["architecture"]) == SPEC
    assert art.info["dynamic_batch"] is True
    assert art.info["input_shape"][1:] == [1, 16, 16] and isinstance(art.info["input_shape"][0], str)
    json.dumps(art.info)  # goes into the manifest as is


@requires_onnx
def test_probe_export_is_the_same_graph(exported, net, x, tmp_path):
    """A latency probe (closed-loop candidates, latency tables) is exported by the faster
    TorchScript path; it must be the graph the bundle ships: the same ops with the same
    attributes at the same opset, a dynamic batch, and the same outputs."""
    import onnx
    import onnxruntime as ort

    ctx = ExportContext(tmp_path, x, Target("onnxruntime"), {}, probe=True)
    art = OnnxExporter().export(net, ctx)
    assert "TorchScript" in art.info["exporter"]
    assert "dynamo" in exported.artifacts["onnx"].info["exporter"]
    assert art.info["opset"] == exported.artifacts["onnx"].info["opset"]
    assert art.info["input_shape"][0] == "batch"

    def ops(path):
        """Op types, and every Conv's geometry (Constant/Identity are how each exporter spells
        a constant; runtimes fold them at load)."""
        graph = onnx.load(str(path)).graph
        kinds = sorted(n.op_type for n in graph.node if n.op_type not in ("Constant", "Identity"))
        convs = sorted(tuple(sorted((a.name, tuple(a.ints) if a.ints else a.i) for a in n.attribute
                                    if a.name in ("kernel_shape", "strides", "pads", "group",
                                                  "dilations")))
                       for n in graph.node if n.op_type == "Conv")
        return kinds, convs

    probe = ops(tmp_path / art.files["model"])
    assert probe == ops(exported.bundle_dir / exported.artifacts["onnx"].files["model"])
    assert set(probe[0]) >= {"Conv", "Gemm", "HardSwish", "Sigmoid", "Mul", "Add", "AveragePool"}
    xs = torch.randn(3, 1, 16, 16).numpy()
    got = []
    for folder, a in ((tmp_path, art), (exported.bundle_dir, exported.artifacts["onnx"])):
        session = ort.InferenceSession(str(folder / a.files["model"]))
        got.append(session.run(None, {session.get_inputs()[0].name: xs})[0])
    np.testing.assert_allclose(got[0], got[1], atol=1e-5)


def test_onnx_export_keeps_stdout_clean(exported_and_stdout):
    assert exported_and_stdout[1] == ""


@pytest.mark.parametrize("batch", [1, 5])
def test_onnx_dynamic_batch_parity(exported, net, batch):
    art = exported.artifacts["onnx"]
    runner = OnnxExporter().runner(exported.bundle_dir, art, Target("onnxruntime"))
    xb = torch.randn(batch, 1, 16, 16)
    worst = verify_parity(net, runner, xb, atol=OnnxExporter.parity_atol)
    assert worst <= 1e-4
    assert runner(xb.numpy()).shape == (batch, 10)


def test_onnx_runner_session_settings(exported):
    runner = OnnxExporter().runner(exported.bundle_dir, exported.artifacts["onnx"],
                                   Target("onnxruntime", threads=2))
    opts = runner.session.get_session_options()
    assert opts.intra_op_num_threads == 2 and opts.inter_op_num_threads == 1
    assert runner.session.get_providers() == ["CPUExecutionProvider"]
    a = np.random.default_rng(0).standard_normal((1, 1, 16, 16), dtype=np.float32)
    np.testing.assert_array_equal(runner(a), runner(a))  # deterministic across calls


def test_onnx_runner_wrong_input_shape_is_shape_error(exported):
    runner = OnnxExporter().runner(exported.bundle_dir, exported.artifacts["onnx"],
                                   Target("onnxruntime"))
    with pytest.raises(ShapeError, match="does not fit"):
        runner(np.zeros((1, 3, 16, 16), np.float32))


def test_perturbed_reference_raises_parity_error(exported, net, x):
    runner = OnnxExporter().runner(exported.bundle_dir, exported.artifacts["onnx"],
                                   Target("onnxruntime"))
    other = copy.deepcopy(net)
    with torch.no_grad():
        other.nodes["head"].fc.bias.add_(1e-2)
    with pytest.raises(ParityError, match="max \\|diff\\|"):
        verify_parity(other, runner, x, atol=OnnxExporter.parity_atol)


def test_wrong_output_shape_raises_shape_error(net, x):
    with pytest.raises(ShapeError):
        verify_parity(net, lambda a: np.zeros((a.shape[0], 9), np.float32), x, atol=1e-4)


@requires_onnx
def test_corrupt_onnx_gives_export_error(tmp_path, net, x):
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07 this is not a protobuf \xff\xfe" * 10)
    art = Artifact("onnx", {"model": "model.onnx"})
    with pytest.raises(ExportError) as info:
        OnnxExporter().runner(tmp_path, art, Target("onnxruntime"))
    assert "\n" not in str(info.value) and info.value.__cause__ is not None
    with pytest.raises(ExportError, match="does not exist"):
        OnnxExporter().runner(tmp_path, Artifact("onnx", {"model": "gone.onnx"}),
                              Target("onnxruntime"))


@requires_onnx
def test_unexportable_model_gives_export_error(tmp_path, x):
    class FixedBatch(torch.nn.Module):  # reshapes to batch 1: cannot have a dynamic batch
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(256, 10)

        def forward(self, x):
            return self.fc(x.reshape(1, 256))

    ctx = ExportContext(tmp_path, x, Target("onnxruntime"), {})
    with pytest.raises(ExportError) as info:
        OnnxExporter().export(FixedBatch(), ctx)
    assert "\n" not in str(info.value) and info.value.__cause__ is not None


# ---------------------------------------------------------------- OpenVINO

@pytest.fixture(scope="module")
def ov_exported(exported, net):
    exported.artifacts["openvino"] = OpenVINOExporter().export(net, exported)
    return exported


@pytest.mark.openvino
@pytest.mark.skipif(ov_missing is not None, reason=f"OpenVINO: {ov_missing}")
def test_openvino_ir_files_fp32_and_metadata(ov_exported, net):
    ov = import_openvino()
    art = ov_exported.artifacts["openvino"]
    xml = ov_exported.bundle_dir / art.files["model_xml"]
    bin_ = ov_exported.bundle_dir / art.files["model_bin"]
    assert xml.is_file() and bin_.is_file()
    assert art.info["static_shape"] == [1, 1, 16, 16] and art.info["inference_precision"] == "f32"
    # fp32 weights: at least 4 bytes per conv/linear weight (these cannot be folded away; fp16
    # would be 2), at most 4 bytes per parameter and buffer plus a little for shape constants.
    weights = sum(p.numel() for n, p in net.named_parameters() if n.endswith("weight") and p.dim() > 1)
    total = count_params(net) + sum(b.numel() for b in net.buffers())
    assert 4 * weights <= bin_.stat().st_size <= 4 * total + 1024
    model = ov.Core().read_model(str(xml))
    assert [int(d) for d in model.input(0).get_shape()] == [1, 1, 16, 16]
    framework = model.get_rt_info(["framework", "nas2deploy_version"]).astype(str)
    assert framework == nas2deploy.__version__
    json.dumps(art.info)


@pytest.mark.openvino
@pytest.mark.skipif(ov_missing is not None, reason=f"OpenVINO: {ov_missing}")
def test_openvino_parity_and_compile_settings(ov_exported, net, x):
    runner = OpenVINOExporter().runner(ov_exported.bundle_dir, ov_exported.artifacts["openvino"],
                                       Target("openvino", threads=1))
    assert verify_parity(net, runner, x, atol=OpenVINOExporter.parity_atol) <= 1e-4
    compiled = runner.compiled
    assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) in ("<Type: 'float32'>", "f32")
    assert compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert compiled.get_property("NUM_STREAMS") == 1
    assert str(compiled.get_property("PERFORMANCE_HINT")) == "LATENCY"
    a = x.numpy().copy()
    first = runner(a)
    second = runner(a + 1.0)
    assert not np.shares_memory(first, second)  # each call returns its own array
    np.testing.assert_array_equal(first, runner(a))


@pytest.mark.openvino
@pytest.mark.skipif(ov_missing is not None, reason=f"OpenVINO: {ov_missing}")
def test_openvino_batch_mismatch_is_shape_error(ov_exported):
    runner = OpenVINOExporter().runner(ov_exported.bundle_dir, ov_exported.artifacts["openvino"],
                                       Target("openvino"))
    with pytest.raises(ShapeError, match="static at batch 1"):
        runner(np.zeros((4, 1, 16, 16), np.float32))
    with pytest.raises(ShapeError):
        runner(np.zeros((1, 3, 16, 16), np.float32))


@pytest.mark.openvino
@pytest.mark.skipif(ov_missing is not None, reason=f"OpenVINO: {ov_missing}")
def test_openvino_static_shape_follows_target_batch(ov_exported, net, tmp_path):
    bundle = tmp_path / "b3"
    bundle.mkdir()
    (bundle / "model.onnx").write_bytes((ov_exported.bundle_dir / "model.onnx").read_bytes())
    x3 = torch.randn(3, 1, 16, 16)
    ctx = ExportContext(bundle, x3, Target("openvino", batch=3), {},
                        artifacts={"onnx": ov_exported.artifacts["onnx"]})
    art = OpenVINOExporter().export(net, ctx)
    assert art.info["static_shape"] == [3, 1, 16, 16]
    runner = OpenVINOExporter().runner(bundle, art, Target("openvino", batch=3))
    assert verify_parity(net, runner, x3, atol=1e-4) <= 1e-4


@pytest.mark.openvino
@pytest.mark.skipif(ov_missing is not None, reason=f"OpenVINO: {ov_missing}")
def test_openvino_ir_is_reproducible(ov_exported, net, tmp_path):
    """One ONNX file gives byte-identical IR, however many OpenVINO graphs the process made."""
    (tmp_path / "model.onnx").write_bytes((ov_exported.bundle_dir / "model.onnx").read_bytes())
    ctx = ExportContext(tmp_path, ov_exported.example, Target("openvino"), {},
                        artifacts={"onnx": ov_exported.artifacts["onnx"]})
    art = OpenVINOExporter().export(net, ctx)
    for key in ("model_xml", "model_bin"):
        assert (tmp_path / art.files[key]).read_bytes() == \
            (ov_exported.bundle_dir / art.files[key]).read_bytes(), key


@pytest.mark.openvino
@pytest.mark.skipif(ov_missing is not None, reason=f"OpenVINO: {ov_missing}")
def test_openvino_errors_are_export_errors(tmp_path, net, x):
    ctx = ExportContext(tmp_path, x, Target("openvino"), {})
    with pytest.raises(ExportError, match="export onnx first"):
        OpenVINOExporter().export(net, ctx)
    (tmp_path / "model.onnx").write_bytes(b"garbage" * 50)
    ctx.artifacts["onnx"] = Artifact("onnx", {"model": "model.onnx"})
    with pytest.raises(ExportError) as info:
        OpenVINOExporter().export(net, ctx)
    assert "\n" not in str(info.value) and info.value.__cause__ is not None
    (tmp_path / "openvino").mkdir()
    (tmp_path / "openvino" / "model.xml").write_text("<net><broken")
    art = Artifact("openvino", {"model_xml": "openvino/model.xml", "model_bin": "openvino/model.bin"})
    with pytest.raises(ExportError) as info:
        OpenVINOExporter().runner(tmp_path, art, Target("openvino"))
    assert "\n" not in str(info.value)


@pytest.mark.openvino
@pytest.mark.skipif(ov_missing is not None, reason=f"OpenVINO: {ov_missing}")
def test_openvino_import_sends_no_telemetry():
    """Loading the exporters imports no runtime, and openvino comes up without telemetry: a plain
    ``import openvino`` starts a child process that posts a usage event; ours starts nothing."""
    code = (
        "import sys, time, multiprocessing, urllib.request\n"
        "attempts = []\n"
        "multiprocessing.Process.start = lambda self, *a, **k: attempts.append('process')\n"
        "urllib.request.urlopen = lambda *a, **k: attempts.append('urlopen')\n"
        "from nas2deploy_exporters.to_onnx import OnnxExporter\n"
        "from nas2deploy_exporters.to_openvino import OpenVINOExporter\n"
        "assert 'openvino' not in sys.modules and 'onnxruntime' not in sys.modules\n"
        "assert OpenVINOExporter.unavailable_reason() is None\n"
        "import openvino\n"
        "openvino.Core()\n"
        "from openvino.tools.ovc import telemetry_utils\n"
        "assert telemetry_utils.tm.__name__.endswith('telemetry_stub'), telemetry_utils.tm\n"
        "time.sleep(0.3)  # the real sender works in a background thread\n"
        "assert attempts == [], attempts\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"


# ---------------------------------------------------------------- conformance

_RUNTIME_MARKS = {"openvino": [pytest.mark.openvino], "tensorrt": [pytest.mark.tensorrt, pytest.mark.gpu]}


def _entry_params():
    return [pytest.param(e, id=e.name, marks=_RUNTIME_MARKS.get(
        getattr(e.obj, "runtime", None) or "", [])) for e in exporter_registry.entries()]


def _target_for(runtime: str | None, batch: int) -> Target:
    if runtime in runtimes():
        return Target.parse(runtime, batch=batch)
    return Target(runtime or "torch", batch=batch)


def _export_with_needs(name: str, model, ctx: ExportContext, seen: tuple[str, ...] = ()) -> Artifact:
    if name in ctx.artifacts:
        return ctx.artifacts[name]
    assert name not in seen, f"exporter dependency cycle: {' -> '.join(seen + (name,))}"
    cls = exporter_registry.get(name)
    for need in cls.needs:
        need_cls = exporter_registry.get(need)
        if need_cls.unavailable_reason():
            pytest.skip(f"{name} needs {need}: {need_cls.unavailable_reason()}")
        _export_with_needs(need, model, ctx, seen + (name,))
    art = cls().export(model, ctx)
    ctx.artifacts[name] = art
    return art


def test_registry_lists_builtin_exporters():
    names = exporter_registry.names()
    assert {"onnx", "openvino"} <= set(names)


@pytest.mark.parametrize("entry", _entry_params())
def test_exporter_conformance(entry, tmp_path):
    assert entry.obj is not None, f"exporter {entry.name} ({entry.dist}) failed to load: {entry.error}"
    cls = entry.obj
    assert cls.name == entry.name
    reason = cls.unavailable_reason()
    if reason is not None:
        assert isinstance(reason, str) and "\n" not in reason
        pytest.skip(f"{entry.name}: {reason}")
    versions = cls.versions()
    assert isinstance(versions, dict) and all(isinstance(v, str) for v in versions.values())
    for need in cls.needs:
        assert need in exporter_registry.names(), f"{entry.name} needs unknown exporter {need!r}"

    net = small_net(seed=7)
    x = torch.randn(1, 1, 16, 16)
    target = _target_for(cls.runtime, batch=1)
    ctx = ExportContext(tmp_path, x, target, metadata())
    art = _export_with_needs(entry.name, net, ctx)
    assert art.format == entry.name
    for rel in art.files.values():
        assert not Path(rel).is_absolute()
        path = (tmp_path / rel).resolve()
        assert path.is_relative_to(tmp_path.resolve()) and path.exists(), rel
    json.dumps(art.info)
    if not art.runnable:  # written here for another machine (a TensorRT engine build script)
        reason = art.info.get("not_runnable_reason")
        assert isinstance(reason, str) and reason and "\n" not in reason
        pytest.skip(f"{entry.name} artifact is not runnable here: {reason}")
    runner = cls().runner(tmp_path, art, target)
    worst = verify_parity(net, runner, x, atol=cls.parity_atol)
    assert 0.0 <= worst <= cls.parity_atol
