"""NAS-RL (plugins/nasrl): the behavioural tests of METHODS.md §6 that apply to a method without
weight sharing, on tiny spaces, plus one end-to-end run of the console script."""

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
from nas2deploy.latency.model import FlopsProxy
from nas2deploy.materialize import materialize
from nas2deploy.method import SearchContext, SearchData, TaskSpec
from nas2deploy.netspec import validate_spec
from nas2deploy.objectives import SOFT, mnas_reward
from nas2deploy_plugins.enas.controller import Baseline, Reinforce, Sample
from nas2deploy_plugins.nasrl import NASRL, Child, Controller, NASRLConfig
from nas2deploy_plugins.nasrl import search as nasrl_search

TASK = TaskSpec(1, 16, 10)
TINY = {"layers": 3, "kernels": [1, 3], "filters": [4, 8], "stem_width": 4, "stem_stride": 1,
        "lstm_size": 16, "controller_steps": 2, "child_steps": 2, "child_batch": 16,
        "reward_images": 32}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(**over):
    torch.manual_seed(0)
    method = NASRL({**TINY, **over})
    return method, method.build(TASK)


def _random_data(n=48):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3 * n, 1, 16, 16, generator=g)
    y = torch.randint(0, 10, (3 * n,), generator=g)
    return SearchData(x[:n], y[:n], x[n:2 * n], y[n:2 * n], x[2 * n:], y[2 * n:])


# --- 1. seeded sampling: deterministic, and every sample valid for the grammar ------------------

@pytest.mark.parametrize("over", [{"layers": 5, "reduce_layers": [1, 3]},
                                  {"layers": 5, "search_strides": True}])
def test_seeded_sampling_is_deterministic_and_every_sample_is_valid(over):
    method, net = tiny(**over)
    L = net.layout
    x = torch.randn(2, 1, 16, 16)

    def draw(seed, n=12):
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            return [net.controller(gen) for _ in range(n)]

    def key(s):
        return (s.kernels, s.filters, s.strides, s.skips)

    a, b, c = draw(7), draw(7), draw(8)
    assert [key(s) for s in a] == [key(s) for s in b]
    assert [key(s) for s in a] != [key(s) for s in c]
    space = method.space(net)
    for s in a + c:
        assert isinstance(s, Sample)  # ENAS's Sample: ENAS's REINFORCE updates this controller
        assert len(s.kernels) == len(s.filters) == len(s.strides) == 5
        assert all(0 <= k < len(L.kernels) for k in s.kernels)
        assert all(0 <= f < len(L.filters) for f in s.filters)
        assert all(0 <= v < len(L.strides) for v in s.strides)
        # layer i's skip row names exactly the i states before its input, each 0 or 1
        assert [len(r) for r in s.skips] == list(range(5))
        assert all(bit in (0, 1) for r in s.skips for bit in r)
        assert torch.isfinite(s.log_prob) and s.log_prob <= 0 and s.entropy > 0
        child = L.child_of(s)
        arch = method._arch(net, child)
        validate_spec(arch.network)
        ids = [n["id"] for n in arch.network["nodes"]]
        for k, node in enumerate(arch.network["nodes"]):  # inputs refer to earlier nodes
            assert all(i == "input" or i in ids[:k] for i in node["inputs"]), node
        for i, row in enumerate(child.skips):  # a skip bit j feeds layer i from state j
            node = next(n for n in arch.network["nodes"] if n["id"] == f"l{i}")
            if any(row):
                summed = next(n for n in arch.network["nodes"] if n["id"] == f"l{i}_in")
                assert len(summed["inputs"]) == 1 + sum(row)
                assert node["inputs"] == [f"l{i}_in"]
            assert node["k"] == child.kernels[i] and node["c_out"] == child.filters[i]
        # teacher forcing scores the same decisions with the same log-probability
        again = net.controller(given=L.ids_of(child))
        assert torch.allclose(again.log_prob, s.log_prob)
        with torch.no_grad():
            out = materialize(arch).eval()(x)
        assert out.shape == (2, 10) and torch.isfinite(out).all()
    # the space's own random sampler is seeded too, valid, and leaves the controller alone
    before = {k: v.clone() for k, v in net.state_dict().items()}
    s1 = [space.draw(random.Random(3)).network for _ in range(2)]
    assert s1[0] == s1[1]
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    for arch in (space.largest(), space.smallest(), *space.covering()):
        validate_spec(arch.network)


