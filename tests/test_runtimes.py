"""Runtimes are declared by exporters, and targets are parsed against those declarations.

Every registered exporter (and eager torch, declared beside the Exporter contract) says which
runtimes and devices run its files, which precisions each runtime runs and why others are
refused. These tests check that every declaration is well formed, that ``Target.parse`` accepts
exactly the declared combinations and refuses the rest with the declared reason, that the
built-in declarations give the targets core used to list, and that a runtime declared by a
really installed distribution parses with no change to core.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nas2deploy import registry
from nas2deploy.errors import UsageError
from nas2deploy.exporter import EagerTorch, Exporter, RuntimeDeclaration
from nas2deploy.runtime import exporter_for_runtime, resolve_chain
from nas2deploy.target import (PRECISIONS, Target, channel_multiple, declaration, declarations,
                               runtimes, supported_precisions)

# What core listed before the runtimes moved into the exporters; the built-in declarations must
# give exactly these targets and refusals.
BUILT_IN_DEVICES = {"torch": ("cpu", "cuda"), "onnxruntime": ("cpu",), "openvino": ("cpu",),
                    "tensorrt": ("cuda",)}
BUILT_IN_PRECISIONS = {"torch": ("fp32",), "onnxruntime": ("fp32", "int8"),
                       "openvino": ("fp32", "fp16", "int8"), "tensorrt": ("fp32", "fp16", "int8")}
BUILT_IN_WHY_NOT = {
    ("onnxruntime", "fp16"): "onnxruntime's CPU provider has no fp16 convolution kernels (it would "
                             "cast around every op); use onnxruntime:cpu:int8 or openvino:cpu:fp16",
    ("torch", "fp16"): "eager torch is a reference runtime here, fp32 only",
    ("torch", "int8"): "eager torch is a reference runtime here, fp32 only",
}
# devices no built-in runtime declares, to check that undeclared ones are refused
OTHER_DEVICES = ("cpu", "cuda", "gpu", "npu")


def _declared() -> list:
    return [pytest.param(EagerTorch, id="torch (built in)")] + [
        pytest.param(e.obj, id=e.name) for e in registry.exporters.entries() if e.obj is not None]


def _one_line(text) -> bool:
    return isinstance(text, str) and text.strip() != "" and "\n" not in text


# --------------------------------------------------------------------------------------------
# (a) every declaration is well formed


@pytest.mark.parametrize("decl", _declared())
def test_declaration_is_well_formed(decl):
    assert isinstance(decl, type) and issubclass(decl, RuntimeDeclaration)
    assert isinstance(decl.runtimes, dict)
    for runtime, devices in decl.runtimes.items():
        assert isinstance(runtime, str) and runtime == runtime.strip().lower() and runtime
        assert ":" not in runtime
        assert isinstance(devices, tuple) and devices, f"{runtime}: devices must be a tuple"
        assert len(set(devices)) == len(devices), f"{runtime}: a device declared twice"
        for device in devices:
            assert isinstance(device, str) and device == device.strip().lower() and device
            assert ":" not in device
    assert set(decl.precisions) <= set(decl.runtimes), "precisions of an undeclared runtime"
    for runtime in decl.runtimes:
        supported = decl.supported_precisions(runtime)
        assert isinstance(supported, tuple) and supported
        assert set(supported) <= set(PRECISIONS), f"{runtime}: {supported} not in {PRECISIONS}"
        assert len(set(supported)) == len(supported)
    for key, why in decl.why_not.items():
        assert isinstance(key, tuple) and len(key) == 2
        runtime, precision = key
        assert runtime in decl.runtimes, f"why_not for undeclared runtime {runtime!r}"
        assert precision in PRECISIONS and precision not in decl.supported_precisions(runtime), (
            f"why_not says {runtime} refuses {precision}, which it declares it runs")
        assert _one_line(why)
    for runtime, devices in decl.runtimes.items():
        for device in devices:
            for precision in decl.supported_precisions(runtime):
                multiple = decl.channel_multiple(Target(runtime, device, precision))
                assert isinstance(multiple, int) and multiple >= 1
    for reason in (decl.unavailable_reason(), decl.not_runnable_reason()):
        assert reason is None or _one_line(reason)
    if issubclass(decl, Exporter):
        if decl.runtimes:
            assert decl.runtime in decl.runtimes, "runtime must be one of the declared runtimes"
        else:
            assert decl.runtime is None, "an exporter that declares no runtime serves none"


def test_the_registered_exporters_and_torch_declare_each_runtime_once():
    seen: dict[str, str] = {}
    for decl in declarations():
        for runtime in decl.runtimes:
            assert runtime not in seen, f"{runtime} declared by {seen.get(runtime)} and {decl.name}"
            seen[runtime] = decl.name


# --------------------------------------------------------------------------------------------
# (b) Target.parse accepts exactly the declared combinations


def _combinations():
    for runtime, devices in runtimes().items():
        for device in dict.fromkeys(devices + OTHER_DEVICES):
            for precision in PRECISIONS:
                yield pytest.param(runtime, device, precision, id=f"{runtime}:{device}:{precision}")


@pytest.mark.parametrize("runtime,device,precision", _combinations())
def test_parse_accepts_exactly_what_is_declared(runtime, device, precision):
    decl = declaration(runtime)
    text = f"{runtime}:{device}:{precision}"
    if device not in decl.runtimes[runtime]:
        with pytest.raises(UsageError) as err:
            Target.parse(text)
        assert str(err.value) == (f"runtime {runtime} has no device {device!r}; choose one of "
                                  f"{', '.join(decl.runtimes[runtime])}")
    elif precision not in decl.supported_precisions(runtime):
        with pytest.raises(UsageError) as err:
            Target.parse(text)
        assert str(err.value) == (f"target {text} is not supported: "
                                  f"{decl.refusal(runtime, precision)}")
        if (runtime, precision) in decl.why_not:
            assert decl.why_not[(runtime, precision)] in str(err.value)
    else:
        t = Target.parse(text, batch=2, threads=3)
        assert (t.runtime, t.device, t.precision, t.batch, t.threads) == (
            runtime, device, precision, 2, 3)
        assert str(t) == text


@pytest.mark.parametrize("runtime", list(runtimes()))
def test_parse_defaults_to_the_first_declared_device_and_fp32(runtime):
    decl = declaration(runtime)
    if "fp32" not in decl.supported_precisions(runtime):
        pytest.skip(f"{runtime} does not run fp32, the default precision")
    t = Target.parse(runtime)
    assert (t.device, t.precision) == (decl.runtimes[runtime][0], "fp32")
    assert Target.parse(f"{runtime}:{decl.runtimes[runtime][-1]}").precision == "fp32"


def test_an_undeclared_runtime_or_precision_is_refused_naming_what_is_declared():
    with pytest.raises(UsageError) as err:
        Target.parse("coreml:cpu")
    assert str(err.value) == (f"unknown runtime 'coreml' in target 'coreml:cpu'; choose one of "
                              f"{', '.join(runtimes())}")
    with pytest.raises(UsageError) as err:
        Target.parse("openvino:cpu:int4")
    assert str(err.value) == "unknown precision 'int4'; choose one of fp32, fp16, int8"
    with pytest.raises(UsageError, match="unknown runtime 'coreml'"):
        supported_precisions("coreml")


def test_the_built_in_declarations_give_the_targets_core_used_to_list():
    declared = runtimes()
    for runtime, devices in BUILT_IN_DEVICES.items():
        assert declared[runtime] == devices
        assert supported_precisions(runtime) == BUILT_IN_PRECISIONS[runtime]
        for precision in PRECISIONS:
            if precision in BUILT_IN_PRECISIONS[runtime]:
                continue
            listed = ", ".join(BUILT_IN_PRECISIONS[runtime])
            why = BUILT_IN_WHY_NOT.get((runtime, precision), f"{runtime} supports {listed}")
            assert declaration(runtime).refusal(runtime, precision) == why
    # built-in runtimes first, in the order the unknown-runtime message has always listed them
    assert [r for r in declared if r in BUILT_IN_DEVICES] == list(BUILT_IN_DEVICES)
    assert declaration("torch") is EagerTorch
    assert exporter_for_runtime("torch") is None
    assert {r: exporter_for_runtime(r) for r in ("onnxruntime", "openvino", "tensorrt")} == {
        "onnxruntime": "onnx", "openvino": "openvino", "tensorrt": "tensorrt"}


def test_channel_multiple_is_the_runtimes_own():
    """onnxruntime's NCHWc block (16 with AVX-512, else 8); every other built-in runtime runs
    any channel count as well."""
    try:
        avx512 = " avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        avx512 = False
    for text in ("onnxruntime:cpu", "onnxruntime:cpu:int8"):
        assert channel_multiple(Target.parse(text)) == (16 if avx512 else 8)
    for text in ("torch:cpu", "torch:cuda", "openvino:cpu", "openvino:cpu:int8", "tensorrt:cuda"):
        assert channel_multiple(Target.parse(text)) == 1
    assert channel_multiple(Target("not-a-runtime")) == 1


# --------------------------------------------------------------------------------------------
# (c) a runtime from an installed distribution parses with no change to core

PLUGIN_PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "nas2deploy-dummy-runtime"
version = "0.1.0"

[project.entry-points."nas2deploy.exporters"]
dummyrt = "n2d_dummy_runtime:DummyExporter"

[tool.setuptools]
packages = ["n2d_dummy_runtime"]
"""

