"""ENAS (plugins/enas) and the MnasNet reward (nas2deploy.objectives): the behavioural tests of
METHODS.md §6 on tiny spaces, plus one end-to-end run of the console script."""

from __future__ import annotations

import json
import math
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
from nas2deploy.materialize import materialize
from nas2deploy.method import SearchContext, SearchData, TaskSpec
from nas2deploy.netspec import build_network, validate_spec
from nas2deploy.objectives import HARD, SOFT, ObjectiveError, mnas_reward
from nas2deploy_plugins.enas import ENAS, Baseline, Child, Controller, ENASConfig, Reinforce
from nas2deploy_plugins.enas.config import OPS
from nas2deploy_plugins.enas.method import RESIZE_BAND
from nas2deploy_plugins.enas.search import EXTRA_DRAWS

TASK = TaskSpec(1, 16, 10)
TINY = {"nodes": 4, "width": 4, "lstm_size": 16}


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


def child_of(net, sample) -> Child:
    return Child.make([net.layout.ops[o] for o in sample.ops], sample.skips)


# --- 1. seeded sampling: deterministic, and every sample valid for the grammar ------------------

def test_seeded_sampling_is_deterministic_and_every_sample_is_valid():
    method, net = tiny(nodes=5, pool_layers=[1, 3])
    x = torch.randn(2, 1, 16, 16)

    def draw(seed, n=12):
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            return [net.controller(gen) for _ in range(n)]

    a, b, c = draw(7), draw(7), draw(8)
    assert [(s.ops, s.skips) for s in a] == [(s.ops, s.skips) for s in b]
    assert [(s.ops, s.skips) for s in a] != [(s.ops, s.skips) for s in c]
    space = method.space(net)
    for s in a + c:
        assert len(s.ops) == 5 and all(0 <= o < len(OPS) for o in s.ops)  # op ids in range
        # node i's skip row names exactly the i earlier nodes, each 0 or 1
        assert [len(r) for r in s.skips] == list(range(5))
        assert all(bit in (0, 1) for r in s.skips for bit in r)
        assert torch.isfinite(s.log_prob) and s.log_prob <= 0 and s.entropy > 0
        arch = method._arch(net, child_of(net, s))
        validate_spec(arch.network)
        ids = [n["id"] for n in arch.network["nodes"]]
        for k, node in enumerate(arch.network["nodes"]):  # inputs refer to earlier nodes
            assert all(i == "input" or i in ids[:k] for i in node["inputs"]), node
        with torch.no_grad():
            out = materialize(arch, space.weights(arch)).eval()(x)
        assert out.shape == (2, 10) and torch.isfinite(out).all()
    # the space's own random sampler is seeded too, valid, and leaves the supernet alone
    before = {k: v.clone() for k, v in net.state_dict().items()}
    s1 = [space.draw(random.Random(3)).network for _ in range(2)]
    assert s1[0] == s1[1] == space.draw(random.Random(3)).network
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_supernet_and_materialized_child_compute_the_same_function():
    """The inherited weights are the supernet's: the plain subnet equals the supernet's forward
    for that child (eval mode), with and without skips across pooling layers."""
    method, net = tiny(nodes=5, pool_layers=[1, 3])
    space = method.space(net)
    # move every BN off its initial statistics so that a wrong copy would show
    net.train()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(6):
            net(torch.randn(8, 1, 16, 16), child_of(net, net.controller(gen)))
    net.eval()
    x = torch.randn(3, 1, 16, 16)
    for arch in (space.largest(), space.smallest(), *space.covering(),
                 space.draw(random.Random(1))):
        child = Child.make(arch.decisions["ops"], arch.decisions["skips"])
        sub = materialize(arch, space.weights(arch)).eval()
        assert set(space.weights(arch)) == set(sub.state_dict())  # every tensor inherited
        with torch.no_grad():
            torch.testing.assert_close(sub(x), net(x, child), rtol=0, atol=0)