def test_the_cover_holds_every_kernel_and_filter_count():
    method, net = tiny()
    convs = {(n["k"], n["c_out"]) for a in method.space(net).covering()
             for n in a.network["nodes"] if n["id"].startswith("l") and n["op"] == "conv"
             and "_from" not in n["id"]}
    assert convs == {(k, f) for k in (1, 3) for f in (4, 8)}


# --- 2. REINFORCE: a bandit is learnt; the baseline lowers the gradient variance -----------------

def test_reinforce_bandit_learns_the_rewarded_option_within_500_updates():
    """Reward 1 only when kernel option k is chosen at layer l: ENAS's update (EMA baseline,
    entropy bonus, Adam) on this controller makes P(k) > 0.9 in <= 500 updates."""
    torch.manual_seed(0)
    cfg = NASRLConfig.from_dict({"layers": 3})
    ctrl = Controller({"kernel": 4, "filters": 4, "stride": 1}, 3, cfg)
    update = Reinforce(ctrl, cfg)
    gen = torch.Generator().manual_seed(0)
    k, layer = 2, 1

    def p_k() -> float:  # P(kernel k at layer l), averaged over the earlier decisions' samples
        g = torch.Generator().manual_seed(123)
        with torch.no_grad():
            return sum(ctrl(g).probs[layer]["kernel"][k] for _ in range(20)) / 20

    start = p_k()
    assert start < 0.4
    for t in range(1, 501):
        s = ctrl(gen)
        update.step([s], [1.0 if s.kernels[layer] == k else 0.0])
        if t % 25 == 0 and p_k() > 0.9:
            break
    assert p_k() > 0.9, f"P(k) = {p_k():.3f} after {t} updates (from {start:.3f})"


def _gradient_variance(reward, n=400):
    """Total variance over n samples of the REINFORCE estimate (R - b)·∇log π, with the EMA
    baseline the search uses and with none, for one fixed controller."""
    torch.manual_seed(0)
    cfg = NASRLConfig.from_dict({"layers": 3})
    ctrl = Controller({"kernel": 4, "filters": 4, "stride": 1}, 3, cfg)
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
    k, layer = 2, 1
    without, with_b = _gradient_variance(lambda s: float(s.kernels[layer] == k))
    assert with_b < 0.95 * without, (with_b, without)
    # accuracy-like rewards (a child's held-out accuracy): by orders of magnitude
    without, with_b = _gradient_variance(lambda s: 0.9 if s.kernels[layer] == k else 0.8)
    assert with_b < 0.05 * without, (with_b, without)


# --- 3. no weight sharing: every child trained from scratch -------------------------------------

def test_every_child_is_built_and_trained_from_scratch(monkeypatch):
    method, net = tiny(controller_steps=4)
    built = []

    def recording(layout, child, init_seed):
        child_net = real(layout, child, init_seed)
        built.append((child, child_net, {k: v.clone() for k, v in child_net.state_dict().items()}))
        return child_net

    real = nasrl_search.new_child
    monkeypatch.setattr(nasrl_search, "new_child", recording)
    ctx = SearchContext(data=_random_data(), epochs=2, seed=3, batch_size=16)
    record = method.search(net, ctx)
    assert len(built) == len(record.rows) >= 2
    assert len({c for c, _, _ in built}) == len(built)  # a child sampled again is not retrained
    # no tensor of one child is a tensor of another
    storages = [{t.untyped_storage().data_ptr() for t in n.state_dict().values()}
                for _, n, _ in built]
    for i in range(len(storages)):
        for j in range(i + 1, len(storages)):
            assert not storages[i] & storages[j], (i, j)
    for child, child_net, init in built:
        trained = child_net.state_dict()
        # it was trained (its weights moved) ...
        assert any(not torch.equal(init[k], trained[k]) for k in init
                   if init[k].is_floating_point())
        # ... from a fresh initialisation: the running statistics at their defaults
        for k, v in init.items():
            if k.endswith("running_mean"):
                assert torch.equal(v, torch.zeros_like(v))
            if k.endswith("running_var"):
                assert torch.equal(v, torch.ones_like(v))


