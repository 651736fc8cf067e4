"""The command line: success path, bundle contents, measure, and every bad input of the spec."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from nas2deploy import load_bundle
from nas2deploy.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def assert_clean_error(res, code=2, needle=None):
    assert res.exit_code == code, res.output
    err = res.stderr if hasattr(res, "stderr") else res.output
    assert "Traceback" not in res.output
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith(("error:", "Error:", "Usage:")), err
    if needle:
        assert needle in err, err


def no_leftovers(parent: Path, name: str):
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")] == []


def earlier_bundle(folder: Path) -> None:
    """An earlier run's manifest: --overwrite replaces only nas2deploy bundles (issue 12)."""
    (folder / "manifest.json").write_text(json.dumps(
        {"format": "nas2deploy.bundle", "format_version": 1, "files": {}, "target": {},
         "latency": {}}))


@pytest.fixture(scope="module")
def bundle(random_plugin, tmp_path_factory):
    """One real run of the whole pipeline (tiny config), shared by the bundle tests."""
    out = tmp_path_factory.mktemp("run") / "bundle"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier run")
    earlier_bundle(out)
    cfg = out.parent / "tiny.toml"
    cfg.write_text('method = "example-random"\ninput-size = 16\nsearch-epochs = 1\nretrain-epochs = 4\n'
                   'target = "onnxruntime:cpu"\nexport = "onnx,openvino"\n'
                   '[method-options]\nsamples = 2\nlayers = 2\nwidth = 8\n')
    res = run_cli("search-and-export", "--config", str(cfg), "--out", str(out), "--quiet",
                  "--latency-fraction", "0.9", "--overwrite", "--json")
    assert res.exit_code in (0, 3), res.output
    assert json.loads(res.stdout)["method"]["name"] == "example-random"  # --json: the manifest on stdout
    return out


def test_bundle_layout_and_manifest(bundle):
    m = json.loads((bundle / "manifest.json").read_text())
    for key in ("format", "nas2deploy_version", "method", "dataset", "target", "latency", "parity",
                "accuracy", "model", "files", "environment"):
        assert key in m
    assert set(m["target"]) >= {"runtime", "device", "precision", "batch", "threads"}
    lat = m["latency"]
    assert set(lat) >= {"budget_ms", "predicted_ms", "measured", "within_budget", "rounds"}
    assert set(lat["measured"]) >= {"p50_ms", "p90_ms", "runs", "protocol"}
    assert lat["measured"]["p50_ms"] <= lat["measured"]["p90_ms"]
    assert lat["within_budget"] == (lat["measured"]["p50_ms"] <= lat["budget_ms"])
    assert lat["rounds"] and lat["rounds"][-1]["measured_p50_ms"] == lat["measured"]["p50_ms"]
    assert set(m["parity"]) == {"onnx", "openvino"}
    assert all(p["max_abs_diff"] <= 1e-4 for p in m["parity"].values())
    assert m["accuracy"]["split"] == "test" and 0 <= m["accuracy"]["top1"] <= 1
    assert m["model"]["params"] > 0 and m["model"]["macs"] > 0
    assert not (bundle / "stale.txt").exists()  # --overwrite replaced the old folder whole
    for rel in m["files"].values():
        assert (bundle / rel).is_file(), rel
    for name in ("architecture.json", "model.safetensors", "model.onnx", "openvino/model.xml",
                 "openvino/model.bin", "report.md", "architecture.png", "curves.png"):
        assert (bundle / name).is_file(), name
    assert m["environment"]["torch"] and m["environment"]["onnxruntime"]
    report = (bundle / "report.md").read_text()
    assert "architecture.png" in report and "curves.png" in report
    assert no_leftovers(bundle.parent, bundle.name)


def test_load_bundle_rebuilds_the_exported_function(bundle):
    import onnx
    import onnxruntime as ort

    net = load_bundle(bundle)
    assert type(net).__module__ == "nas2deploy.netspec"  # no method classes survive
    x = torch.randn(3, 1, 16, 16)
    sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]  # dynamic batch of 3
    with torch.no_grad():
        np.testing.assert_allclose(got, net(x).numpy(), atol=1e-4)
    meta = {p.key: p.value for p in onnx.load(str(bundle / "model.onnx")).metadata_props}
    assert json.loads(meta["architecture"])["network"] == json.loads(
        (bundle / "architecture.json").read_text())["network"]


