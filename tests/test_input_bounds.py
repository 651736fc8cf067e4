"""Hostile numbers: crafted network specs, run options and method options are refused with one
line (exit 2) before anything is allocated or run."""

from __future__ import annotations

import copy
import json
import math
import struct

import pytest
import torch
from torch import nn

from nas2deploy import netspec
from nas2deploy.architecture import Architecture
from nas2deploy.config import RunConfig
from nas2deploy.errors import BundleError, UsageError
from nas2deploy.netspec import GraphNet, SpecError, validate_spec

# ---------------------------------------------------------------------------------------------
# A. network specs


def _spec(*nodes, channels=3, size=(16, 16), num_classes=10, output="head"):
    return {"input": {"channels": channels, "size": list(size)}, "num_classes": num_classes,
            "nodes": list(nodes), "output": output}


def _good():
    """One node of every op kind, wired consistently."""
    return _spec(
        {"id": "stem", "op": "conv", "inputs": ["input"], "c_in": 3, "c_out": 8, "k": 3,
         "stride": 2, "act": "relu"},
        {"id": "g", "op": "conv", "inputs": ["stem"], "c_in": 8, "c_out": 8, "k": 1,
         "groups": 4, "bn": False, "act": "none"},
        {"id": "sep", "op": "sep", "inputs": ["g"], "c_in": 8, "c_out": 12, "k": 5, "act": "relu6"},
        {"id": "pool", "op": "pool", "inputs": ["sep"], "c": 12, "kind": "avg", "k": 3},
        {"id": "mb", "op": "mbconv", "inputs": ["pool"], "c_in": 12, "c_out": 12, "mid": 36,
         "k": 3, "se": 6, "act": "hswish"},
        {"id": "mbn", "op": "mbconv", "inputs": ["mb"], "c_in": 12, "c_out": 16, "mid": 12,
         "k": 5, "stride": 2, "expand": False},
        {"id": "skip", "op": "identity", "inputs": ["mbn"]},
        {"id": "add", "op": "sum", "inputs": ["mbn", "skip"], "coeffs": [0.5, 1.5]},
        {"id": "post", "op": "bn_act", "inputs": ["add"], "c": 16},
        {"id": "head", "op": "head", "inputs": ["post"], "c_in": 16, "num_classes": 10,
         "dropout": 0.1},
    )


def _with(path, value):
    """The good spec with one value replaced; ``path`` is (node id, key) or a top-level key."""
    spec = _good()
    if isinstance(path, tuple):
        node = next(n for n in spec["nodes"] if n["id"] == path[0])
        node[path[1]] = value
    else:
        spec[path] = value
    return spec


def test_good_spec_is_valid_and_runs():
    spec = _good()
    validate_spec(spec)
    net = GraphNet(spec)
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 10)


