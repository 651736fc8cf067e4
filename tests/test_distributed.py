"""Real scale, part 2, with real processes: two gloo ranks under torchrun make one bundle, a
``kill -9`` during the search or the retrain is resumed to the same decision, and a run
directory that is not this run's gets exit 2."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from test_bundle_safety import EXE, assert_one_line, cli

from nas2deploy.bundle import read_manifest

pytestmark = pytest.mark.multiprocess

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]

# a budget far above the space's largest net: one round and one attempt (the closed loop's
# re-aiming is not what these tests are about)
DSONAS = ('method = "dsonas"\nsearch-epochs = 3\nretrain-epochs = 1\nmax-rounds = 1\n'
          'latency-ms = 50.0\ntarget = "onnxruntime:cpu"\nexport = "onnx"\n'
          '[method-options]\nstages = 2\nblocks_per_stage = 1\nlevels = 2\nbase_width = 8\n'
          'gamma = 0.05\n')


def config(tmp_path: Path, text: str) -> Path:
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(text)
    return cfg


def paused_then_killed(args: list, step: str, env: dict, logdir: Path) -> str:
    """Run the console script until it pauses right after checkpoint ``step`` (the
    NAS2DEPLOY_PAUSE_AT hook), then ``kill -9`` it. Returns what it printed."""
    marker = logdir / f"paused-{step}"
    log = logdir / f"log-{step}.txt"
    with open(log, "w") as f:
        proc = subprocess.Popen([str(EXE), *map(str, args)], stdout=f, stderr=subprocess.STDOUT,
                                env={**env, "NAS2DEPLOY_PAUSE_AT": step,
                                     "NAS2DEPLOY_PAUSE_FILE": str(marker)})
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert proc.poll() is None, f"exited {proc.returncode}: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "never paused"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    return log.read_text()


def test_kill_9_in_the_search_then_in_the_retrain_resumes_to_the_same_decision(tmp_path):
    """DSO-NAS takes no measurement while it searches: killed (kill -9) after its checkpoint of
    search epoch 2, resumed, killed again after retrain epoch 1, resumed again, the run decides
    the architecture an uninterrupted run decides, bit for bit, and the retrain goes on at its
    checkpointed epoch. A run directory that is not this run's is refused on the way."""
    cfg = config(tmp_path, DSONAS)
    whole = tmp_path / "whole"
    res = cli("search-and-export", "--config", cfg, "--out", whole, "--retrain-epochs", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    out, run = tmp_path / "b", tmp_path / "b.run"
    args = ["search-and-export", "--config", cfg, "--out", out, "--retrain-epochs", "2"]
    paused_then_killed(args, "search-2", dict(os.environ), tmp_path)
    assert (run / "run.json").is_file() and (run / "search" / "ckpt-000002.json").is_file()
    assert (run / "stages" / "budget.json").is_file() and not out.exists()
    # refused, each with one line and exit 2, and nothing of the killed run is lost:
    assert_one_line(cli(*args), 2, "--resume")  # a new run over an unfinished one
    assert_one_line(cli(*args, "--seed", "1", "--resume", run), 2,
                    "another config (seed: 0 -> 1)")
    assert_one_line(cli(*args, "--resume", tmp_path), 2, "not a nas2deploy run directory")
    said = paused_then_killed([*args, "--resume", run], "retrain-1-1", dict(os.environ),
                              tmp_path)
    assert "resuming search after epoch 2" in said
    assert (run / "retrain-1" / "ckpt-000001.json").is_file()
    meta = (run / "run.json").read_text()
    (run / "run.json").write_text("{")
    assert_one_line(cli(*args, "--resume", run), 2, "not readable JSON")
    (run / "run.json").write_text(meta)
    res = cli(*args, "--resume", run)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming retrain-1 after epoch 1" in res.stderr
    assert "record differs" not in res.stderr  # the replay remade the budget and the decision
    # stderr is a pipe here, as under CI or torchrun: one line per finished epoch, no bars
    assert "\r" not in res.stderr and re.search(r"retrain: \d+/\d+ in [\d.]+ s", res.stderr)
    a, b = read_manifest(whole), read_manifest(out)
    assert b["search"]["decided"] == a["search"]["decided"]
    # predicted_ms: by the latency model, which each run anchors on its own measurements
    strip = ("seconds", "train_seconds", "predicted_ms")
    assert ([{k: v for k, v in r.items() if k not in strip} for r in b["search"]["history"]]
            == [{k: v for k, v in r.items() if k not in strip} for r in a["search"]["history"]])
    assert [r["epoch"] for r in b["retrain"]["history"]] == [0, 1]
    assert b["resumed"]["measurements_replayed"] >= 3  # the budget's at least
    assert not run.exists()  # removed with the bundle committed


TFNAS = ('method = "tfnas"\nsearch-epochs = 3\nretrain-epochs = 0\nmax-rounds = 1\n'
         'target = "onnxruntime:cpu"\nexport = "onnx"\n')


def test_measurements_taken_before_a_kill_are_replayed_not_retaken(tmp_path):
    """TF-NAS measures its candidate every search epoch: a resumed run steers by the
    measurements the killed run journalled (the same values, not new timings) up to the kill,
    and measures afresh only after it."""
    out, run = tmp_path / "b", tmp_path / "b.run"
    args = ["search-and-export", "--config", config(tmp_path, TFNAS), "--out", out]
    paused_then_killed(args, "search-2", dict(os.environ), tmp_path)
    journal = json.loads((run / "measurements.json").read_text())
    in_search = [e for e in journal if e["kind"] == "side_by_side"][2:]  # after the budget's
    assert in_search, journal
    res = cli(*args, "--resume", run)
    assert res.returncode in (0, 3), res.stderr[-3000:]
    m = read_manifest(out)
    got = [r["measured_p50_ms"] for r in m["search"]["measurements"]][:len(in_search)]
    assert got == [e["value"]["p50_ms"] for e in in_search]
    assert m["resumed"]["measurements_replayed"] >= 3 and m["resumed"]["replay_diverged"] is None


GRADS = r'''
import sys, torch, torch.nn.functional as F
from safetensors.torch import save_file
from nas2deploy import distributed
from nas2deploy.data.searchdata import SearchData
from nas2deploy.device import LossScale, resolve
from nas2deploy.method import SearchContext, TaskSpec
from nas2deploy_plugins.dsonas import DSONAS

world = distributed.start(distributed.from_env(), torch.device("cpu"))
torch.manual_seed(0)
method = DSONAS({"stages": 2, "blocks_per_stage": 1, "levels": 2, "base_width": 8})
net = method.build(TaskSpec(1, 8, 4)).eval()  # BN on running statistics: no coupling in a batch
g = torch.Generator().manual_seed(1)
x, y = torch.randn(40, 1, 8, 8, generator=g), torch.randint(0, 4, (40,), generator=g)
data = SearchData(x, y, x, y, x, y).shard(world.rank, world.size)
ctx = SearchContext(data=data, epochs=1, seed=0, world=world)
xb, yb = next(data.cycle("arch", 8, torch.Generator().manual_seed(2)))
grads = LossScale(resolve("cpu", "off")).grads(F.cross_entropy(net(xb), yb),
                                               net.arch_parameters(), average=ctx.average)
save_file({f"g{i}": t.contiguous() for i, t in enumerate(grads)},
          sys.argv[1] + f"/rank{world.rank}.safetensors")
distributed.stop(world)
'''


def test_two_ranks_average_architecture_gradients_like_one_process_on_both_shards(tmp_path):
    """One λ step's gradients on two gloo ranks, each on its shard of a global batch of 16, are
    averaged: both ranks hold the gradient one process takes on the whole batch of 16."""
    script = tmp_path / "grads.py"
    script.write_text(GRADS)
    res = subprocess.run([*TORCHRUN, "--nproc-per-node", "2", str(script), str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1)]

    import torch
    import torch.nn.functional as F

    from nas2deploy.method import TaskSpec
    from nas2deploy_plugins.dsonas import DSONAS

    torch.manual_seed(0)
    net = DSONAS({"stages": 2, "blocks_per_stage": 1, "levels": 2, "base_width": 8}).build(
        TaskSpec(1, 8, 4)).eval()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 1, 8, 8, generator=g), torch.randint(0, 4, (40,), generator=g)
    idx = torch.randperm(40, generator=torch.Generator().manual_seed(2))[:16]  # global batch 1
    whole = torch.autograd.grad(F.cross_entropy(net(x[idx]), y[idx]), net.arch_parameters())
    for i, w in enumerate(whole):
        assert torch.equal(ranks[0][f"g{i}"], ranks[1][f"g{i}"])
        assert torch.allclose(ranks[0][f"g{i}"], w, rtol=1e-5, atol=1e-7), i
    # and not what rank 0 would have stepped with on its own shard
    own = torch.autograd.grad(F.cross_entropy(net(x[idx[:8]]), y[idx[:8]]), net.arch_parameters())
    assert not all(torch.allclose(o, w, rtol=1e-5, atol=1e-7) for o, w in zip(own, whole))


