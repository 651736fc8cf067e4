"""ENAS's micro (NASNet cell) space and ScheduledDropPath: the behavioural tests of METHODS.md
§6 on a tiny cell space, plus one end-to-end run of the console script."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.func import functional_call

from nas2deploy.counting import count_macs
from nas2deploy.data import load_dataset
from nas2deploy.data.searchdata import Batches
from nas2deploy.errors import UsageError
from nas2deploy.latency.grid import network_signatures
from nas2deploy.latency.model import FlopsProxy
from nas2deploy.materialize import materialize
from nas2deploy.method import SearchContext, SearchData, TaskSpec
from nas2deploy.netspec import SpecError, build_network, validate_spec
from nas2deploy.ops import Sum
from nas2deploy.train import fit
from nas2deploy_plugins.enas import ENAS, CELL_OPS, Cells

TASK = TaskSpec(1, 16, 10)
TINY = {"space": "micro", "blocks": 3, "cells": 1, "reductions": 1, "width": 4,
        "stem_stride": 1, "lstm_size": 16}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(**over):
    torch.manual_seed(0)
    method = ENAS({**TINY, **over})
    return method, method.build(TASK)


def cells_of(arch) -> Cells:
    return Cells.make(arch.decisions["normal"], arch.decisions["reduce"])


def stir_bn(net, n=4):
    """Move every BN off its initial statistics, so that a wrong copy would show."""
    net.train()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(n):
            net(torch.randn(8, 1, 16, 16), net.child_of(net.controller(gen)))
    net.eval()


# --- seeded sampling: deterministic, and every sample valid for the cell grammar ---------------

def test_seeded_sampling_is_deterministic_and_every_sample_is_valid():
    method, net = tiny()
    space = method.space(net)
    x = torch.randn(2, 1, 16, 16)

    def draw(seed, n=10):
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            return [net.controller(gen) for _ in range(n)]

    a, b, c = draw(7), draw(7), draw(8)
    assert [(s.normal, s.reduce) for s in a] == [(s.normal, s.reduce) for s in b]
    assert [(s.normal, s.reduce) for s in a] != [(s.normal, s.reduce) for s in c]
    for s in a + c:
        for cell in (s.normal, s.reduce):
            assert len(cell) == 3
            for j, (ia, oa, ib, ob) in enumerate(cell):
                assert 0 <= ia < 2 + j and 0 <= ib < 2 + j  # inputs: earlier nodes of the cell
                assert 0 <= oa < len(CELL_OPS) and 0 <= ob < len(CELL_OPS)
        assert torch.isfinite(s.log_prob) and s.log_prob <= 0 and s.entropy > 0
        assert s.skip_kl.item() == 0.0 and s.skip_count == 0
        # teacher forcing scores the same decisions with the same log-probability
        again = net.controller(normal=s.normal, reduce=s.reduce)
        assert torch.allclose(again.log_prob, s.log_prob)
        arch = method._arch(net, net.child_of(s))
        validate_spec(arch.network)
        ids = [n["id"] for n in arch.network["nodes"]]
        for k, node in enumerate(arch.network["nodes"]):
            assert all(i == "input" or i in ids[:k] for i in node["inputs"]), node
        with torch.no_grad():
            out = materialize(arch, space.weights(arch)).eval()(x)
        assert out.shape == (2, 10) and torch.isfinite(out).all()
    # the space's random sampler: seeded, valid, leaves the supernet alone
    before = {k: v.clone() for k, v in net.state_dict().items()}
    s1 = [space.draw(random.Random(3)) for _ in range(2)]
    assert s1[0].network == s1[1].network
    net.layout.check(cells_of(s1[0]))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_cell_output_sums_exactly_the_unused_nodes():
    method, net = tiny()
    # normal: node 0 = sep3(in0) + id(in1); node 1 = max(node 0) + id(in0); node 2 = avg(in1)
    #         + sep5(node 0): nodes 1 and 2 are unused
    cell = [(0, "sep3x3", 1, "identity"), (2, "maxpool", 0, "identity"),
            (1, "avgpool", 2, "sep5x5")]
    arch = method._arch(net, Cells.make(cell, cell))
    nodes = {n["id"]: n for n in arch.network["nodes"]}
    assert nodes["c0_out"]["inputs"] == ["c0_n1", "c0_n2"]
    assert nodes["c0_n0"]["inputs"] == ["c0_n0_x", "c0_in1" if "c0_in1" in nodes else "stem"]
    # drop path on non-identity paths only, scaled by depth: (k + 1) / cells
    p = ENAS(TINY).config.drop_path
    assert nodes["c0_n0"]["drop_path"] == [pytest.approx(p / 3, abs=1e-6), 0.0]
    assert nodes["c2_n2"]["drop_path"] == [pytest.approx(p), pytest.approx(p)]
    chain = [(0, "identity", 1, "identity"), (2, "identity", 2, "identity"),
             (3, "identity", 3, "identity")]
    arch = method._arch(net, Cells.make(chain, chain))
    assert "c0_out" not in {n["id"] for n in arch.network["nodes"]}  # one unused node: no sum


# --- weight sharing -----------------------------------------------------------------------------

def test_two_children_choosing_the_same_position_and_op_share_one_tensor():
    method, net = tiny()
    base = [(0, "maxpool", 1, "identity"), (2, "avgpool", 0, "identity"),
            (3, "identity", 1, "maxpool")]
    # both use sep3x3 in slot x of normal node 1, reading different inputs
    a = Cells.make([base[0], (2, "sep3x3", 0, "identity"), base[2]], base)
    b = Cells.make([base[0], (0, "sep3x3", 1, "sep5x5"), base[2]], base)
    module = net.choices["c0_n1_x_sep3x3"]
    seen = []
    hook = module.register_forward_hook(lambda m, i, o: seen.append(m.pw.weight))
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,))
    net.train()
    net(x, a)
    net(x, b)
    hook.remove()
    assert len(seen) == 2 and seen[0] is seen[1]  # the same tensor object in both children
    net.eval()
    with torch.no_grad():
        before = net(x, b).clone()
    opt = torch.optim.SGD(module.parameters(), lr=0.5)
    net.train()
    torch.nn.functional.cross_entropy(net(x, a), y).backward()
    opt.step()
    net.eval()
    with torch.no_grad():
        assert not torch.allclose(net(x, b), before)  # a step on a changed b's forward
    space = method.space(net)
    wa, wb = (space.weights(method._arch(net, c)) for c in (a, b))
    assert torch.equal(wa["nodes.c0_n1_x.pw.weight"], wb["nodes.c0_n1_x.pw.weight"])


# --- the materialized child is the supernet's child ---------------------------------------------

def test_supernet_and_materialized_child_compute_the_same_function():
    method, net = tiny()
    space = method.space(net)
    stir_bn(net)
    x = torch.randn(3, 1, 16, 16)
    archs = [space.largest(), space.smallest(), *space.covering(),
             *(space.draw(random.Random(i)) for i in range(3))]
    for arch in archs:
        sub = materialize(arch, space.weights(arch)).eval()
        assert set(space.weights(arch)) == set(sub.state_dict())  # every tensor inherited
        with torch.no_grad():
            torch.testing.assert_close(sub(x), net(x, cells_of(arch)), rtol=0, atol=0)
    # the cover holds every op and every output-sum size at every cell
    sigs = {s.key() for a in space.covering() for s in network_signatures(a.network).values()}
    for arch in archs:
        assert {s.key() for s in network_signatures(arch.network).values()} <= sigs


def test_shared_weights_are_the_supernets_live_tensors():
    """functional_call on the materialized net with ``shared`` computes what the net loaded with
    ``inherit`` computes, and a backward through it reaches the supernet's parameters."""
    method, net = tiny()
    space = method.space(net)
    stir_bn(net)
    arch = space.draw(random.Random(5))
    sub = materialize(arch)
    shared = space.shared(arch)
    assert set(shared) == set(sub.state_dict())
    supernet_tensors = {id(t) for t in net.state_dict(keep_vars=True).values()}
    assert all(id(t) in supernet_tensors for t in shared.values())
    x = torch.randn(4, 1, 16, 16)
    loaded = materialize(arch, space.weights(arch)).eval()
    sub.eval()
    with torch.no_grad():
        torch.testing.assert_close(functional_call(sub, shared, (x,)), loaded(x), rtol=0, atol=0)
    net.zero_grad(set_to_none=True)
    sub.train()
    functional_call(sub, shared, (x,)).sum().backward()
    used = [t for t in shared.values() if t.requires_grad]
    assert used and all(t.grad is not None for t in used)
    assert all(p.grad is None for p in net.controller.parameters())