CRAFTED = [
    (("stem", "c_out"), 10 ** 9, "c_out"),
    (("stem", "c_out"), -5, "c_out"),
    (("stem", "c_out"), 0, "c_out"),
    (("stem", "c_out"), True, "c_out"),
    (("stem", "c_out"), 8.0, "c_out"),
    (("stem", "c_out"), "8", "c_out"),
    (("stem", "k"), 4, "k"),
    (("stem", "k"), 17, "k"),
    (("stem", "k"), -1, "k"),
    (("stem", "stride"), 0, "stride"),
    (("stem", "stride"), 5, "stride"),
    (("stem", "groups"), 0, "groups"),
    (("stem", "groups"), 2, "groups"),  # 3 input channels cannot split into 2 groups
    (("stem", "bn"), 1, "bn"),
    (("stem", "act"), "gelu", "act"),
    (("stem", "act"), ["relu"], "act"),
    (("pool", "kind"), "median", "kind"),
    (("mb", "mid"), 10 ** 7, "mid"),
    (("mb", "se"), -1, "se"),
    (("mb", "se"), 10 ** 6, "se"),
    (("mbn", "mid"), 13, "mid"),  # no expansion: mid must equal c_in
    (("mb", "expand"), "yes", "expand"),
    (("head", "num_classes"), 10 ** 9, "num_classes"),
    (("head", "num_classes"), 0, "num_classes"),
    (("head", "dropout"), float("nan"), "dropout"),
    (("head", "dropout"), 1.0, "dropout"),
    (("add", "coeffs"), [1.0, float("inf")], "coeffs"),
    (("add", "coeffs"), [1.0], "coeffs"),
    (("stem", "surprise"), 1, "surprise"),
    (("stem", "op"), ["conv"], "op"),
    (("stem", "inputs"), [["input"]], "input"),
    (("sep", "c_in"), 9, "c_in"),  # reads 8 channels
    (("sep", "inputs"), ["g", "stem"], "input"),  # a conv takes one input
    (("add", "inputs"), ["mbn", "pool"], "sum"),  # shapes differ
    (("post", "inputs"), ["head"], "head"),  # nothing may read the classifier's output
    ("num_classes", -1, "num_classes"),
    ("num_classes", 10 ** 12, "num_classes"),
    ("input", {"channels": 10 ** 8, "size": [16, 16]}, "input"),
    ("input", {"channels": -3, "size": [16, 16]}, "input"),
    ("input", {"channels": 3, "size": [10 ** 6, 16]}, "input"),
    ("input", {"channels": 3, "size": [0, 16]}, "input"),
    ("input", {"channels": 3, "size": [16.0, 16]}, "input"),
    ("output", ["head"], "output"),
    ("nodes", {"id": "x"}, "nodes"),
]


@pytest.mark.parametrize("path,value,needle", CRAFTED,
                         ids=[f"{p}={v!r:.20}" for p, v, _ in CRAFTED])
def test_crafted_spec_values_are_refused(path, value, needle):
    spec = _with(path, value)
    with pytest.raises(SpecError, match=needle) as exc:
        validate_spec(spec)
    assert "\n" not in str(exc.value)
    assert exc.value.exit_code == 2


class _NoAllocation(Exception):
    pass


@pytest.fixture
def no_allocation(monkeypatch):
    """Any parameter-holding torch module built from here on is a test failure."""
    def refuse(self, *args, **kwargs):
        raise _NoAllocation(type(self).__name__)

    for cls in (nn.Conv2d, nn.BatchNorm2d, nn.Linear):
        monkeypatch.setattr(cls, "__init__", refuse)


@pytest.mark.parametrize("path,value", [(("stem", "c_out"), -5), (("stem", "c_out"), 10 ** 6),
                                         (("mb", "mid"), 10 ** 7), (("head", "num_classes"), -1)])
def test_crafted_spec_is_refused_before_any_module_is_built(no_allocation, path, value):
    with pytest.raises(SpecError):
        GraphNet(_with(path, value))
    d = Architecture("m", _good()).to_dict()
    node = next(n for n in d["network"]["nodes"] if n["id"] == path[0])
    node[path[1]] = value
    with pytest.raises(BundleError):
        Architecture.from_dict(d)


def test_too_many_nodes():
    nodes = [{"id": "stem", "op": "conv", "inputs": ["input"], "c_in": 3, "c_out": 4, "k": 1}]
    nodes += [{"id": f"i{j}", "op": "identity", "inputs": ["stem" if j == 0 else f"i{j - 1}"]}
              for j in range(netspec.MAX_NODES)]
    with pytest.raises(SpecError, match="nodes"):
        validate_spec(_spec(*nodes, output=nodes[-1]["id"]))


def _wide(n_layers, c=16384, k=15):
    """Every value in range, the whole far too large: ``n_layers`` c→c convs of k×k."""
    nodes = [{"id": "stem", "op": "conv", "inputs": ["input"], "c_in": 3, "c_out": c, "k": 1}]
    for j in range(n_layers):
        nodes.append({"id": f"l{j}", "op": "conv", "inputs": [nodes[-1]["id"]], "c_in": c,
                      "c_out": c, "k": k})
    nodes.append({"id": "head", "op": "head", "inputs": [nodes[-1]["id"]], "c_in": c,
                  "num_classes": 10})
    return _spec(*nodes, size=(8, 8))