def test_shared_weights_are_the_supernets_live_tensors():
    """``share``: functional_call on the materialized net with the supernet's live tensors
    computes what the net loaded with ``inherit`` computes, and its gradients reach the
    supernet's parameters."""
    from torch.func import functional_call

    method, net = tiny(nodes=5, pool_layers=[1, 3])
    space = method.space(net)
    assert "share" in space.capabilities
    net.train()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(4):
            net(torch.randn(8, 1, 16, 16), child_of(net, net.controller(gen)))
    arch = space.draw(random.Random(2))
    sub = materialize(arch)
    shared = space.shared(arch)
    assert set(shared) == set(sub.state_dict())
    live = {id(t) for t in net.state_dict(keep_vars=True).values()}
    assert all(id(t) in live for t in shared.values())
    x = torch.randn(3, 1, 16, 16)
    loaded = materialize(arch, space.weights(arch)).eval()
    sub.eval()
    with torch.no_grad():
        torch.testing.assert_close(functional_call(sub, shared, (x,)), loaded(x), rtol=0, atol=0)
    net.zero_grad(set_to_none=True)
    sub.train()
    functional_call(sub, shared, (x,)).sum().backward()
    params = [t for t in shared.values() if t.requires_grad]
    assert params and all(t.grad is not None for t in params)


# --- 2. REINFORCE: a bandit is learnt; the baseline lowers the gradient variance -----------------

def test_reinforce_bandit_learns_the_rewarded_op_within_500_updates():
    """Reward 1 only when op k is chosen at node l: the controller's own update (default
    config: EMA baseline, entropy bonus, skip KL, Adam) makes P(k) > 0.9 in <= 500 updates."""
    torch.manual_seed(0)
    cfg = ENASConfig.from_dict({"nodes": 3})
    ctrl = Controller(len(OPS), 3, cfg)
    update = Reinforce(ctrl, cfg)
    gen = torch.Generator().manual_seed(0)
    k, layer = 4, 1

    def p_k() -> float:  # P(op k at node l), averaged over the earlier decisions' samples
        g = torch.Generator().manual_seed(123)
        with torch.no_grad():
            return sum(ctrl(g).op_probs[layer][k] for _ in range(20)) / 20

    start = p_k()
    assert start < 0.4
    for t in range(1, 501):
        s = ctrl(gen)
        update.step([s], [1.0 if s.ops[layer] == k else 0.0])
        if t % 25 == 0 and p_k() > 0.9:
            break
    assert p_k() > 0.9, f"P(k) = {p_k():.3f} after {t} updates (from {start:.3f})"


def _gradient_variance(reward, n=400):
    """Total variance over n samples of the REINFORCE estimate (R - b)·∇log π, with the EMA
    baseline the search uses and with none, for one fixed controller."""
    torch.manual_seed(0)
    cfg = ENASConfig.from_dict({"nodes": 3})
    ctrl = Controller(len(OPS), 3, cfg)
    params = list(ctrl.parameters())
    baseline = Baseline(cfg.baseline_decay)
    gen = torch.Generator().manual_seed(0)
    plain, based = [], []
    for _ in range(n):
        s = ctrl(gen)
        grads = torch.autograd.grad(s.log_prob, params, allow_unused=True)
        score = torch.cat([torch.zeros(p.numel()) if g is None else g.flatten()
                           for p, g in zip(params, grads)])
        r = reward(s)
        b = baseline.update(r)
        plain.append(r * score)
        based.append((r - b) * score)
    return float(torch.stack(plain).var(0).sum()), float(torch.stack(based).var(0).sum())


