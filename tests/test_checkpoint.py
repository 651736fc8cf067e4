"""Checkpoints without pickles, resumable loops and data passes, data-parallel shards, and the
run directory's checks: the pieces ``--resume`` and torchrun runs are made of."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from nas2deploy.checkpoint import Loop, Store
from nas2deploy.data.searchdata import Batches
from nas2deploy.errors import UsageError
from nas2deploy.rundir import RunDir, identity
from nas2deploy.train import fit


def test_a_tree_round_trips_through_json_and_safetensors(tmp_path):
    opt = torch.optim.SGD([nn.Parameter(torch.ones(3))], lr=0.1, momentum=0.9)
    opt.param_groups[0]["params"][0].grad = torch.ones(3)
    opt.step()
    gen = torch.Generator().manual_seed(5)
    tree = {"opt": opt.state_dict(), "gen": gen, "t": (1, 2.5, None), "big": float("inf"),
            "arr": np.arange(4), "nested": [{"w": torch.randn(2, 2)}]}
    Store(tmp_path).save(3, tree)
    assert not list(tmp_path.glob("*.pkl")) and not list(tmp_path.glob("*.pt"))
    step, back = Store(tmp_path).load()
    assert step == 3 and back["t"] == (1, 2.5, None) and back["big"] == float("inf")
    assert torch.equal(back["opt"]["state"][0]["momentum_buffer"], torch.ones(3))
    assert torch.equal(back["nested"][0]["w"], tree["nested"][0]["w"])
    assert np.array_equal(back["arr"], np.arange(4))
    assert torch.equal(torch.rand(4, generator=back["gen"]), torch.rand(4, generator=gen))


def test_only_the_newest_complete_checkpoint_is_kept_and_read(tmp_path):
    s = Store(tmp_path)
    s.save(1, {"x": torch.zeros(2)})
    s.save(2, {"x": torch.ones(2)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000002.json",
                                                          "ckpt-000002.safetensors"]
    # a kill between the two writes of checkpoint 3: its tensors without their record
    (tmp_path / "ckpt-000003.safetensors").write_bytes(b"partial")
    assert s.load()[0] == 2
    # a record whose tensors do not match its hash is skipped, not trusted
    (tmp_path / "ckpt-000003.json").write_text(json.dumps(
        {"format": 1, "step": 3, "sha256": "0" * 64, "tree": {}}))
    assert s.load()[0] == 2


def test_a_foreign_checkpoint_record_is_a_usage_error(tmp_path):
    (tmp_path / "ckpt-000001.safetensors").write_bytes(b"")
    (tmp_path / "ckpt-000001.json").write_text("{not json")
    with pytest.raises(UsageError, match="not readable JSON"):
        Store(tmp_path).load()
    (tmp_path / "ckpt-000001.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(UsageError, match="not a nas2deploy checkpoint"):
        Store(tmp_path).load()


def test_a_loop_checkpoint_of_another_key_is_not_resumed(tmp_path):
    Loop(tmp_path / "retrain-1", key="a").save(1, {"v": 1})
    assert Loop(tmp_path / "retrain-1", key="a").load()[1] == {"v": 1}
    assert Loop(tmp_path / "retrain-1", key="b").load() is None


def _data(n=70):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long()
    return Batches.in_memory({"train": (x, y), "val": (x[:20], y[:20])})


def _net():
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3), nn.Linear(4, 2))


class _Stop(Exception):
    pass


def test_a_retrain_stopped_mid_epoch_resumes_to_the_same_weights(tmp_path):
    whole = _net()
    rows: list = []
    fit(whole, _data(), epochs=4, batch_size=16, seed=3, history=rows)

    def dies_in_epoch_3(total=None, desc=None):
        class Bar:
            n = 0

            def update(self, k=1):
                Bar.n += k
                if Bar.n == 2 * 5 + 2:  # 5 batches an epoch: two epochs and two batches
                    raise _Stop

            def set_postfix(self, **kw):
                pass

            def close(self):
                pass
        return Bar()

    net = _net()
    loop = Loop(tmp_path / "retrain-1", key="k")
    with pytest.raises(_Stop):
        fit(net, _data(), epochs=4, batch_size=16, seed=3, progress=dies_in_epoch_3,
            checkpoints=loop)
    torch.manual_seed(12345)  # whatever the global RNG did meanwhile: the checkpoint restores it
    resumed, rows2, said = _net(), [], []
    fit(resumed, _data(), epochs=4, batch_size=16, seed=3, history=rows2,
        checkpoints=Loop(tmp_path / "retrain-1", key="k"), log=said.append)
    assert any("after epoch 2" in s for s in said)
    assert [r["epoch"] for r in rows2] == [0, 1, 2, 3]
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert [r["loss"] for r in rows] == [r["loss"] for r in rows2]


def test_a_cycle_resumes_mid_pass():
    data = _data(50)
    g = torch.Generator().manual_seed(7)
    c = data.cycle("train", 16, g)
    for _ in range(5):  # one pass of 3 batches and two of the next
        next(c)
    state = c.state()
    after = [next(c)[1] for _ in range(4)]
    g2 = torch.Generator().manual_seed(99)
    c2 = _data(50).cycle("train", 16, g2)
    c2.load_state(state)
    assert all(torch.equal(a, next(c2)[1]) for a in after)


def test_shards_split_each_global_batch_between_ranks():
    x = torch.arange(50).float().view(50, 1, 1, 1)
    parts = []
    for rank in (0, 1):
        b = Batches.in_memory({"train": (x, torch.arange(50))}).shard(rank, 2)
        assert b.n_batches("train", 8) == 3  # 50 // 16
        parts.append([yb for _, yb in b.epoch("train", 8, torch.Generator().manual_seed(0))])
    whole = torch.randperm(50, generator=torch.Generator().manual_seed(0))
    for i in range(3):
        assert len(parts[0][i]) == len(parts[1][i]) == 8
        assert torch.equal(torch.cat([parts[0][i], parts[1][i]]), whole[16 * i: 16 * i + 16])


def test_the_run_directory_refuses_another_config_and_junk(tmp_path):
    ident = identity({"method": "tfnas", "seed": 0, "out": "a", "workers": 2}, "fp1", 1)
    path = tmp_path / "r.run"
    RunDir.create(path, ident)
    with pytest.raises(UsageError, match="earlier run that did not finish"):
        RunDir.create(path, ident)
    # --out and --workers do not change what a run computes
    RunDir.resume(path, identity({"method": "tfnas", "seed": 0, "out": "b", "workers": 0},
                                 "fp1", 1))
    with pytest.raises(UsageError, match=r"another config \(seed: 0 -> 1\)"):
        RunDir.resume(path, identity({"method": "tfnas", "seed": 1}, "fp1", 1))
    with pytest.raises(UsageError, match="another space"):
        RunDir.resume(path, identity({"method": "tfnas", "seed": 0}, "fp2", 1))
    with pytest.raises(UsageError, match="another number of processes"):
        RunDir.resume(path, identity({"method": "tfnas", "seed": 0}, "fp1", 2))
    (path / "measurements.json").write_text('{"not": "a journal"}')
    with pytest.raises(UsageError, match="not a measurement journal"):
        RunDir.resume(path, ident)
    (path / "run.json").write_text("garbage")
    with pytest.raises(UsageError, match="not readable JSON"):
        RunDir.resume(path, ident)
    with pytest.raises(UsageError, match="no run.json"):
        RunDir.resume(tmp_path / "nothing", ident)


def test_measurements_replay_in_order_then_are_taken_afresh(tmp_path):
    ident = identity({"seed": 0}, "fp", 1)
    rd = RunDir.create(tmp_path / "r", ident)
    assert rd.measured("alone", "a", lambda: 1.0) == 1.0
    assert rd.measured("side_by_side", "b", lambda: {"p50_ms": 2.0}) == {"p50_ms": 2.0}
    again = RunDir.resume(tmp_path / "r", ident)
    taken = []
    assert again.measured("alone", "a", lambda: taken.append("a") or 9.0) == 1.0
    assert again.measured("side_by_side", "b", lambda: taken.append("b") or 9.0) == {"p50_ms": 2.0}
    assert again.measured("alone", "c", lambda: 3.0) == 3.0 and taken == [] and again.replayed == 2
    # a run that asks for something else at some point measures afresh from there
    third = RunDir.resume(tmp_path / "r", ident)
    assert third.measured("alone", "a", lambda: 0.0) == 1.0
    assert third.measured("alone", "x", lambda: 5.0) == 5.0 and third.diverged
    assert third.measured("side_by_side", "b", lambda: 6.0) == 6.0