# --- search, decide, budget ---------------------------------------------------------------------

def _proxy(method, net) -> FlopsProxy:
    space = method.space(net)
    large, small = materialize(space.largest()), materialize(space.smallest())
    ex = large.example_input(1)
    return FlopsProxy([(count_macs(large, ex), 0.5), (count_macs(small, ex), 0.1)])


def test_search_records_history_and_decide_is_deterministic():
    method, net = tiny()
    lm = _proxy(method, net)
    budget = 0.6 * lm.predict(method.space(net).largest().network)
    ctx = SearchContext(data=_random_data(), epochs=2, seed=5, batch_size=16, budget_ms=budget,
                        latency_model=lm)
    ctrl_before = {k: v.clone() for k, v in net.state_dict().items()}
    record = method.search(net, ctx)
    assert [r["epoch"] for r in ctx.history] == [0, 1]
    for row in ctx.history:
        assert {"phase", "loss", "val_acc", "reward", "baseline", "entropy", "skip_rate",
                "predicted_ms"} <= set(row)
        assert all(math.isfinite(row[k]) for k in ("reward", "baseline", "entropy"))
    assert any(not torch.equal(v, net.state_dict()[k]) for k, v in ctrl_before.items())
    for r in record.rows:  # the MnasNet reward on the latency model's estimate
        assert r["reward"] == pytest.approx(mnas_reward(r["val_acc"], r["predicted_ms"], budget,
                                                        *SOFT))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    first, second = method.decide(net, record), method.decide(net, record)
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert first.arch.to_dict() == second.arch.to_dict()
    dec = first.arch.decisions
    within = [r for r in record.rows if r["predicted_ms"] <= budget]
    assert within and dec["predicted_ms"] <= budget
    # the decided child is tied (within decide_band standard errors) with the best-rewarded one
    # within the budget, and no tied child has a larger estimate
    top = max(within, key=lambda r: r["reward"])
    floor = top["val_acc"] - method.config.decide_band * math.sqrt(
        top["val_acc"] * (1 - top["val_acc"]) / top["images"])
    assert dec["val_acc"] >= floor
    assert dec["predicted_ms"] == max(r["predicted_ms"] for r in within if r["val_acc"] >= floor)
    assert len(dec["samples"]) == len(record.rows)
    assert first.weights == {}  # retrained from scratch, as in the paper
    # the resize lever re-picks among the trained children by the estimate
    smaller = first.resize(0.5) if first.resize is not None else None
    pick = record.child(record.pick(0.5 * dec["predicted_ms"]))
    if smaller is not None:
        assert smaller.arch.network == method._arch(net, pick).network
        assert smaller.arch.decisions["predicted_ms"] < dec["predicted_ms"]
    else:
        assert pick == record.child(record.best) or \
            record.rewarder.latency(pick) >= dec["predicted_ms"]
    # before any search: the controller's most likely child, without weights
    fresh_method, fresh = tiny()
    greedy = fresh_method.decide(fresh, None)
    assert greedy.weights == {} and greedy.arch.network == fresh_method.decide(fresh).arch.network


def test_a_tighter_budget_decides_a_faster_architecture(monkeypatch):
    """Same seed and data; budgets 0.4 and 0.8 x the largest net's estimate (a FLOPs proxy
    fitted on the largest and smallest nets): the tighter one decides a child the latency model
    estimates faster, and within its budget.

    Children are trained for real, but a few steps on a tiny task rank them by noise; their
    accuracy is replaced by one that grows with capacity, as it does with training enough to
    tell them apart. What is tested is how the budget enters the reward and the decision (under
    the soft MnasNet reward a budget scales every reward alike, so it must enter the decision
    for a tighter one to change anything)."""
    def by_capacity(net, batches, compute=None):
        return 0.2 + 0.7 * math.tanh(sum(p.numel() for p in net.parameters()) / 2000)

    monkeypatch.setattr(nasrl_search, "accuracy", by_capacity)
    decided = {}
    for frac in (0.4, 0.8):
        method, net = tiny(controller_steps=6, kernels=[1, 3, 5], filters=[4, 8, 16])
        lm = _proxy(method, net)
        budget = frac * lm.predict(method.space(net).largest().network)
        ctx = SearchContext(data=_random_data(), epochs=2, seed=0, batch_size=16,
                            budget_ms=budget, latency_model=lm)
        d = method.decide(net, method.search(net, ctx))
        decided[frac] = (lm.predict(d.arch.network), budget)
    (tight, t_budget), (loose, l_budget) = decided[0.4], decided[0.8]
    assert tight <= t_budget and loose <= l_budget
    assert tight < loose, decided


