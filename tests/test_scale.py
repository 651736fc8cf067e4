"""Real scale, part 1, on this machine: streamed uint8 data end to end (CIFAR-10 format and an
image folder, with augmentation and the uint8 cache), the device and AMP options checked before
any work, and the same run on a GPU where one exists (marked ``gpu``)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from test_cli import CONSOLE, assert_clean_error, run_cli

from nas2deploy.data import open_dataset
from nas2deploy.device import resolve
from nas2deploy.errors import UsageError

CUDA = torch.cuda.is_available()


def write_cifar(folder: Path, per_batch: int = 30, test: int = 20) -> Path:
    """CIFAR-10's python batches in their real format: learnable (class = a bright square's
    position) so a short run is more than chance."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)

    def batch(labels):
        data = rng.integers(0, 60, size=(len(labels), 3, 32, 32), dtype=np.uint8)
        for i, c in enumerate(labels):
            r, q = divmod(c, 5)
            data[i, :, 4 + 14 * r: 14 + 14 * r, 2 + 6 * q: 8 + 6 * q] = 250
        return {b"labels": list(labels), b"data": data.reshape(len(labels), 3072)}

    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch([(j + i) % 10 for j in range(per_batch)]), f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch([j % 10 for j in range(test)]), f)
    return folder


def write_folder(root: Path, classes: int = 3, per_class: int = 10) -> Path:
    rng = np.random.default_rng(1)
    for c in range(classes):
        d = root / f"class{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            a = rng.integers(0, 80, size=(28 + i, 36, 3), dtype=np.uint8)
            a[..., c] = 230
            Image.fromarray(a).save(d / f"{i}.png")
    return root


def tiny_config(tmp_path: Path, extra: str = "") -> Path:
    cfg = tmp_path / "tiny.toml"
    cfg.write_text('method = "example-random"\nsearch-epochs = 1\nretrain-epochs = 2\nmax-rounds = 1\n'
                   'target = "onnxruntime:cpu"\nexport = "onnx"\nworkers = 1\n' + extra
                   + '[method-options]\nsamples = 1\nlayers = 2\nwidth = 8\n')
    return cfg


def console(*args: str, plugin: Path) -> subprocess.CompletedProcess:
    """The real console script in a process of its own (its DataLoader workers with it), the
    example plugin on its path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(plugin), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("NAS2DEPLOY_WORKERS", None)
    return subprocess.run([str(CONSOLE), *args], capture_output=True, text=True, env=env,
                          timeout=900)


def manifest_of(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_streamed_cifar_with_augmentation_end_to_end(random_plugin, tmp_path):
    data = write_cifar(tmp_path / "cifar")
    out = tmp_path / "b"
    res = console("search-and-export", "--config", str(tiny_config(tmp_path)), "--dataset",
                  f"cifar10:{data}", "--input-size", "32", "--augment", "standard",
                  "--out", str(out), "--quiet", plugin=random_plugin)
    assert res.returncode in (0, 3), res.stderr
    m = manifest_of(out)
    assert m["dataset"]["streamed"] is True and m["compute"]["streamed"] is True
    assert "pad" in m["dataset"]["augment"] and "flip" in m["dataset"]["augment"]
    assert m["run_config"]["augment"] == "standard"
    assert m["compute"]["device"] == "cpu" and m["compute"]["amp"] == "off"
    rates = m["compute"]["images_per_s"]
    assert rates["search_images_per_s"] > 0 and rates["retrain_images_per_s"] > 0
    assert m["accuracy"]["samples"] == 20 and 0 <= m["accuracy"]["top1"] <= 1
    assert all(r["images_per_s"] > 0 for r in m["retrain"]["history"])
    assert m["parity"]["onnx"]["verified"] is True


def test_streamed_folder_with_a_cache_end_to_end(random_plugin, tmp_path):
    root = write_folder(tmp_path / "imgs")
    cache = tmp_path / "cache"
    out = tmp_path / "b"
    res = console("search-and-export", "--config", str(tiny_config(tmp_path)), "--dataset",
                  f"folder:{root}", "--input-size", "16", "--cache", str(cache),
                  "--out", str(out), "--quiet", plugin=random_plugin)
    assert res.returncode in (0, 3), res.stderr
    m = manifest_of(out)
    assert m["dataset"]["cache"] and Path(m["dataset"]["cache"]).parent == cache
    assert sorted(p.suffix for p in cache.iterdir()) == [".json", ".npy"]
    assert "random-resized crop" in m["dataset"]["augment"]


def test_digits_stays_in_memory_and_identical():
    """The default data is not streamed: the same normalised tensors, so the default run's
    figures do not move."""
    s = open_dataset("digits", input_size=32, seed=0)
    assert s.in_memory and not s.batches().is_streamed
    d = s.search_data(0)
    assert d.size("weights") + d.size("arch") == len(s.train)


@pytest.mark.parametrize("args,needle", [
    (["--device", "tpu"], "--device must be"),
    (["--amp", "bf16", "--device", "cpu"], "needs a CUDA device"),
    (["--workers", "-1"], "--workers must be in 0..64"),
])
def test_bad_compute_options_are_one_line_before_any_work(args, needle, tmp_path):
    out = tmp_path / "b"
    res = run_cli("search-and-export", "--out", str(out), "--quiet", *args)
    assert_clean_error(res, 2, needle)
    assert not out.exists()


@pytest.mark.skipif(CUDA, reason="this machine has a CUDA GPU")
def test_cuda_asked_for_where_there_is_none(tmp_path):
    res = run_cli("search-and-export", "--out", str(tmp_path / "b"), "--device", "cuda")
    assert_clean_error(res, 2, "no CUDA GPU")
    with pytest.raises(UsageError, match="no CUDA GPU"):
        resolve("cuda:0")


def test_cache_folder_that_cannot_be_written_is_refused_before_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    res = run_cli("search-and-export", "--out", str(tmp_path / "b"), "--cache",
                  str(blocker / "cache"))
    assert_clean_error(res, 2, "cannot be written")
    assert not (tmp_path / "b").exists()


def test_cpu_resolves_without_amp():
    c = resolve("cpu", "auto")
    assert c.device.type == "cpu" and c.amp == "off" and c.describe() == {"device": "cpu",
                                                                          "amp": "off"}


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="no CUDA GPU on this machine")
def test_search_and_retrain_on_the_gpu_with_amp(random_plugin, tmp_path):
    data = write_cifar(tmp_path / "cifar")
    out = tmp_path / "b"
    res = console("search-and-export", "--config", str(tiny_config(tmp_path)), "--dataset",
                  f"cifar10:{data}", "--device", "cuda", "--amp", "auto", "--out", str(out),
                  "--quiet", plugin=random_plugin)
    assert res.returncode in (0, 3), res.stderr
    m = manifest_of(out)
    assert m["compute"]["device"].startswith("cuda") and m["compute"]["gpu"]
    assert m["compute"]["amp"] in ("bf16", "fp16")
    assert m["parity"]["onnx"]["verified"] is True