def test_the_baseline_lowers_the_gradient_variance():
    k, layer = 4, 1
    # the bandit's reward (1 for op k, else 0): theory says by a factor 1 - P(k) (~0.83 here)
    without, with_b = _gradient_variance(lambda s: float(s.ops[layer] == k))
    assert with_b < 0.95 * without, (with_b, without)
    # accuracy-like rewards (0.8 or 0.9, as a child's validation accuracy): by orders of magnitude
    without, with_b = _gradient_variance(lambda s: 0.9 if s.ops[layer] == k else 0.8)
    assert with_b < 0.05 * without, (with_b, without)


# --- 3. weight sharing: one tensor per (position, op) -------------------------------------------

def test_two_children_choosing_the_same_position_and_op_share_one_tensor():
    method, net = tiny(nodes=3, pool_layers=[])
    a = Child.make(["conv3x3", "conv3x3", "maxpool"], [[], [0], [1, 1]])
    b = Child.make(["sep5x5", "conv3x3", "avgpool"], [[], [1], [0, 0]])
    used: dict[str, list[int]] = {"a": [], "b": []}
    tag = {"now": "a"}
    module = net.choices["n1_conv3x3"]
    hook = module.register_forward_hook(
        lambda m, i, o: used[tag["now"]].append(m.conv.weight.data_ptr()))
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,))
    net.train()
    for name, child in (("a", a), ("b", b)):
        tag["now"] = name
        net(x, child)
    hook.remove()
    assert used["a"] and used["a"] == used["b"]  # the same storage in both children
    # a step on child a changes child b's forward (through the shared n1 conv3x3 only)
    net.eval()
    with torch.no_grad():
        before = net(x, b).clone()
    opt = torch.optim.SGD(net.choices["n1_conv3x3"].parameters(), lr=0.5)
    net.train()
    torch.nn.functional.cross_entropy(net(x, a), y).backward()
    opt.step()
    net.eval()
    with torch.no_grad():
        assert not torch.allclose(net(x, b), before)
    # and both children inherit the same values for it
    wa = method.space(net).weights(method._arch(net, a))
    wb = method.space(net).weights(method._arch(net, b))
    assert torch.equal(wa["nodes.n1.conv.weight"], wb["nodes.n1.conv.weight"])
    assert not any(k.startswith("nodes.n0.dw") for k in wa)  # a's n0 is a conv, not a sep


# --- 4. the MnasNet reward -----------------------------------------------------------------------

def test_mnas_reward_values():
    acc, t = 0.8, 10.0
    assert mnas_reward(acc, t, t, *SOFT) == pytest.approx(acc)
    assert mnas_reward(acc, t, t, *HARD) == pytest.approx(acc)
    lats = [1.0, 2.0, 5.0, 10.0, 20.0, 40.0]
    soft = [mnas_reward(acc, lat, t, *SOFT) for lat in lats]
    assert all(a > b for a, b in zip(soft, soft[1:]))  # strictly decreasing in LAT
    for lat in lats:  # doubling LAT multiplies R by 2^-0.07 ≈ 0.953, either side of T
        assert mnas_reward(acc, 2 * lat, t, *SOFT) / mnas_reward(acc, lat, t, *SOFT) == \
            pytest.approx(2 ** -0.07)
    assert 2 ** -0.07 == pytest.approx(0.9526, abs=1e-4)
    # hard: ACC at or under T, ACC·T/LAT above it
    for lat in (1.0, 5.0, 10.0):
        assert mnas_reward(acc, lat, t, *HARD) == pytest.approx(acc)
    for lat in (12.0, 20.0, 100.0):
        assert mnas_reward(acc, lat, t, *HARD) == pytest.approx(acc * t / lat)
    assert SOFT == (-0.07, -0.07) and HARD == (0.0, -1.0)


@pytest.mark.parametrize("lat,target", [(0.0, 1.0), (-1.0, 1.0), (1.0, 0.0), (1.0, -2.0),
                                        (float("nan"), 1.0), (1.0, float("inf"))])
def test_mnas_reward_refuses_non_positive_latency_or_target(lat, target):
    with pytest.raises(ObjectiveError, match="must be a finite number > 0") as err:
        mnas_reward(0.5, lat, target)
    assert isinstance(err.value, ValueError) and isinstance(err.value, UsageError)
    assert "\n" not in str(err.value)