def test_rewards_accuracy_or_the_mnas_reward_and_the_papers_cube():
    method, net = tiny(accuracy_power=3)
    child = net.layout.extreme("largest")
    assert nasrl_search.Rewarder(net.layout, None, None)(0.5, child) == pytest.approx(0.125)
    lm = _proxy(method, net)
    lat = lm.predict(method.space(net).largest().network)
    hard = nasrl_search.Rewarder(tiny(reward="hard")[1].layout, lat / 2, lm)
    assert hard(0.5, child) == pytest.approx(0.5 * 0.5)  # ACC · T/LAT above the target
    assert nasrl_search.Rewarder(tiny(reward="accuracy")[1].layout, lat / 2, lm)(0.5, child) == 0.5


@pytest.mark.parametrize("options,needle", [
    ({"kernels": [2]}, "kernels"),
    ({"kernels": []}, "kernels"),
    ({"filters": [8, 8]}, "twice"),
    ({"filters": [0]}, "filters"),
    ({"strides": [3]}, "strides"),
    ({"reduce_layers": [9]}, "reduce_layers"),
    ({"reduce_layers": [2, 1]}, "reduce_layers"),
    ({"search_strides": True, "reduce_layers": [1]}, "search_strides"),
    ({"layers": 0}, "layers"),
    ({"child_steps": 0}, "child_steps"),
    ({"child_lr": float("nan")}, "child_lr"),
    ({"baseline_decay": 1.0}, "baseline_decay"),
    ({"decide_band": -1.0}, "decide_band"),
    ({"accuracy_power": 0}, "accuracy_power"),
    ({"reward": "latency"}, "reward"),
    ({"lstm": 3}, "unknown option"),
])
def test_bad_options_are_one_line_usage_errors(options, needle):
    with pytest.raises(UsageError, match=needle) as err:
        NASRL(options)
    assert "\n" not in str(err.value)


def test_search_resumes_to_the_same_result(tmp_path):
    """A search stopped after its first epoch and resumed ends where an uninterrupted one does."""
    from nas2deploy.checkpoint import Loop

    def run(epochs, folder):
        method, net = tiny()
        ctx = SearchContext(data=_random_data(), epochs=epochs, seed=2, batch_size=16,
                            checkpoints=Loop(folder))
        return method, net, method.search(net, ctx)

    _, _, whole = run(2, tmp_path / "a")
    run(1, tmp_path / "b")
    method, net, resumed = run(2, tmp_path / "b")
    assert resumed.rows == whole.rows and resumed.best == whole.best is not None
    assert method.decide(net, resumed).arch.network == \
        method.decide(*run(2, tmp_path / "a")[1:]).arch.network


# --- end to end: the console script on the default data ------------------------------------------

CONSOLE = Path(sys.executable).with_name("nas2deploy")


@pytest.mark.slow
def test_search_and_export_with_nasrl_end_to_end(tmp_path):
    """The whole pipeline through the console script on the default data, at a shorter search
    and retrain than the defaults."""
    out = tmp_path / "bundle"
    t = time.perf_counter()
    res = subprocess.run([str(CONSOLE), "search-and-export", "--method", "nasrl", "--quiet",
                          "--search-epochs", "1", "--retrain-epochs", "2", "--input-size", "16",
                          "--out", str(out)],
                         capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - t
    assert res.returncode in (0, 3), res.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    assert res.returncode == (3 if m["latency"]["within_budget"] is False else 0)
    arch = json.loads((out / "architecture.json").read_text())
    assert arch["method"] == "nasrl"
    assert len(arch["decisions"]["samples"]) == arch["decisions"]["children"] >= 1
    Child.from_dict(arch["decisions"])
    assert 0 <= m["accuracy"]["top1"] <= 1
    print(f"nasrl end to end: {seconds:.0f} s, within budget {m['latency']['within_budget']}, "
          f"top-1 {m['accuracy']['top1']:.3f}")