def test_total_parameter_count_is_capped(no_allocation):
    spec = _wide(4)
    assert netspec.estimate_params(spec) > netspec.MAX_PARAMS
    with pytest.raises(SpecError, match="parameters"):
        validate_spec(spec)
    with pytest.raises(SpecError, match="parameters"):
        GraphNet(spec)


def test_activation_size_is_capped():
    spec = _spec({"id": "stem", "op": "conv", "inputs": ["input"], "c_in": 3, "c_out": 16384,
                  "k": 1},
                 {"id": "head", "op": "head", "inputs": ["stem"], "c_in": 16384,
                  "num_classes": 10}, size=(4096, 4096))
    with pytest.raises(SpecError, match="activation"):
        validate_spec(spec)


def _specs_of_every_shape():
    yield _good()
    yield _spec({"id": "stem", "op": "conv", "inputs": ["input"], "c_in": 1, "c_out": 6,
                 "k": 7, "stride": 3, "bn": False},
                {"id": "p", "op": "pool", "inputs": ["stem"], "c": 6, "kind": "max", "k": 5,
                 "stride": 4, "act": "none"},
                {"id": "mb", "op": "mbconv", "inputs": ["p"], "c_in": 6, "c_out": 5, "mid": 7,
                 "k": 15, "se": 0},
                {"id": "head", "op": "head", "inputs": ["mb"], "c_in": 5, "num_classes": 3},
                channels=1, size=(31, 17), num_classes=3)
    for sig in netspec.signatures(_good()).values():
        yield netspec.single_op_spec(sig)


def test_parameter_estimate_is_exact():
    for spec in _specs_of_every_shape():
        net = GraphNet(spec)
        assert netspec.estimate_params(spec) == sum(p.numel() for p in net.parameters())
        assert netspec.estimate_state_numel(spec) == sum(
            t.numel() for t in net.state_dict().values())


def test_signatures_of_a_crafted_spec_fail_cleanly():
    with pytest.raises(SpecError):
        netspec.signatures(_with(("stem", "c_out"), -5))


# --- weights file against the spec, from the safetensors header alone -------------------------


def _save(net, path):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))


def test_safetensors_header_matches_spec(tmp_path):
    spec = _good()
    _save(GraphNet(spec), tmp_path / "w.safetensors")
    assert netspec.check_against_safetensors(spec, tmp_path / "w.safetensors") == \
        netspec.estimate_state_numel(spec)


def test_safetensors_of_another_net_is_refused(tmp_path):
    small = _good()
    _save(GraphNet(small), tmp_path / "w.safetensors")
    big = _with(("head", "num_classes"), 1000)
    with pytest.raises(SpecError, match="elements"):
        netspec.check_against_safetensors(big, tmp_path / "w.safetensors")


def _header_file(path, header: bytes, body: bytes = b"", length: int | None = None):
    path.write_bytes(struct.pack("<Q", len(header) if length is None else length) + header + body)
    return path


@pytest.mark.parametrize("case", ["huge-length", "truncated", "not-json", "bad-shape",
                                  "negative-dim", "offsets-past-end", "short", "missing"])
def test_safetensors_header_hostile(tmp_path, case):
    spec = _good()
    p = tmp_path / "w.safetensors"
    if case == "huge-length":
        _header_file(p, b"{}", length=2 ** 62)
    elif case == "truncated":
        _header_file(p, b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}', length=500)
    elif case == "not-json":
        _header_file(p, b"\xff\xfe not json")
    elif case == "bad-shape":
        _header_file(p, json.dumps({"a": {"dtype": "F32", "shape": "12",
                                          "data_offsets": [0, 48]}}).encode(), b"\0" * 48)
    elif case == "negative-dim":
        _header_file(p, json.dumps({"a": {"dtype": "F32", "shape": [-2, 3],
                                          "data_offsets": [0, 0]}}).encode())
    elif case == "offsets-past-end":
        _header_file(p, json.dumps({"a": {"dtype": "F32", "shape": [1000],
                                          "data_offsets": [0, 4000]}}).encode(), b"\0" * 8)
    elif case == "short":
        p.write_bytes(b"\x01\x02")
    with pytest.raises(SpecError) as exc:
        netspec.check_against_safetensors(spec, p)
    assert "\n" not in str(exc.value)