PLUGIN_MODULE = '''\
"""A third-party exporter that declares a runtime core has never heard of."""

from nas2deploy.errors import ExportError, UnavailableError
from nas2deploy.exporter import Exporter


class DummyExporter(Exporter):
    name = "dummyrt"
    runtimes = {"dummyrt": ("npu", "cpu")}
    precisions = {"dummyrt": ("fp32", "fp16")}
    why_not = {("dummyrt", "int8"): "the dummy NPU has no int8 kernels"}
    description = "declares a runtime and exports nothing (tests/test_runtimes.py)"

    @classmethod
    def channel_multiple(cls, target):
        return 4 if target.device == "npu" else 1

    def export(self, model, ctx):
        raise ExportError("dummyrt only declares a runtime")

    def runner(self, bundle_dir, artifact, target):
        raise UnavailableError("dummyrt only declares a runtime")
'''


@pytest.fixture(scope="module")
def dummy_runtime(tmp_path_factory):
    """A distribution declaring the ``dummyrt`` runtime, really pip-installed into a private
    folder and found through its entry point; uninstalled (off sys.path) afterwards."""
    src = tmp_path_factory.mktemp("dummy-runtime-src")
    (src / "pyproject.toml").write_text(PLUGIN_PYPROJECT)
    (src / "n2d_dummy_runtime").mkdir()
    (src / "n2d_dummy_runtime" / "__init__.py").write_text(textwrap.dedent(PLUGIN_MODULE))
    site = tmp_path_factory.mktemp("dummy-runtime-site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(site), str(src)],
                   check=True, capture_output=True)
    sys.path.insert(0, str(site))
    registry.exporters.refresh()
    try:
        yield site
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("n2d_dummy_runtime", None)
        registry.exporters.refresh()