def test_two_gloo_ranks_and_a_restarted_worker_group_make_one_bundle(tmp_path):
    """DSO-NAS searched and retrained by two ranks, each on its shard (a mismatch of their
    decisions would fail the run). Rank 1 dies (SIGKILL) after the search's checkpoint of epoch
    2; torchrun's --max-restarts starts the group again, which resumes from the run directory by
    itself. Rank 0 alone measured, exported, wrote and reported."""
    out = tmp_path / "b"
    res = subprocess.run([*TORCHRUN, "--nproc-per-node", "2", "--max-restarts", "1", str(EXE),
                          "search-and-export", "--config", str(config(tmp_path, DSONAS)),
                          "--out", str(out)], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "NAS2DEPLOY_CRASH_AT": "search-2:1"})
    assert res.returncode == 0, res.stderr[-4000:]
    assert "resuming search after epoch 2" in res.stderr
    m = read_manifest(out)
    assert m["distributed"] == {"backend": "gloo", "world_size": 2, "per_rank_batch": 64,
                                "global_batch": 128, "ranks_agree_on_decision": True}
    assert m["resumed"]["run_dir"].endswith("b.run")
    # rank 0 alone reports: once per worker group, not once per rank
    assert res.stderr.count("opening dataset digits") == 2
    assert res.stderr.count("bundle written to") == 1
    assert not (tmp_path / "b.run").exists()