def test_architecture_envelope_values_are_checked(tmp_path):
    d = Architecture("m", _good()).to_dict()
    for key, value in (("width_multiplier", "wide"), ("width_multiplier", float("inf")),
                       ("seed", -1), ("seed", "x"), ("method", 3), ("metadata", [])):
        bad = {**copy.deepcopy(d), key: value}
        with pytest.raises(BundleError, match=key):
            Architecture.from_dict(bad)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(BundleError):
        Architecture.load(deep)
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"format": "\xff"}')
    with pytest.raises(BundleError):
        Architecture.load(latin)


# ---------------------------------------------------------------------------------------------
# B. run options


BAD_OPTIONS = [
    ({"seed": -1}, "seed"),
    ({"seed": 2 ** 32}, "seed"),
    ({"latency_ms": math.inf}, "latency-ms"),
    ({"latency_ms": math.nan}, "latency-ms"),
    ({"latency_fraction": math.nan}, "latency-fraction"),
    ({"min_width": math.inf}, "min-width"),
    ({"min_agreement": math.nan}, "min-agreement"),
    ({"max_accuracy_drop": math.inf}, "max-accuracy-drop"),
    ({"max_accuracy_drop": math.nan}, "max-accuracy-drop"),
    ({"threads": 100_000}, "threads"),
    ({"threads": 0}, "threads"),
    ({"batch": 10 ** 9}, "batch"),
    ({"max_rounds": 10 ** 6}, "max-rounds"),
    ({"calibration_samples": 10 ** 9}, "calibration-samples"),
    ({"retrain_epochs": 10 ** 7}, "retrain-epochs"),
    ({"search_epochs": 10 ** 7}, "search-epochs"),
    ({"parity_samples": 0}, "parity-samples"),
    ({"parity_samples": 10 ** 9}, "parity-samples"),
    ({"export": ["onnx", 3]}, "export"),
    ({"threads": "2"}, "threads"),
    ({"seed": 1.5}, "seed"),
    ({"latency_ms": True}, "latency-ms"),
]


@pytest.mark.parametrize("values,needle", BAD_OPTIONS, ids=[str(v) for v, _ in BAD_OPTIONS])
def test_run_options_bounded(values, needle):
    with pytest.raises(UsageError, match=needle) as exc:
        RunConfig(**values).validate()
    assert "\n" not in str(exc.value)


def test_run_option_limits_accept_the_edges():
    RunConfig(seed=2 ** 32 - 1, threads=256, max_rounds=100, latency_ms=1e6).validate()
    RunConfig(seed=0, threads=1, batch=1, latency_ms=0.001).validate()


# ---------------------------------------------------------------------------------------------
# B. method options: non-finite numbers, negative counts and absurd sizes


def _method_configs():
    from plugins.densenas.config import DenseNASConfig
    from plugins.dsonas.config import DSONASConfig
    from plugins.tfnas.config import TFNASConfig

    return {"tfnas": TFNASConfig, "dsonas": DSONASConfig, "densenas": DenseNASConfig}


