"""MnasNet (plugins/mnasnet): the behavioural tests of METHODS.md §6 on tiny spaces, the
verification by measurement, and one end-to-end run of the console script. The reward's own
values (nas2deploy.objectives.mnas_reward) are tested in tests/test_enas.py; here, the method's
use of it."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nas2deploy.counting import count_macs
from nas2deploy.errors import UsageError
from nas2deploy.latency import LatencyModel
from nas2deploy.latency.model import FlopsProxy
from nas2deploy.materialize import materialize
from nas2deploy.method import SearchContext, SearchData, TaskSpec
from nas2deploy.netspec import build_network, signatures, validate_spec
from nas2deploy.objectives import mnas_reward
from nas2deploy_plugins.mnasnet import Choice, MnasNet, MnasNetConfig
from nas2deploy_plugins.mnasnet.controller import Controller, Reinforce
from nas2deploy_plugins.mnasnet.search import Rewarder, child_of
from nas2deploy_plugins.mnasnet.space import Layout, child_from, netspec

TASK = TaskSpec(1, 16, 10)
TINY = {"stem_channels": 8, "blocks": [[1, 8, 1], [1, 8, 2], [1, 12, 2]], "lstm_size": 16,
        "controller_steps": 2, "reward_batch": 16, "derive_samples": 4}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(**over):
    torch.manual_seed(0)
    method = MnasNet({**TINY, **over})
    return method, method.build(TASK)


def _random_data(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3 * n, 1, 16, 16, generator=g)
    y = torch.randint(0, 10, (3 * n,), generator=g)
    return SearchData(x[:n], y[:n], x[n:2 * n], y[n:2 * n], x[2 * n:], y[2 * n:])


def _stir_bn(net, gen_seed=0):
    """Move every BN off its initial statistics so that a wrong copy would show."""
    net.train()
    gen = torch.Generator().manual_seed(gen_seed)
    with torch.no_grad():
        for _ in range(6):
            net(torch.randn(8, 1, 16, 16), child_of(net, net.controller(gen)))
    net.eval()


# --- 1. seeded sampling: deterministic, and every sample valid for the grammar ------------------

def test_seeded_sampling_is_deterministic_and_every_sample_is_valid():
    method, net = tiny()
    layout = net.layout
    space = method.space(net)
    x = torch.randn(2, 1, 16, 16)

    def draw(seed, n=12):
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            return [net.controller(gen) for _ in range(n)]

    a, b, c = draw(7), draw(7), draw(8)
    assert [s.ops for s in a] == [s.ops for s in b]
    assert [s.ops for s in a] != [s.ops for s in c]
    per = len(layout.DECISIONS)
    for s in a + c:
        assert len(s.ops) == per * len(layout.blocks)
        for i, v in enumerate(s.ops):  # every decision index in range of its own list
            assert 0 <= v < len(layout.options[layout.DECISIONS[i % per]])
        assert torch.isfinite(s.log_prob) and s.log_prob <= 0 and s.entropy > 0
        child = child_of(net, s)
        layout.check(child)
        for i, ch in enumerate(child):  # layers = base + a delta, at least 1
            assert ch.layers in {max(1, layout.blocks[i][0] + d) for d in (-1, 0, 1)}
        arch = method._arch(net, child)
        validate_spec(arch.network)
        ids = [n["id"] for n in arch.network["nodes"]]
        for k, node in enumerate(arch.network["nodes"]):  # inputs refer to earlier nodes
            assert all(i == "input" or i in ids[:k] for i in node["inputs"]), node
        with torch.no_grad():
            out = materialize(arch, space.weights(arch)).eval()(x)
        assert out.shape == (2, 10) and torch.isfinite(out).all()
    # the space's own sampler is seeded too, and leaves the supernet alone
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert space.draw(random.Random(3)).network == space.draw(random.Random(3)).network
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_layers_of_a_block_share_the_choice_and_the_skip_follows_shapes():
    method, net = tiny(blocks=[[2, 8, 1], [2, 12, 2]])
    child = (Choice("conv", 5, 0.0, "identity", 3), Choice("mbconv6", 3, 0.0, "none", 2))
    spec = method._arch(net, child).network
    nodes = {n["id"]: n for n in spec["nodes"]}
    # block 0: stem 8 -> 8 at stride 1: every conv layer adds its input
    assert [nodes[f"b0_{j}"]["k"] for j in range(3)] == [5, 5, 5]
    assert all(f"b0_{j}_add" in nodes for j in range(3))
    # block 1: its first layer changes width and stride (one mbconv, no residual possible);
    # the second, without skip, is the same mbconv's parts as plain convs
    assert nodes["b1_0"]["op"] == "mbconv" and nodes["b1_0"]["stride"] == 2
    assert [nodes[i]["op"] for i in ("b1_1_e", "b1_1_d", "b1_1")] == ["conv"] * 3
    assert nodes["b1_1_d"]["groups"] == nodes["b1_1_d"]["c_in"] == 72
    assert "b1_2" not in nodes
    # a regular conv takes no SE; an mbconv with SE keeps its residual
    layout = net.layout
    assert layout.choice(0, [0, 0, 1, 0, 0]).se == 0.0  # conv, se 0.25 -> 0
    assert layout.choice(0, [3, 0, 1, 1, 0]).skip == "identity"  # mbconv6 se, "none"


# --- 2. REINFORCE: a bandit is learnt ------------------------------------------------------------

def test_reinforce_bandit_learns_the_rewarded_op_within_500_updates():
    """Reward 1 only when op k is chosen at block l: the controller's update (default config:
    EMA baseline, entropy bonus, Adam) makes P(k) > 0.9 in <= 500 updates."""
    torch.manual_seed(0)
    cfg = MnasNetConfig.from_dict({"blocks": [[1, 8, 1], [1, 8, 2], [1, 8, 2]]})
    ctrl = Controller(Layout(cfg, TASK), cfg)
    update = Reinforce(ctrl, cfg)
    gen = torch.Generator().manual_seed(0)
    k, block = 2, 1
    at = block * len(Layout.DECISIONS)  # the op decision of that block

    def p_k() -> float:
        g = torch.Generator().manual_seed(123)
        with torch.no_grad():
            return sum(ctrl(g).op_probs[at][k] for _ in range(20)) / 20

    start = p_k()
    assert start < 0.4
    for t in range(1, 501):
        s = ctrl(gen)
        update.step([s], [1.0 if s.ops[at] == k else 0.0])
        if t % 25 == 0 and p_k() > 0.9:
            break
    assert p_k() > 0.9, f"P(k) = {p_k():.3f} after {t} updates (from {start:.3f})"


# --- 3. weight sharing and the space's invariants -----------------------------------------------

def test_two_children_choosing_the_same_block_layer_and_op_share_one_tensor():
    method, net = tiny()
    same = Choice("mbconv3", 3, 0.0, "identity", 1)
    a = (same, Choice("conv", 3, 0.0, "identity", 1), Choice("sep", 5, 0.25, "identity", 2))
    b = (same, Choice("mbconv6", 5, 0.25, "identity", 2), Choice("conv", 3, 0.0, "none", 1))
    used: dict[str, list[int]] = {"a": [], "b": []}
    tag = {"now": "a"}
    module = net.layers["b0_0_mbconv3_k3_se0"]
    hook = module.register_forward_hook(
        lambda m, i, o: used[tag["now"]].append(m.dw[0].weight.data_ptr()))
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,))
    net.train()
    for name, child in (("a", a), ("b", b)):
        tag["now"] = name
        net(x, child)
    hook.remove()
    assert used["a"] and used["a"] == used["b"]
    # a step on child a changes child b's forward (through the shared b0_0 mbconv3 k3 only)
    net.eval()
    with torch.no_grad():
        before = net(x, b).clone()
    opt = torch.optim.SGD(module.parameters(), lr=0.5)
    net.train()
    torch.nn.functional.cross_entropy(net(x, a), y).backward()
    opt.step()
    net.eval()
    with torch.no_grad():
        assert not torch.allclose(net(x, b), before)
    space = method.space(net)
    wa, wb = (space.weights(method._arch(net, c)) for c in (a, b))
    assert torch.equal(wa["nodes.b0_0.dw.0.weight"], wb["nodes.b0_0.dw.0.weight"])
    # one module per (block, layer, op, kernel, SE): both skip ops of an mbconv use it
    c1 = (a[0], Choice("mbconv6", 3, 0.0, "identity", 2), a[2])
    c2 = (a[0], Choice("mbconv6", 3, 0.0, "none", 2), a[2])
    w1, w2 = (space.weights(method._arch(net, c)) for c in (c1, c2))
    assert torch.equal(w1["nodes.b1_1.dw.0.weight"], w2["nodes.b1_1_d.conv.weight"])


def test_materialized_child_equals_the_supernet_and_share_reaches_it():
    method, net = tiny()
    space = method.space(net)
    _stir_bn(net)
    x = torch.randn(3, 1, 16, 16)
    archs = [space.largest(), space.smallest(), *space.covering(),
             *(space.draw(random.Random(s)) for s in range(4))]
    for arch in archs:
        child = child_from(arch.decisions["blocks"])
        sub = materialize(arch, space.weights(arch)).eval()
        assert set(space.weights(arch)) == set(sub.state_dict())  # every tensor inherited
        with torch.no_grad():
            torch.testing.assert_close(sub(x), net(x, child), rtol=0, atol=0)
    # share: the live tensors; the functional call is the child, and its gradients reach the
    # supernet's parameters
    arch = space.draw(random.Random(1))
    child = child_from(arch.decisions["blocks"])
    shared = space.shared(arch)
    live = {id(p) for p in net.parameters()}
    assert all(id(t) in live for t in shared.values() if isinstance(t, torch.nn.Parameter))
    sub = materialize(arch).eval()
    out = torch.func.functional_call(sub, shared, (x,))
    torch.testing.assert_close(out, net(x, child), rtol=0, atol=0)
    net.zero_grad(set_to_none=True)
    out.sum().backward()
    used = [p for k, p in shared.items() if isinstance(p, torch.nn.Parameter)]
    assert used and all(p.grad is not None for p in used)
    assert any(p.grad.abs().sum() > 0 for p in used)
    # the cover holds every op signature any child can have
    covered = {s.key() for a in space.covering() for s in signatures(a.network).values()}
    for s in range(10):
        drawn = space.draw(random.Random(100 + s))
        assert {g.key() for g in signatures(drawn.network).values()} <= covered


# --- 4. the reward as the method uses it --------------------------------------------------------

class NodeCount(LatencyModel):
    name = "nodes"

    def predict(self, spec):
        return 0.1 * len(spec["nodes"])


def test_the_method_rewards_with_the_mnasnet_reward():
    _, net = tiny()
    child = child_of(net, net.controller(greedy=True))
    lat = NodeCount().predict(netspec(net.layout, child))
    soft = Rewarder(net, lat, NodeCount())
    assert soft(0.8, child) == pytest.approx(0.8)  # R(LAT = T) = ACC
    assert soft(0.8, lat=2 * lat) / soft(0.8, lat=lat) == pytest.approx(2 ** -0.07)
    assert soft(0.8, lat=lat / 2) == pytest.approx(mnas_reward(0.8, lat / 2, lat))
    _, net_h = tiny(reward="hard")
    hard = Rewarder(net_h, lat, NodeCount())
    assert hard(0.8, lat=lat / 3) == pytest.approx(0.8)
    assert hard(0.8, lat=2 * lat) == pytest.approx(0.4)
    # no budget, or reward "accuracy": the accuracy
    assert Rewarder(net, None, NodeCount())(0.7, child) == 0.7
    _, net_a = tiny(reward="accuracy")
    assert Rewarder(net_a, lat, NodeCount())(0.7, child) == 0.7


def _flops_proxy(method, net):
    space = method.space(net)
    large, small = materialize(space.largest()), materialize(space.smallest())
    ex = large.example_input(1)
    return FlopsProxy([(count_macs(large, ex), 0.5), (count_macs(small, ex), 0.1)])


def test_top_k_are_measured_and_the_pick_is_by_the_measured_reward():
    method, net = tiny(top_k=3, derive_samples=8)
    lm = _flops_proxy(method, net)
    budget = 0.6 * lm.predict(method.space(net).largest().network)
    calls = []

    def measure(spec, weights=None):  # the target runs the first measured net 3x slower
        calls.append(spec)
        assert weights and set(weights) == set(build_network(spec).state_dict())
        return lm.predict(spec) * (3.0 if len(calls) == 1 else 1.0)

    ctx = SearchContext(data=_random_data(), epochs=1, seed=3, batch_size=16, budget_ms=budget,
                        latency_model=lm, measure=measure)
    searched = method.search(net, ctx)
    d = method.decide(net, searched)
    ver = d.arch.decisions["verified"]
    assert len(calls) == len(ver) == 3
    for r in ver:
        assert r["measured_score"] == pytest.approx(
            mnas_reward(r["val_acc"], r["measured_ms"], budget))
        assert "predicted_ms" in r
    assert d.arch.decisions["measured_ms"] in [r["measured_ms"] for r in ver]
    # the first measured candidate (the best estimate) came out 3x slower: not picked if
    # another lands under the aim
    first = ver[0]
    if first["measured_ms"] > 0.95 * budget and any(r["measured_ms"] <= 0.95 * budget
                                                     for r in ver):
        assert d.arch.decisions["blocks"] != first["blocks"]
    # without a measure: estimates only, nothing verified
    _, net2 = tiny(top_k=3, derive_samples=8)
    ctx2 = SearchContext(data=_random_data(), epochs=1, seed=3, batch_size=16,
                         budget_ms=budget, latency_model=lm)
    d2 = method.decide(net2, method.search(net2, ctx2))
    assert d2.arch.decisions["verified"] == [] and "measured_ms" not in d2.arch.decisions


def test_a_tighter_budget_decides_a_faster_architecture():
    """Same seed, same data: budget 0.4 x the largest's estimate decides an architecture of
    smaller estimated latency than 0.8 x."""
    decided = {}
    for frac in (0.8, 0.4):
        method, net = tiny(derive_samples=16)
        lm = _flops_proxy(method, net)
        budget = frac * lm.predict(method.space(net).largest().network)
        ctx = SearchContext(data=_random_data(), epochs=2, seed=1, batch_size=16,
                            budget_ms=budget, latency_model=lm)
        d = method.decide(net, method.search(net, ctx))
        decided[frac] = (lm.predict(d.arch.network), budget)
        assert d.arch.decisions["predicted_ms"] == pytest.approx(decided[frac][0])
    assert decided[0.4][0] < decided[0.8][0], decided
    assert decided[0.4][0] <= 0.95 * decided[0.4][1]


def test_search_is_deterministic_and_decide_leaves_the_supernet_and_resize_re_picks():
    runs = []
    for _ in range(2):
        method, net = tiny(derive_samples=12)
        lm = _flops_proxy(method, net)
        budget = 0.6 * lm.predict(method.space(net).largest().network)
        ctx = SearchContext(data=_random_data(), epochs=2, seed=5, batch_size=16,
                            budget_ms=budget, latency_model=lm)
        searched = method.search(net, ctx)
        runs.append((method, net, searched, ctx, lm))
    (method, net, searched, ctx, lm), other = runs[0], runs[1]
    assert [r["epoch"] for r in ctx.history] == [0, 1]
    for row in ctx.history:
        assert {"loss", "val_acc", "reward", "baseline", "entropy", "predicted_ms"} <= set(row)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    first = method.decide(net, searched)
    assert first.arch.to_dict() == method.decide(net, searched).arch.to_dict()
    assert first.arch.to_dict() == other[0].decide(other[1], other[2]).arch.to_dict()
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    dec = first.arch.decisions
    assert dec["reward"] == "soft" and dec["target_ms"] == budget
    assert dec["score"] == pytest.approx(mnas_reward(dec["val_acc"], dec["predicted_ms"], budget))
    sub = materialize(first.arch, first.weights)
    assert set(first.weights) == set(sub.state_dict())
    # resize: a faster candidate for a factor < 1, a slower one for > 1 (or None: none exists)
    assert first.levers == ["resize"]
    here = dec["predicted_ms"]
    faster = first.resize(0.6)
    lats = [r["predicted_ms"] for r in searched.candidates]
    if any(lat <= 0.6 * here for lat in lats):
        assert faster is not None and faster.arch.decisions["predicted_ms"] <= 0.6 * here
        assert set(faster.weights) == set(materialize(faster.arch).state_dict())
        assert faster.resize is not None
    slower = first.resize(1.6)
    if slower is not None:
        assert here < slower.arch.decisions["predicted_ms"] <= 1.6 * here
    assert first.resize(1.0) is None
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    # before any search: the controller's most likely child, no levers
    greedy = method.decide(net, None)
    assert greedy.levers == [] and greedy.arch.network == method.decide(net, None).arch.network


class _Stop(Exception):
    pass


def test_search_resumes_from_its_checkpoint_to_the_same_decision(tmp_path):
    """Stopped right after its epoch-1 checkpoint and resumed in a fresh supernet, the search
    ends with the same weights, controller and decision as one never stopped."""
    from nas2deploy.checkpoint import Loop

    class Stopping(Loop):
        def save(self, step, tree):
            super().save(step, tree)
            if step == 1 and self.folder.name == "stopped":
                raise _Stop

    def run(folder):
        method, net = tiny()
        lm = _flops_proxy(method, net)
        ctx = SearchContext(data=_random_data(), epochs=2, seed=2, batch_size=16,
                            budget_ms=0.5 * lm.predict(method.space(net).largest().network),
                            latency_model=lm, checkpoints=Stopping(tmp_path / folder))
        searched = method.search(net, ctx)
        return method.decide(net, searched).arch.to_dict(), net, ctx

    whole, net_w, _ = run("whole")
    with pytest.raises(_Stop):
        run("stopped")
    (tmp_path / "stopped").rename(tmp_path / "resumed")
    resumed, net_r, ctx = run("resumed")
    assert ctx.resumed_after == 1 and [r["epoch"] for r in ctx.history] == [0, 1]
    assert resumed == whole
    for (k, v), (_, w) in zip(net_w.state_dict().items(), net_r.state_dict().items()):
        assert torch.equal(v, w), k


@pytest.mark.parametrize("options,needle", [
    ({"ops": ["conv7x7"]}, "ops"),
    ({"ops": []}, "ops"),
    ({"kernels": [4]}, "kernels"),
    ({"se_ratios": [1.5]}, "se_ratios"),
    ({"skips": ["maxpool"]}, "skips"),
    ({"layer_deltas": [0, 0]}, "twice"),
    ({"blocks": [[1, 16, 3]]}, "stride"),
    ({"blocks": []}, "blocks"),
    ({"blocks": [[0, 16, 1]]}, "layers"),
    ({"top_k": 0}, "top_k"),
    ({"landing_band": 1.5}, "landing_band"),
    ({"baseline_decay": 1.0}, "baseline_decay"),
    ({"controller_lr": float("nan")}, "controller_lr"),
    ({"reward": "latency"}, "reward"),
    ({"lstm": 3}, "unknown option"),
])
def test_bad_options_are_one_line_usage_errors(options, needle):
    with pytest.raises(UsageError, match=needle) as err:
        MnasNet(options)
    assert "\n" not in str(err.value)


# --- end to end: the console script on the default data ------------------------------------------

CONSOLE = Path(sys.executable).with_name("nas2deploy")


@pytest.mark.slow
def test_search_and_export_with_mnasnet_end_to_end(tmp_path):
    out = tmp_path / "bundle"
    t = time.perf_counter()
    res = subprocess.run([str(CONSOLE), "search-and-export", "--method", "mnasnet", "--quiet",
                          "--search-epochs", "2", "--retrain-epochs", "2", "--input-size", "16",
                          "--out", str(out)],
                         capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - t
    assert res.returncode in (0, 3), res.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    assert res.returncode == (3 if m["latency"]["within_budget"] is False else 0)
    arch = json.loads((out / "architecture.json").read_text())
    assert arch["method"] == "mnasnet" and len(arch["decisions"]["blocks"]) == 5
    for r in arch["decisions"]["verified"]:  # measured on the target where it can be timed
        assert r["measured_ms"] > 0 and r["predicted_ms"] > 0
    assert 0 <= m["accuracy"]["top1"] <= 1
    print(f"mnasnet end to end: {seconds:.0f} s, within budget {m['latency']['within_budget']}, "
          f"top-1 {m['accuracy']['top1']:.3f}")