# --- ScheduledDropPath --------------------------------------------------------------------------

def test_drop_path_is_active_in_train_identity_in_eval_and_follows_its_schedule():
    torch.manual_seed(0)
    a, b = torch.randn(4000, 2, 3, 3), torch.randn(4000, 2, 3, 3)
    plain = Sum()
    dp = Sum(drop_path=[0.5, 0.0])
    assert torch.equal(plain(a, b), a + b)
    dp.train()
    assert torch.equal(dp(a, b), a + b)  # not scheduled yet: progress 0, a plain sum
    dp.schedule(1.0)
    out = dp(a, b) - b  # the second path is never dropped (probability 0)
    dropped = (out.flatten(1) == 0).all(1)
    assert 0.45 < dropped.float().mean() < 0.55
    torch.testing.assert_close(out[~dropped], a[~dropped] * 2)  # kept paths scaled by 1 / keep
    dp.schedule(0.4)  # p = 0.5 * 0.4
    rate = ((dp(a, b) - b).flatten(1) == 0).all(1).float().mean()
    assert 0.16 < rate < 0.24
    dp.eval()
    assert torch.equal(dp(a, b), a + b)  # eval: exactly the plain add
    # the spec round-trips, validates, and is a plain sum to the latency model
    spec = {"input": {"channels": 2, "size": [3, 3]}, "num_classes": 2,
            "nodes": [{"id": "s", "op": "sum", "inputs": ["input", "input"],
                       "drop_path": [0.5, 0.0]},
                      {"id": "head", "op": "head", "inputs": ["s"], "c_in": 2,
                       "num_classes": 2}], "output": "head"}
    validate_spec(spec)
    net = build_network(spec)
    assert net.spec()["nodes"][0]["drop_path"] == [0.5, 0.0]
    assert network_signatures(spec)["s"].type == "sum"
    for bad in ([1.0, 0.0], [0.5], "0.5", [float("nan"), 0.0]):
        with pytest.raises(SpecError, match="drop_path"):
            validate_spec({**spec, "nodes": [{**spec["nodes"][0], "drop_path": bad},
                                             spec["nodes"][1]]})