# --- search and decide ---------------------------------------------------------------------------

class NodeCount(LatencyModel):
    """A stand-in latency model: 0.1 ms per node of the spec."""

    name = "nodes"

    def predict(self, spec):
        return 0.1 * len(spec["nodes"])


def _random_data(n=48):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3 * n, 1, 16, 16, generator=g)
    y = torch.randint(0, 10, (3 * n,), generator=g)
    return SearchData(x[:n], y[:n], x[n:2 * n], y[n:2 * n], x[2 * n:], y[2 * n:])


def test_search_records_history_and_decide_is_deterministic_and_leaves_the_supernet():
    method, net = tiny(controller_steps=3, reward_batch=16, derive_samples=4)
    ctx = SearchContext(data=_random_data(), epochs=2, seed=5, batch_size=16, budget_ms=1.0,
                        latency_model=NodeCount())
    ctrl_before = {k: v.clone() for k, v in net.controller.state_dict().items()}
    searched = method.search(net, ctx)
    assert [r["epoch"] for r in ctx.history] == [0, 1]
    for row in ctx.history:
        assert {"phase", "loss", "val_acc", "reward", "baseline", "entropy", "skip_rate",
                "predicted_ms"} <= set(row)
        assert all(math.isfinite(row[k]) for k in ("loss", "reward", "baseline", "entropy"))
    assert any(not torch.equal(v, net.controller.state_dict()[k]) for k, v in ctrl_before.items())

    state = {k: v.clone() for k, v in net.state_dict().items()}
    first = method.decide(net, searched)
    second = method.decide(net, searched)
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items()), \
        "decide() changed the supernet"
    assert first.arch.to_dict() == second.arch.to_dict()
    dec = first.arch.decisions
    assert dec["reward"] == "soft" and dec["target_ms"] == 1.0
    fits = [r["within_budget"] for r in dec["samples"]]
    # 4 children, then more only until one fits the budget
    assert len(fits) == 4 or (4 < len(fits) <= 4 * EXTRA_DRAWS and fits[-1] and not any(fits[4:-1])
                              and not any(fits[:4]))
    best = max(dec["samples"], key=lambda r: r["score"])
    assert dec["score"] == best["score"] and dec["ops"] == best["ops"]
    for r in dec["samples"]:  # scored by the MnasNet reward on the latency model's estimate
        assert r["score"] == pytest.approx(mnas_reward(r["val_acc"], r["predicted_ms"], 1.0, *SOFT))
    net_ = materialize(first.arch, first.weights)
    assert set(first.weights) == set(net_.state_dict())
    # before any search: the controller's most likely child, still without touching anything
    greedy = method.decide(net, None)
    assert greedy.arch.network == method.decide(net, None).arch.network
    build_network(greedy.arch.network)


@pytest.mark.parametrize("budget_ms, drawn", [(100.0, 3), (0.01, 3 * EXTRA_DRAWS)])
def test_derive_draws_more_children_when_none_fits_the_budget(budget_ms, drawn):
    method, net = tiny(controller_steps=1, reward_batch=16, derive_samples=3)
    ctx = SearchContext(data=_random_data(), epochs=1, seed=1, batch_size=16,
                        budget_ms=budget_ms, latency_model=NodeCount())
    samples = method.decide(net, method.search(net, ctx)).arch.decisions["samples"]
    assert len(samples) == drawn
    assert all(r["within_budget"] for r in samples) == (budget_ms == 100.0)