def test_measure_appends_and_exits_by_budget(bundle):
    res = run_cli("measure", str(bundle), "--json")
    rec = json.loads(res.stdout)
    assert res.exit_code == (0 if rec["within_budget"] else 3)
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["measurements"][-1]["p50_ms"] == rec["p50_ms"]
    res = run_cli("measure", str(bundle), "--target", "openvino:cpu", "--no-record")
    assert res.exit_code in (0, 3) and "openvino:cpu" in res.output
    res = run_cli("measure", str(bundle), "--target", "torch:cpu", "--no-record")
    assert res.exit_code in (0, 3), res.output


def test_existing_bundle_needs_overwrite(bundle):
    before = (bundle / "manifest.json").read_bytes()
    res = run_cli("search-and-export", "--out", str(bundle))
    assert_clean_error(res, 2, "--overwrite")
    assert (bundle / "manifest.json").read_bytes() == before


def test_overwrite_failure_keeps_the_old_bundle(random_plugin, tiny_random_config, tmp_path,
                                                monkeypatch):
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("old bundle")
    earlier_bundle(out)
    from nas2deploy import pipeline
    from nas2deploy.errors import ParityError

    def broken(*a, **k):
        raise ParityError("max |diff| 1.0e+00 > atol 1e-04")

    monkeypatch.setattr(pipeline, "_verify", broken)
    res = run_cli("search-and-export", "--config", str(tiny_random_config), "--out", str(out),
                  "--overwrite", "--quiet", "--max-rounds", "1")
    assert_clean_error(res, 1, "atol")
    assert (out / "keep.txt").read_text() == "old bundle"
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "manifest.json"]
    assert no_leftovers(tmp_path, "b")


# --- bad input: one clear line, exit 2, nothing written -----------------------------------------

BAD = [
    (["--method", "nope"], "unknown method 'nope'"),
    (["--export", "onnx,zip"], "unknown exporter 'zip'"),
    (["--target", "coreml:cpu"], "unknown runtime"),
    (["--target", "openvino:cpu:fp32:x"], "malformed target"),
    (["--target", "openvino:gpu"], "has no device"),
    (["--latency-ms", "0"], "must be > 0"),
    (["--latency-ms", "-3"], "must be > 0"),
    (["--latency-fraction", "1.5"], "latency-fraction"),
    (["--dataset", "cifar10:/nonexistent/dir"], "does not exist"),
    (["--dataset", "mnist"], "unknown dataset"),
    (["--search-epochs", "0"], "search-epochs"),
    (["--input-size", "4"], "input-size"),
]