BAD_METHOD_OPTIONS = [
    ("tfnas", {"stem_channels": 10 ** 9}, "stem_channels"),
    ("tfnas", {"tail_channels": 10 ** 6}, "tail_channels"),
    ("tfnas", {"stem_se": 10 ** 6}, "stem_se"),
    ("tfnas", {"stages": [[1, 10 ** 6, 1, "relu"]]}, "channels"),
    ("tfnas", {"stages": [[16, 16384, 1, "relu"]] * 8}, "parameters"),
    ("tfnas", {"stages": [[1, 8, 1, "relu"]] * 1000}, "stages"),
    ("tfnas", {"landing_rounds": 10 ** 6}, "landing_rounds"),
    ("tfnas", {"w_steps_per_arch_step": 10 ** 9}, "w_steps_per_arch_step"),
    ("tfnas", {"lam": math.inf}, "lam"),
    ("tfnas", {"landing_rounds": -1}, "landing_rounds"),
    ("dsonas", {"base_width": 10 ** 6}, "base_width"),
    ("dsonas", {"levels": 10 ** 4}, "levels"),
    ("dsonas", {"stages": 40}, "stages"),
    ("dsonas", {"blocks_per_stage": 10 ** 5}, "blocks_per_stage"),
    ("dsonas", {"base_width": 2048, "stages": 4, "blocks_per_stage": 8, "levels": 8,
                "ops": ["conv3", "sep7", "sep5", "sep3"]}, "parameters"),
    ("dsonas", {"prune_every": 10 ** 9}, "prune_every"),
    ("dsonas", {"gamma": math.nan}, "gamma"),
    ("dsonas", {"levels": -1}, "levels"),
    ("densenas", {"widths": [10 ** 6] * 7}, "widths"),
    ("densenas", {"stem_channels": 10 ** 7}, "stem_channels"),
    ("densenas", {"final_channels": 10 ** 7}, "final_channels"),
    ("densenas", {"max_successors": 10 ** 4}, "max_successors"),
    ("densenas", {"kernels": [3, 10 ** 5 + 1]}, "kernels"),
    ("densenas", {"expansions": [3, 10 ** 4]}, "expansions"),
    ("densenas", {"layers": 10 ** 5}, "layers"),
    ("densenas", {"widths": [8192] * 7}, "parameters"),
    ("densenas", {"top_k": 10 ** 9}, "top_k"),
    ("densenas", {"latency_tau": math.inf}, "latency_tau"),
    ("densenas", {"top_k": -3}, "top_k"),
]


@pytest.mark.parametrize("method,options,needle", BAD_METHOD_OPTIONS,
                         ids=[f"{m}-{o!s:.40}" for m, o, _ in BAD_METHOD_OPTIONS])
def test_method_options_bounded(method, options, needle):
    cls = _method_configs()[method]
    with pytest.raises(UsageError, match=needle) as exc:
        cls.from_dict(options)
    assert "\n" not in str(exc.value)


def test_method_presets_and_defaults_still_valid():
    configs = _method_configs()
    configs["tfnas"].from_dict({})
    configs["tfnas"].from_dict({"preset": "imagenet"})
    configs["dsonas"].from_dict({})
    configs["dsonas"].from_dict({"levels": 4, "blocks_per_stage": 8, "base_width": 48,
                                 "stem_stride": 1})  # the paper's CIFAR space
    configs["densenas"].from_dict({})
    configs["densenas"].from_dict({"space": "imagenet"})


# ---------------------------------------------------------------------------------------------
# the same bounds on every way in: `lut build`, a bundle's manifest, a third-party plugin


@pytest.mark.parametrize("args", [["--threads", "100000"], ["--threads", "0"],
                                  ["--batch", "100000"]])
def test_lut_build_threads_and_batch_bounded(args, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).with_name("nas2deploy")
    res = subprocess.run([str(exe), "lut", "build", "--target", "onnxruntime:cpu", "--out",
                          str(tmp_path / "t.json"), "--quiet", *args],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "must be in 1.." in lines[0], res.stderr
    assert not (tmp_path / "t.json").exists()


@pytest.mark.parametrize("field,value", [("threads", 100000), ("batch", 10 ** 9), ("threads", 0)])
def test_target_bounds_hold_for_values_read_from_disk(field, value):
    from nas2deploy.target import Target

    with pytest.raises(UsageError, match=f"{field} must be in 1.."):
        Target.parse("onnxruntime:cpu", **{field: value})


@pytest.mark.parametrize("options,needle", [({"samples": "x"}, "samples"), ({"width": 10 ** 7}, "width"),
                                            ({"layers": True}, "layers"), ({"ops": []}, "ops")])
def test_example_plugin_options_bounded(random_plugin, options, needle):
    from nas2deploy_random import RandomSearch

    with pytest.raises(UsageError, match=needle):
        RandomSearch(options)