def test_resize_re_picks_the_best_scored_child_that_lands_under_the_latency_asked():
    class Macs(LatencyModel):
        name = "macs"

        def predict(self, spec):
            net = build_network(spec)
            return count_macs(net, net.example_input(1)) / 1e6

    method, net = tiny(controller_steps=2, reward_batch=16, derive_samples=16)
    ctx = SearchContext(data=_random_data(), epochs=1, seed=2, batch_size=16, budget_ms=100.0,
                        latency_model=Macs())
    searched = method.search(net, ctx)
    decision = method.decide(net, searched)
    here = decision.arch.decisions["predicted_ms"]
    rows = decision.arch.decisions["samples"]
    others = sorted({r["predicted_ms"] for r in rows} - {here})
    assert others, [r["predicted_ms"] for r in rows]
    state = {k: v.clone() for k, v in net.state_dict().items()}
    moved = 0
    for ms in others:
        ceiling = ms * 1.001
        band = [r for r in rows if RESIZE_BAND * ceiling <= r["predicted_ms"] <= ceiling]
        want = (max(band, key=lambda r: r["score"]) if band else
                max((r for r in rows if r["predicted_ms"] <= ceiling),
                    key=lambda r: r["predicted_ms"]))
        picked = decision.resize(ceiling / here)
        if want["ops"] == decision.arch.decisions["ops"] and \
                want["skips"] == decision.arch.decisions["skips"]:
            assert picked is None
            continue
        got = picked.arch.decisions
        assert (got["ops"], got["skips"], got["score"]) == (want["ops"], want["skips"],
                                                            want["score"])
        materialize(picked.arch, picked.weights)
        assert "re-picked" in got["note"] and picked.levers == ["resize"]
        moved += 1
    assert moved > 0
    # none under what is asked: the fastest, when faster than the decision
    fastest = min(r["predicted_ms"] for r in rows)
    tight = decision.resize(0.5 * fastest / here)
    assert (tight is None) == (fastest == here)
    if tight is not None:
        assert tight.arch.decisions["predicted_ms"] == fastest
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize("options,needle", [
    ({"ops": ["conv7x7"]}, "unknown op"),
    ({"ops": []}, "ops"),
    ({"pool_layers": [5]}, "pool_layers"),
    ({"pool_layers": [2, 1]}, "pool_layers"),
    ({"space": "nano"}, "space"),
    ({"stem_stride": 3}, "stem_stride"),
    ({"nodes": 0}, "nodes"),
    ({"skip_target": 1.0}, "skip_target"),
    ({"baseline_decay": 1.0}, "baseline_decay"),
    ({"controller_lr": float("nan")}, "controller_lr"),
    ({"reward": "latency"}, "reward"),
    ({"lstm": 3}, "unknown option"),
])
def test_bad_options_are_one_line_usage_errors(options, needle):
    with pytest.raises(UsageError, match=needle) as err:
        ENAS(options)
    assert "\n" not in str(err.value)


# --- end to end: the console script on the default data ------------------------------------------

CONSOLE = Path(sys.executable).with_name("nas2deploy")


@pytest.mark.slow
def test_search_and_export_with_enas_end_to_end(tmp_path):
    """The whole pipeline through the console script on the default data, at a shorter search
    and retrain than the defaults (the default run's time is a figure for the note, not a
    test)."""
    out = tmp_path / "bundle"
    t = time.perf_counter()
    res = subprocess.run([str(CONSOLE), "search-and-export", "--method", "enas", "--quiet",
                          "--search-epochs", "2", "--retrain-epochs", "2", "--input-size", "16",
                          "--out", str(out)],
                         capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - t
    assert res.returncode in (0, 3), res.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    assert res.returncode == (3 if m["latency"]["within_budget"] is False else 0)
    arch = json.loads((out / "architecture.json").read_text())
    assert arch["method"] == "enas" and arch["decisions"]["space"] == "macro"
    assert len(arch["decisions"]["samples"]) == ENASConfig().derive_samples
    assert 0 <= m["accuracy"]["top1"] <= 1
    print(f"enas end to end: {seconds:.0f} s, within budget {m['latency']['within_budget']}, "
          f"top-1 {m['accuracy']['top1']:.3f}")