@pytest.mark.parametrize("args,needle", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input(args, needle, tmp_path):
    out = tmp_path / "out"
    res = run_cli("search-and-export", "--out", str(out), *args)
    assert_clean_error(res, 2, needle)
    assert not out.exists() and no_leftovers(tmp_path, "out")


def test_malformed_dataset_dir(tmp_path):
    d = tmp_path / "cifar"
    d.mkdir()
    (d / "data_batch_1").write_bytes(b"not a pickle at all")
    res = run_cli("search-and-export", "--dataset", f"cifar10:{d}", "--out", str(tmp_path / "o"))
    assert_clean_error(res, 2)
    assert not (tmp_path / "o").exists()


def test_out_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    assert_clean_error(run_cli("search-and-export", "--out", str(f)), 2, "is a file")
    assert f.read_text() == "x"


def test_config_errors(tmp_path):
    missing = tmp_path / "none.toml"
    # click itself refuses a path that is a directory; a missing file is ours to report
    assert_clean_error(run_cli("search-and-export", "--config", str(missing)), 2, "cannot read")
    bad = tmp_path / "bad.toml"
    bad.write_text("method = [unclosed")
    assert_clean_error(run_cli("search-and-export", "--config", str(bad)), 2, "not valid TOML")
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("colour = 'blue'\n")
    assert_clean_error(run_cli("search-and-export", "--config", str(unknown)), 2, "unknown key")
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("threads = 'two'\n")
    assert_clean_error(run_cli("search-and-export", "--config", str(wrong)), 2, "wrong type")
    badopt = tmp_path / "badopt.toml"
    badopt.write_text("[method-options]\nno_such_option = 1\n")
    assert_clean_error(run_cli("search-and-export", "--config", str(badopt),
                               "--out", str(tmp_path / "o")), 2, "no_such_option")


def test_cli_wins_over_config(random_plugin, tmp_path, monkeypatch):
    from nas2deploy import pipeline

    seen = {}

    def fake(cfg, **kw):
        seen["cfg"] = cfg
        raise pipeline.UsageError("stop here")

    monkeypatch.setattr(pipeline, "search_and_export", fake)
    cfg = tmp_path / "c.toml"
    cfg.write_text("threads = 2\nseed = 5\nexport = 'onnx'\n")
    run_cli("search-and-export", "--config", str(cfg), "--threads", "3")
    assert seen["cfg"].threads == 3 and seen["cfg"].seed == 5 and seen["cfg"].export == ["onnx"]


def test_space_flag_sets_the_method_option(tmp_path, monkeypatch):
    """``--space`` is the method's ``space`` option and wins over the config file's
    [method-options]; an unknown space is one clear line."""
    from nas2deploy import pipeline

    seen = {}

    def fake(cfg, **kw):
        seen["cfg"] = cfg
        raise pipeline.UsageError("stop here")

    monkeypatch.setattr(pipeline, "search_and_export", fake)
    cfg = tmp_path / "c.toml"
    cfg.write_text("method = 'random'\n[method-options]\nspace = 'dsonas'\nsamples = 5\n")
    assert_clean_error(run_cli("search-and-export", "--config", str(cfg), "--space", "densenas"),
                       2, "stop here")
    assert seen["cfg"].method_options == {"space": "densenas", "samples": 5}
    monkeypatch.undo()
    assert_clean_error(run_cli("search-and-export", "--method", "random", "--space", "nosuch",
                               "--out", str(tmp_path / "o")), 2, "random: --space: unknown method")
    assert not (tmp_path / "o").exists()


def test_budget_below_smallest_subnet(random_plugin, tiny_random_config, tmp_path):
    out = tmp_path / "o"
    res = run_cli("search-and-export", "--config", str(tiny_random_config), "--out", str(out),
                  "--latency-ms", "0.00001", "--quiet")
    assert_clean_error(res, 2, "below the smallest subnet")
    assert not out.exists() and no_leftovers(tmp_path, "o")


@pytest.mark.parametrize("damage", ["no-manifest", "bad-json", "wrong-format", "missing-file",
                                    "tampered", "not-a-dir"])
def test_measure_rejects_corrupt_bundle(bundle, tmp_path, damage):
    import shutil

    b = tmp_path / "copy"
    shutil.copytree(bundle, b)
    if damage == "no-manifest":
        (b / "manifest.json").unlink()
    elif damage == "bad-json":
        (b / "manifest.json").write_text("{ truncated")
    elif damage == "wrong-format":
        (b / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    elif damage == "missing-file":
        (b / "model.onnx").unlink()
    elif damage == "tampered":
        with open(b / "model.onnx", "ab") as f:
            f.write(b"\0")
    else:
        shutil.rmtree(b)
        b.write_text("x")
    assert_clean_error(run_cli("measure", str(b)), 2)


def test_methods_and_exporters_lists(random_plugin):
    res = run_cli("methods")
    assert res.exit_code == 0 and "example-random" in res.output and "nas2deploy-random" in res.output
    res = run_cli("exporters")
    assert res.exit_code == 0
    assert "onnx" in res.output and "openvino" in res.output and "available" in res.output


def test_broken_plugin_is_listed_but_not_fatal(tmp_path, monkeypatch):
    dist = tmp_path / "broken_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[nas2deploy.methods]\nbroken = no_such_module:X\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    exe = Path(sys.executable).with_name("nas2deploy")
    res = subprocess.run([str(exe), "methods"], env=env, capture_output=True, text=True)
    assert res.returncode == 0 and "BROKEN" in res.stdout and "broken-plugin" in res.stdout
    res = subprocess.run([str(exe), "search-and-export", "--method", "broken"], env=env,
                         capture_output=True, text=True)
    assert res.returncode == 2 and "failed to load" in res.stderr
    assert "Traceback" not in res.stderr


def test_console_script_subprocess(tmp_path):
    exe = Path(sys.executable).with_name("nas2deploy")
    res = subprocess.run([str(exe), "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and "nas2deploy" in res.stdout
    res = subprocess.run([str(exe), "search-and-export", "--target", "tpu", "--out",
                          str(tmp_path / "o")], capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.strip().startswith("error:")
    assert "Traceback" not in res.stderr and not (tmp_path / "o").exists()
    res = subprocess.run([str(exe), "measure", str(tmp_path / "missing")], capture_output=True,
                         text=True)
    assert res.returncode == 2 and "not a directory" in res.stderr


def test_core_never_imports_plugins():
    for f in (ROOT / "nas2deploy").glob("*.py"):
        text = f.read_text()
        assert "nas2deploy_plugins" not in text and "nas2deploy_exporters" not in text, f.name


def test_closed_loop_width_follows_the_measurements_once_they_bracket_the_aim():
    from nas2deploy.latency import secant

    assert secant([(1.0, 0.30)], 0.2) is None  # nothing under the aim yet
    assert secant([(1.0, 0.30), (0.25, 0.10)], 0.2) == pytest.approx(0.625)
    # the nearest measurements either side of the aim are used
    assert secant([(1.0, 0.30), (0.25, 0.10), (0.5, 0.15), (0.8, 0.25)], 0.2) == \
        pytest.approx(0.65)


# --- issue 12: any input. Out-of-range numbers, crafted files and datasets that cannot fit ------

CONSOLE = Path(sys.executable).with_name("nas2deploy")


@pytest.fixture
def no_dataset_load(monkeypatch):
    """Loading the dataset means the bad input got past the up-front checks."""
    from nas2deploy import pipeline

    def loaded(*args, **kwargs):
        raise AssertionError("the dataset was loaded: the input was not checked up front")

    monkeypatch.setattr(pipeline, "open_dataset", loaded)


OUT_OF_RANGE = [
    (["--seed", "-1"], "--seed"),
    (["--seed", "4294967296"], "--seed"),
    (["--latency-ms", "inf"], "--latency-ms"),
    (["--latency-ms", "nan"], "--latency-ms"),
    (["--max-accuracy-drop", "inf"], "--max-accuracy-drop"),
    (["--min-width", "nan"], "--min-width"),
    (["--threads", "100000"], "--threads"),
    (["--batch", "270"], "test split"),
    (["--max-rounds", "1000000"], "--max-rounds"),
    (["--calibration-samples", "1000000000"], "--calibration-samples"),
    (["--retrain-epochs", "10000000"], "--retrain-epochs"),
    (["--search-epochs", "10000000"], "--search-epochs"),
]


@pytest.mark.parametrize("args,needle", OUT_OF_RANGE, ids=[" ".join(a) for a, _ in OUT_OF_RANGE])
def test_out_of_range_option_exits_2_before_any_work(args, needle, tmp_path, no_dataset_load):
    out = tmp_path / "out"
    res = run_cli("search-and-export", "--out", str(out), *args)
    assert_clean_error(res, 2, needle)
    assert "Infinity" not in res.output and not out.exists() and no_leftovers(tmp_path, "out")


METHOD_OUT_OF_RANGE = [
    ("tfnas", "stem_channels = 1000000000", "stem_channels"),
    ("tfnas", "lam = inf", "lam"),
    ("tfnas", "landing_rounds = -2", "landing_rounds"),
    ("dsonas", "gamma = nan", "gamma"),
    ("dsonas", "base_width = 1000000", "base_width"),
    ("densenas", "widths = [1000000, 1000000, 1000000, 1000000, 1000000, 1000000, 1000000]",
     "widths"),
    ("densenas", "top_k = 1000000000", "top_k"),
]


@pytest.mark.parametrize("method,line,needle", METHOD_OUT_OF_RANGE,
                         ids=[f"{m} {line:.30}" for m, line, _ in METHOD_OUT_OF_RANGE])
def test_out_of_range_method_option_exits_2(method, line, needle, tmp_path, no_dataset_load):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'method = "{method}"\n[method-options]\n{line}\n')
    out = tmp_path / "out"
    res = run_cli("search-and-export", "--config", str(cfg), "--out", str(out))
    assert_clean_error(res, 2, needle)
    assert not out.exists()


def test_console_script_bounds_seed_and_batch(tmp_path):
    """Real processes: a negative seed, and a batch the test split cannot fill."""
    for args, needle in ((["--seed", "-1"], "--seed"), (["--batch", "270"], "269 images")):
        out = tmp_path / "o"
        res = subprocess.run([str(CONSOLE), "search-and-export", "--quiet", "--out", str(out),
                              *args], capture_output=True, text=True, timeout=120)
        assert res.returncode == 2, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], res.stderr
        assert not out.exists()


def _crafted_bundle(root: Path, network: dict) -> Path:
    """A bundle whose architecture.json was written by hand (and hashed, as a crafted bundle
    would be); its manifest names the torch runtime so that `measure` rebuilds the network from
    the architecture."""
    import hashlib

    root.mkdir()
    arch = {"format": "nas2deploy.architecture", "version": 1, "method": "crafted", "space": {},
            "seed": 0, "width_multiplier": 1.0, "decisions": {}, "metadata": {},
            "network": network}
    (root / "architecture.json").write_text(json.dumps(arch))
    (root / "model.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    manifest = {"format": "nas2deploy.bundle", "format_version": 1,
                "files": {"architecture": "architecture.json", "weights": "model.safetensors"},
                "target": {"runtime": "torch", "device": "cpu", "precision": "fp32", "batch": 1,
                           "threads": 1},
                "latency": {"budget_ms": 1.0}, "preprocessing": {"input_shape": [1, 3, 8, 8]},
                "artifacts": {},
                "hashes": {name: hashlib.sha256((root / name).read_bytes()).hexdigest()
                           for name in ("architecture.json", "model.safetensors")}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def _conv_net(c: int, k: int = 3, layers: int = 1) -> dict:
    nodes = [{"id": "stem", "op": "conv", "inputs": ["input"], "c_in": 3, "c_out": c, "k": 1}]
    for j in range(layers):
        nodes.append({"id": f"l{j}", "op": "conv", "inputs": [nodes[-1]["id"]], "c_in": c,
                      "c_out": c, "k": k})
    nodes.append({"id": "head", "op": "head", "inputs": [nodes[-1]["id"]], "c_in": c,
                  "num_classes": 10})
    return {"input": {"channels": 3, "size": [8, 8]}, "num_classes": 10, "nodes": nodes,
            "output": "head"}


@pytest.mark.parametrize("case", ["negative-channels", "huge-channels", "too-many-parameters"])
def test_measure_refuses_a_crafted_architecture_before_building_it(tmp_path, case):
    if case == "negative-channels":
        net = _conv_net(-5)
    elif case == "huge-channels":
        net = _conv_net(10 ** 6)
    else:  # every value in range, the whole ~250e9 parameters
        net = _conv_net(16384, k=15, layers=4)
    b = _crafted_bundle(tmp_path / "b", net)
    res = subprocess.run([str(CONSOLE), "measure", str(b), "--no-record"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "architecture.json" in lines[0]
    assert "unexpected" not in res.stderr


_EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n"
        b"newpath 0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n")


def test_console_script_refuses_postscript_named_png(tmp_path):
    from PIL import Image

    root = tmp_path / "imgs"
    for cls, colour in (("cat", (255, 0, 0)), ("dog", (0, 255, 0))):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (10, 10), colour).save(root / cls / f"{i}.png")
    (root / "cat" / "evil.png").write_bytes(_EPS)
    out = tmp_path / "o"
    res = subprocess.run([str(CONSOLE), "search-and-export", "--dataset", f"folder:{root}",
                          "--input-size", "8", "--quiet", "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "evil.png" in lines[0] and "not a PNG" in lines[0], res.stderr
    assert not out.exists()


def _write_cifar_batches(folder: Path, per_batch: int, test: int) -> Path:
    """CIFAR-10 python batches in the distributed format (a pickled dict of bytes keys)."""
    import pickle

    folder.mkdir(parents=True)
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", test)]:
        batch = {b"batch_label": name.encode(), b"labels": [j % 10 for j in range(n)],
                 b"data": np.zeros((n, 3072), dtype=np.uint8),
                 b"filenames": [f"{j}.png".encode() for j in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return folder


def test_a_dataset_that_cannot_fit_in_memory_is_refused_in_memory_and_streamed(tmp_path):
    """10,000 CIFAR images at 512×512 need ~50 GiB as float32 (and a search copy of the train
    split); the process may map 16 GiB. Loading them in memory (``load_dataset``) is refused up
    front, before anything is allocated; the pipeline streams them (uint8 arrays, ~30 MB), so
    its up-front check lets them through."""
    import resource

    d = _write_cifar_batches(tmp_path / "cifar", per_batch=1800, test=1000)

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (16 << 30, 16 << 30))

    code = ("import sys\n"
            "from nas2deploy.data import check_dataset, load_dataset\n"
            "from nas2deploy.errors import UsageError\n"
            "check_dataset(sys.argv[1], input_size=512, train_copies=2, streamed=True)\n"
            "try:\n"
            "    load_dataset(sys.argv[1], input_size=512)\n"
            "except UsageError as exc:\n"
            "    print(exc)\n")
    res = subprocess.run([sys.executable, "-c", code, f"cifar10:{d}"], capture_output=True,
                         text=True, timeout=120, preexec_fn=limit)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1, res.stdout
    assert re.search(r"needs ~[\d.]+ GiB, [\d.]+ GiB available", lines[0]), lines[0]