def test_fit_tells_scheduled_modules_the_progress_each_step():
    seen: list[float] = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)

        def schedule(self, fraction):
            seen.append(fraction)

        def forward(self, x):
            return self.lin(x)

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 4, generator=g), torch.randint(0, 3, (40,), generator=g)
    fit(Probe(), Batches.in_memory({"train": (x, y)}), epochs=2, batch_size=10)
    assert seen == pytest.approx([i / 8 for i in range(8)])  # linear over the whole fit


# --- a tighter budget decides a smaller architecture --------------------------------------------

@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits", input_size=16, seed=0)
    x, y = ds.x_train, ds.y_train
    return SearchData(x[:96], y[:96], x[96:192], y[96:192], ds.x_val[:64], ds.y_val[:64])


def test_a_tighter_budget_decides_a_smaller_architecture(digits):
    estimates = {}
    for fraction in (0.4, 0.8):
        method, net = tiny(controller_steps=10, reward_batch=32, derive_samples=8,
                           reward="hard")
        space = method.space(net)
        anchors = []
        for arch, ms in ((space.largest(), 1.0), (space.smallest(), 0.1)):
            sub = build_network(arch.network)
            anchors.append((count_macs(sub, sub.example_input(1)), ms))
        proxy = FlopsProxy(anchors)
        budget = fraction * proxy.predict(space.largest().network)
        ctx = SearchContext(data=digits, epochs=3, seed=0, batch_size=32, budget_ms=budget,
                            latency_model=proxy)
        decision = method.decide(net, method.search(net, ctx))
        assert decision.arch.decisions["reward"] == "hard"
        estimates[fraction] = proxy.predict(decision.arch.network)
    assert estimates[0.4] < estimates[0.8], estimates


# --- options ------------------------------------------------------------------------------------

@pytest.mark.parametrize("options,needle", [
    ({"blocks": 0}, "blocks"),
    ({"cells": 0}, "cells"),
    ({"reductions": 7}, "reductions"),
    ({"cell_ops": ["conv3x3"]}, "unknown cell op"),
    ({"cell_ops": []}, "cell_ops"),
    ({"cell_ops": ["identity", "identity"]}, "twice"),
    ({"drop_path": 1.0}, "drop_path"),
    ({"drop_path": -0.1}, "drop_path"),
    ({"stem_stride": 3}, "stem_stride"),
    ({"width": 512, "reductions": 2}, "width"),
])
def test_bad_micro_options_are_one_line_usage_errors(options, needle):
    with pytest.raises(UsageError, match=needle) as err:
        ENAS({"space": "micro", **options})
    assert "\n" not in str(err.value)


# --- end to end ---------------------------------------------------------------------------------

CONSOLE = Path(sys.executable).with_name("nas2deploy")


@pytest.mark.slow
def test_search_and_export_with_the_micro_space_end_to_end(tmp_path):
    """The whole pipeline through the console script on the default data with the micro space
    (from a config file), at a shorter search and retrain than the defaults."""
    cfg = tmp_path / "micro.toml"
    cfg.write_text('[method-options]\nspace = "micro"\n')
    out = tmp_path / "bundle"
    t = time.perf_counter()
    res = subprocess.run([str(CONSOLE), "search-and-export", "--method", "enas", "--quiet",
                          "--config", str(cfg), "--search-epochs", "2", "--retrain-epochs", "2",
                          "--input-size", "16",
                          "--out", str(out)], capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - t
    assert res.returncode in (0, 3), res.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    assert res.returncode == (3 if m["latency"]["within_budget"] is False else 0)
    arch = json.loads((out / "architecture.json").read_text())
    assert arch["method"] == "enas" and arch["decisions"]["space"] == "micro"
    assert {"normal", "reduce"} <= set(arch["decisions"])
    sums = [n for n in arch["network"]["nodes"] if n.get("drop_path")]
    assert sums  # the retrained net carried ScheduledDropPath
    assert 0 <= m["accuracy"]["top1"] <= 1
    print(f"enas micro end to end: {seconds:.0f} s, within budget "
          f"{m['latency']['within_budget']}, top-1 {m['accuracy']['top1']:.3f}")