def test_a_runtime_declared_by_an_installed_exporter_parses(dummy_runtime):
    assert "dummyrt" in registry.exporters.names()
    assert runtimes()["dummyrt"] == ("npu", "cpu")
    t = Target.parse("dummyrt")
    assert (t.runtime, t.device, t.precision) == ("dummyrt", "npu", "fp32")
    assert Target.parse("dummyrt:cpu:fp16", batch=4) == Target("dummyrt", "cpu", "fp16", 4, 1)
    with pytest.raises(UsageError) as err:
        Target.parse("dummyrt:npu:int8")
    assert str(err.value) == ("target dummyrt:npu:int8 is not supported: the dummy NPU has no "
                              "int8 kernels")
    with pytest.raises(UsageError, match="runtime dummyrt has no device 'cuda'; choose one of "
                                         "npu, cpu"):
        Target.parse("dummyrt:cuda")
    assert channel_multiple(Target.parse("dummyrt:npu")) == 4
    assert channel_multiple(Target.parse("dummyrt:cpu")) == 1
    assert exporter_for_runtime("dummyrt") == "dummyrt"
    assert resolve_chain(["dummyrt"]) == ["dummyrt"]
    # the built-in runtimes are untouched by the newcomer
    for runtime, devices in BUILT_IN_DEVICES.items():
        assert runtimes()[runtime] == devices


def test_an_uninstalled_runtime_no_longer_parses(dummy_runtime):
    assert Target.parse("dummyrt:npu").runtime == "dummyrt"
    sys.path.remove(str(dummy_runtime))
    registry.exporters.refresh()
    try:
        with pytest.raises(UsageError, match="unknown runtime 'dummyrt'"):
            Target.parse("dummyrt:npu")
    finally:
        sys.path.insert(0, str(dummy_runtime))
        registry.exporters.refresh()
