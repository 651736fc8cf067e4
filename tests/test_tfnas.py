"""TF-NAS: what the paper claims, on tiny spaces (METHODS.md §6 TF-NAS), plus the plugin contract."""

from __future__ import annotations

import json
import math
import random
import re

import pytest
import torch
from click.testing import CliRunner
from scipy.stats import chisquare

from nas2deploy import ops as ops_module
from nas2deploy.errors import UsageError
from nas2deploy.latency import LatencyModel
from nas2deploy.materialize import materialize
from nas2deploy.method import SearchContext, SearchData, TaskSpec
from nas2deploy.netspec import signatures
from nas2deploy_plugins.tfnas import OP_NAMES, TFNAS, TFNASConfig
from nas2deploy_plugins.tfnas.elastic import elastic_scale
from nas2deploy_plugins.tfnas.search import (Searched, Searcher, elastic_step, gumbel_argmax,
                                             random_other, run_search, soft_gumbel, split_epochs,
                                             temperature)
from nas2deploy_plugins.tfnas.space import ElasticMBConv, make_layout

TINY = {"stem_channels": 8, "stem_block_channels": 8, "stem_se": 2,
        "stages": [[2, 8, 2, "relu"], [2, 16, 2, "hswish"], [1, 16, 1, "hswish"]],
        "tail_channels": 32}
TINY_TASK = TaskSpec(1, 16, 4)


class SynthLUT(LatencyModel):
    """A monotone synthetic table: cost ∝ mid·H·W·k² (METHODS.md §6), plus a constant."""

    name = "synthetic"

    def op_cost(self, sig) -> float:
        return 1e-5 * max(sig.mid, 1) * sig.h * sig.w * max(sig.kernel, 1) ** 2

    @property
    def base_ms(self) -> float:
        return 0.05

    def predict(self, spec) -> float:
        return self.base_ms + sum(self.op_cost(s) for s in signatures(spec).values())


def block_nodes(spec):
    return [n for n in spec["nodes"] if re.fullmatch(r"s\d+_b\d+", n["id"])]


def tiny(**over):
    method = TFNAS({**TINY, **over})
    torch.manual_seed(0)
    return method, method.build(TINY_TASK)


# --------------------------------------------------------------------------------------------
# config and space


def test_config_defaults_and_bad_values():
    cfg = TFNASConfig.from_dict({})
    assert cfg.lam > 0 and 0 < cfg.target_fraction <= 1 and cfg.tau_end <= cfg.tau_start
    assert isinstance(TFNAS.default_search_epochs, int) and TFNAS.default_search_epochs >= 2
    assert "Hu et al." in TFNAS.paper and "ECCV 2020" in TFNAS.paper
    bad = [{"lam": -1}, {"target_fraction": 0}, {"target_fraction": 1.5}, {"stages": []},
           {"stages": [[0, 16, 2, "relu"]]}, {"stages": [[1, 16, 3, "relu"]]},
           {"stages": [[1, 16, 2, "swish"]]}, {"stages": [[1, 16]]}, {"tau_end": 9.0},
           {"warmup_fraction": 1.0}, {"w_steps_per_arch_step": 0}, {"elastic": "yes"},
           {"arch_betas": [0.5]}, {"lr": 0}, {"momentum": 1.0}, {"stem_stride": 3},
           {"preset": "cifar"}, {"no_such_option": 1}, {"stem_channels": 2.5}]
    for values in bad:
        with pytest.raises(UsageError):
            TFNAS(values)
    dict_stage = TFNASConfig.from_dict({"stages": [{"blocks": 2, "channels": 8, "stride": 2,
                                                    "act": "relu"}]})
    assert dict_stage.stages == [[2, 8, 2, "relu"]]
    assert TFNASConfig(preset="imagenet").tail_channels == 1280
    over = TFNASConfig.from_dict({"preset": "imagenet", "tail_channels": 256})
    assert over.tail_channels == 256 and over.stem_channels == 32
    assert TFNASConfig.from_dict(over.to_dict()) == over


def test_imagenet_configuration_builds():
    method = TFNAS(TFNASConfig.imagenet())
    net = method.build(TaskSpec(3, 224, 1000))
    layout = net.layout
    assert [(len(st), st[0].c_out, st[0].stride, st[0].act) for st in layout.stages] == [
        (2, 24, 2, "relu"), (3, 40, 2, "hswish"), (4, 80, 2, "hswish"), (4, 112, 1, "hswish"),
        (4, 192, 2, "hswish"), (1, 320, 1, "hswish")]
    assert len(layout.blocks) == 18 and net.alpha.shape == (18, 8)
    assert layout.fixed_nodes[0]["c_out"] == 32 and layout.fixed_nodes[1]["c_out"] == 16
    assert layout.fixed_nodes[1]["se"] == 8 and layout.tail_nodes[0]["c_out"] == 1280
    b = layout.blocks[0]  # 16 -> 24: e3 mid in [32, 64] from 48, e6 in [64, 128] from 96
    assert b.mid_range(OP_NAMES.index("k3_e3")) == (32, 48, 64)
    assert b.mid_range(OP_NAMES.index("k5_e6_se")) == (64, 96, 128)
    assert b.se_channels(OP_NAMES.index("k3_e3_se")) == 16
    assert b.se_channels(OP_NAMES.index("k3_e6_se")) == 32
    assert b.se_channels(OP_NAMES.index("k5_e6")) == 0
    space = method.space(net)
    assert space["fingerprint"] and space["choice_points"] == {"OpChoice": 18, "DepthSink": 6, "Width": 18}
    small = method.space(net).smallest()
    sub = materialize(small)
    assert sub(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
    large = method.space(net).largest()
    assert sum(n["op"] == "mbconv" for n in large.network["nodes"]) == 19  # 18 + the stem block


def test_space_has_no_skip_op_and_largest_smallest():
    method, net = tiny()
    assert len(OP_NAMES) == 8 and not any("skip" in o or "id" in o for o in OP_NAMES)
    for blk in net.blocks():
        assert len(blk.ops) == 8 and all(isinstance(o, ElasticMBConv) for o in blk.ops)
    large, small = method.space(net).largest(), method.space(net).smallest()
    lb, sb = block_nodes(large.network), block_nodes(small.network)
    assert len(lb) == 5 and len(sb) == 3
    assert all(n["k"] == 5 and n["se"] > 0 and n["mid"] == 8 * n["c_in"] for n in lb)
    assert all(n["k"] == 3 and n["se"] == 0 and n["mid"] == 2 * n["c_in"] for n in sb)
    lut = SynthLUT()
    assert lut.predict(small.network) < lut.predict(large.network)


# --------------------------------------------------------------------------------------------
# elasticity scaling


def _random_problem(layout, rng, cost):
    ops = [rng.randrange(8) for _ in layout.blocks]
    depths = [rng.randint(1, len(st)) for st in layout.stages]
    blocks, i = [], 0
    for st, d in zip(layout.stages, depths):
        blocks += list(range(i, i + d))
        i += len(st)
    ranges = [layout.blocks[j].mid_range(ops[j]) for j in blocks]
    lo, hi = [r[0] for r in ranges], [r[2] for r in ranges]
    mids = [rng.randint(a, b) for a, b in zip(lo, hi)]
    stage_of = [layout.blocks[j].stage for j in blocks]

    def latency(ms):
        return 0.05 + sum(cost(layout.blocks[j].signature(ops[j], m)) for j, m in zip(blocks, ms))

    return mids, lo, hi, stage_of, latency


@pytest.mark.parametrize("space,task,refine", [
    ({}, TaskSpec(1, 32, 10), True),  # the default (small) space
    ({"preset": "imagenet"}, TaskSpec(3, 224, 1000), True),
    ({"preset": "imagenet"}, TaskSpec(3, 224, 1000), False),  # the paper's rule alone
])
def test_elastic_scaling_lands_just_under_target(space, task, refine):
    layout = make_layout(TFNASConfig.from_dict(space), task)
    cost = SynthLUT().op_cost
    rng = random.Random(0)
    for _ in range(300):
        mids, lo, hi, stage_of, latency = _random_problem(layout, rng, cost)
        t_lo, t_hi = latency(lo), latency(hi)
        target = rng.uniform(t_lo, t_hi)
        new, trace = elastic_scale(mids, lo, hi, stage_of, latency, target, fill=refine)
        lat = latency(new)
        assert lat <= target and lat >= 0.995 * target, (lat / target, trace)
        assert all(a <= m <= b for a, m, b in zip(lo, new, hi))
        # the passes after the first (suffix expansions, fill, trade) never move away from T
        dist = [abs(t["latency"] - target) for t in trace[1:]]
        assert all(b <= a + 1e-12 for a, b in zip(dist, dist[1:])), trace
        # outside the reachable range: pinned to the bounds
        assert elastic_scale(mids, lo, hi, stage_of, latency, 0.5 * t_lo)[0] == lo
        assert elastic_scale(mids, lo, hi, stage_of, latency, 2.0 * t_hi)[0] == hi


def test_elastic_step_on_the_supernet_sets_top_k_widths():
    method, net = tiny()
    table = method.cost_table(net, SynthLUT())
    with torch.no_grad():
        net.alpha.copy_(torch.log_softmax(torch.randn(net.alpha.shape), 1))
        for b in net.betas:
            b.copy_(torch.randn(len(b)))
    ops, depths = net.parsed_ops(), net.parsed_depths()
    blocks = table.active_blocks(depths)
    lo = table.parsed(ops, depths, [net.blocks()[j].ops[ops[j]].mid_min for j in range(len(ops))])
    hi = table.parsed(ops, depths, [net.blocks()[j].ops[ops[j]].mid_max for j in range(len(ops))])
    target = 0.5 * (lo + hi)
    out = elastic_step(net, table, target)
    mids = [net.blocks()[j].ops[ops[j]].mid for j in range(len(ops))]
    assert out["latency"] == pytest.approx(table.parsed(ops, depths, mids))
    assert 0.98 * target <= out["latency"] <= target
    for j in blocks:
        op = net.blocks()[j].ops[ops[j]]
        top = set(torch.topk(op.importance(), op.mid).indices.tolist())
        assert set(op.active.tolist()) == top


@pytest.mark.parametrize("multiple", [8, 16])
def test_elastic_step_keeps_widths_to_the_targets_channel_multiple(multiple):
    """On onnxruntime's blocked layout other channel counts are padded and reordered around every
    conv; the elastic step then moves widths in whole multiples (where a block's range holds one),
    still landing the estimate under T."""
    method, net = tiny(stages=[[2, 16, 2, "relu"], [2, 32, 2, "hswish"], [1, 32, 1, "hswish"]])
    table = method.cost_table(net, SynthLUT())
    ops, depths = net.parsed_ops(), net.parsed_depths()
    blocks = table.active_blocks(depths)
    lo = table.parsed(ops, depths, [net.blocks()[j].ops[ops[j]].mid_min for j in range(len(ops))])
    hi = table.parsed(ops, depths, [net.blocks()[j].ops[ops[j]].mid_max for j in range(len(ops))])
    target = 0.5 * (lo + hi)
    out = elastic_step(net, table, target, multiple=multiple)
    assert out["latency"] <= target
    for j in blocks:
        op = net.blocks()[j].ops[ops[j]]
        if -(-op.mid_min // multiple) * multiple <= op.mid_max:
            assert op.mid % multiple == 0 and op.mid_min <= op.mid <= op.mid_max, (j, op.mid)


# --------------------------------------------------------------------------------------------
# bi-sampling


def test_random_path_excludes_the_gumbel_op_and_is_uniform():
    gen = torch.Generator().manual_seed(0)
    alpha = torch.log_softmax(torch.randn(4, 8, generator=gen) * 2, 1)
    draws = 10_000
    g = gumbel_argmax(alpha.expand(draws, 4, 8), gen)  # draws × blocks
    r = random_other(g, 8, gen)
    assert not bool((r == g).any())
    for b in range(4):
        rank = r[:, b] - (r[:, b] > g[:, b]).long()  # position among the 7 other ops
        counts = torch.bincount(rank, minlength=7).tolist()
        assert len(counts) == 7 and chisquare(counts).pvalue > 0.01
        for chosen in range(8):  # also uniform over the others given the Gumbel op
            sel = r[:, b][g[:, b] == chosen]
            if len(sel) > 700:
                c = torch.bincount(sel, minlength=8).tolist()
                others = [c[o] for o in range(8) if o != chosen]
                assert c[chosen] == 0 and chisquare(others).pvalue > 0.01


def test_gumbel_argmax_frequencies_match_softmax_alpha():
    gen = torch.Generator().manual_seed(1)
    alpha = torch.log_softmax(torch.randn(3, 8, generator=gen) * 1.5, 1)
    draws = 10_000
    g = gumbel_argmax(alpha.expand(draws, 3, 8), gen)
    for b in range(3):
        freq = torch.bincount(g[:, b], minlength=8).double() / draws
        tv = 0.5 * float((freq - torch.softmax(alpha[b].double(), 0)).abs().sum())
        assert tv < 0.02, tv
    w = soft_gumbel(alpha, 1.0, gen)
    assert torch.allclose(w.sum(1), torch.ones(3)) and bool((w > 0).all())


def test_schedule():
    assert split_epochs(16, 0.25) == (4, 12) and split_epochs(2, 0.25) == (1, 1)
    assert split_epochs(1, 0.25) == (0, 1)
    cfg = TFNASConfig()
    taus = [temperature(cfg, e, 10) for e in range(10)]
    assert taus[0] == cfg.tau_start and taus[-1] == pytest.approx(cfg.tau_end)
    assert all(b < a for a, b in zip(taus, taus[1:]))


# --------------------------------------------------------------------------------------------
# sink-connecting depth


def test_one_hot_beta_truncates_the_stage():
    method, net = tiny()
    net.eval()
    table = method.cost_table(net, SynthLUT())
    x = torch.randn(2, 8, 8, 8)
    stage = net.stages[0]
    ops = [3, 6, 0, 1, 2]
    with torch.no_grad():
        for d in (1, 2):
            p = torch.zeros(2)
            p[d - 1] = 1.0
            h = x
            for k in range(d):
                h = stage[k](h, op=ops[k])
            assert torch.equal(net.stage_forward(stage, x, p, 0, ops, None), h)
    # the expected latency with one-hot β is the cumulative sum up to d (any op weights)
    weights = torch.softmax(torch.randn(len(net.layout.blocks), 8), 1)
    costs = table.op_cost_matrix(net.mids())
    per_block = (weights * costs).sum(1)
    for depths in ([1, 1, 1], [2, 1, 1], [2, 2, 1], [1, 2, 1]):
        lat = table.expected(weights, net.one_hot_depths(depths), costs)
        want = table.fixed_ms + sum(float(per_block[j]) for j in table.active_blocks(depths))
        assert float(lat) == pytest.approx(want, rel=1e-6)
        with torch.no_grad():
            for b, d in zip(net.betas, depths):
                b.zero_()
                b[d - 1] = 5.0
        arch = method.decide(net).arch
        kept = [n["id"] for n in block_nodes(arch.network)]
        assert kept == [f"s{s + 1}_b{k + 1}" for s, d in enumerate(depths) for k in range(d)]


# --------------------------------------------------------------------------------------------
# the two-sided latency objective


@pytest.mark.parametrize("side", [0.8, 1.25])
def test_two_sided_penalty_moves_latency_towards_target(side):
    method, net = tiny()
    table = method.cost_table(net, SynthLUT())
    costs = table.op_cost_matrix(net.mids())
    alpha = torch.log_softmax(torch.randn(net.alpha.shape), 1).requires_grad_(True)
    betas = [torch.zeros(len(b), requires_grad=True) for b in net.betas]

    def lat():
        return table.expected(torch.softmax(alpha, 1), [torch.softmax(b, 0) for b in betas], costs)

    start = float(lat().detach())
    target = start * side  # 0.8: LAT > T (must go down); 1.25: LAT < T (must go up)
    opt = torch.optim.SGD([alpha, *betas], lr=0.5)
    for _ in range(5):
        loss = 0.1 * torch.abs(lat() / target - 1.0)  # CE frozen: the penalty alone
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = float(lat().detach())
    assert abs(end - target) < abs(start - target)
    assert (end < start) if side < 1 else (end > start)


# --------------------------------------------------------------------------------------------
# masks and weights


def test_masks_top_k_and_bit_exact_reexpansion():
    _, net = tiny()
    op = net.blocks()[1].ops[OP_NAMES.index("k5_e6_se")]
    full = {k: v.clone() for k, v in op.state_dict().items()}
    op.set_width(op.mid_max - 5)
    before = op.active.clone()
    before_state = op.export_state()
    op.set_width(op.mid_min)  # shrink
    top = torch.topk(op.importance(), op.mid_min).indices
    assert set(op.active.tolist()) == set(top.tolist())
    op.set_width(op.mid_max - 5)  # and back
    assert torch.equal(op.active, before)
    after_state = op.export_state()
    assert all(torch.equal(before_state[k], after_state[k]) for k in before_state)
    assert all(torch.equal(full[k], v) for k, v in op.state_dict().items())


def test_masked_channels_are_not_trained():
    method, net = tiny()
    s = Searcher(net, method.config, None, None, 10, 0)
    for blk in net.blocks():
        for op in blk.ops:
            op.set_width(op.mid_min)
    snap = {id(t): t.detach().clone() for blk in net.blocks() for op in blk.ops
            for t, _ in op.mid_tensors()}
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 4, (8,))
    for _ in range(3):
        s.weight_step(x, y, bisample=True)
    moved = 0
    for blk in net.blocks():
        for op in blk.ops:
            idx = op.inactive()
            for t, dim in op.mid_tensors():
                old = snap[id(t)]
                assert torch.equal(t.detach().index_select(dim, idx), old.index_select(dim, idx))
                moved += int(not torch.equal(t.detach(), old))
    assert moved > 0  # the active channels of the ops that ran did train


def test_materialized_net_equals_the_parsed_supernet():
    method, net = tiny()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        net.alpha.copy_(torch.log_softmax(torch.randn(net.alpha.shape, generator=gen), 1))
        for b in net.betas:
            b.copy_(torch.randn(len(b), generator=gen))
    for blk in net.blocks():
        for op in blk.ops:
            op.set_width(int(torch.randint(op.mid_min, op.mid_max + 1, (), generator=gen)))
    net.train()
    with torch.no_grad():  # give the BN running statistics something to carry over
        for _ in range(3):
            net(torch.randn(16, 1, 16, 16), weights=torch.full((len(net.layout.blocks), 8), 1 / 8))
    arch = method.decide(net).arch
    weights = method.space(net).weights(arch)
    sub = materialize(arch, weights).eval()
    assert set(weights) == set(sub.state_dict())
    net.eval()
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(sub(x), net(x), atol=1e-5)
    allowed = tuple(ops_module.OPS.values())
    for m in sub.modules():
        assert type(m).__module__.startswith("torch.nn") or isinstance(m, allowed) \
            or type(m).__name__ in ("GraphNet", "SqueezeExcite"), type(m)
    # the LUT keys the search read are the materialized net's signatures
    sigs = signatures(arch.network)
    ops, depths = net.parsed_ops(), net.parsed_depths()
    for j, b in enumerate(net.layout.blocks):
        if b.name in sigs:
            assert sigs[b.name] == b.signature(ops[j], net.blocks()[j].ops[ops[j]].mid)
    assert [sigs[k] for k in ("stem", "stem_mb", "tail", "head")] == net.layout.fixed_signatures()
    table = method.cost_table(net, SynthLUT())
    mids = [net.blocks()[j].ops[o].mid for j, o in enumerate(ops)]
    assert table.parsed(ops, depths, mids) == pytest.approx(SynthLUT().predict(arch.network))


# --------------------------------------------------------------------------------------------
# the search loop and the pipeline


def _synthetic_data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = torch.randn(n, 1, 16, 16, generator=g) * 0.3
    for c in range(4):  # a bright quadrant per class
        x[y == c, :, (c // 2) * 8:(c // 2) * 8 + 8, (c % 2) * 8:(c % 2) * 8 + 8] += 1.5
    return x, y


def search_setup(method, net, at: float):
    """Synthetic data splits, the synthetic table, and a budget ``at`` of the way from the
    smallest to the largest subnet's latency under it."""
    x, y = _synthetic_data()
    data = SearchData(x[:48], y[:48], x[48:80], y[48:80], x[80:], y[80:])
    lut = SynthLUT()
    big, small = lut.predict(method.space(net).largest().network), lut.predict(method.space(net).smallest().network)
    return data, lut, small + at * (big - small)


def test_search_history_and_target():
    method, net = tiny()
    data, lut, budget = search_setup(method, net, 0.5)
    bars = []

    class Bar:
        def __init__(self, total=None, desc=None):
            bars.append((total, desc))

        def update(self, n=1): ...
        def set_postfix(self, **kw): ...
        def close(self): ...

    ctx = SearchContext(data=data, epochs=3, seed=0, batch_size=16, budget_ms=budget,
                        latency_model=lut, progress=Bar)
    searched = run_search(method, net, ctx)
    assert bars and bars[0][0] == 9
    assert [r["epoch"] for r in ctx.history] == [1, 2, 3]
    assert [r["phase"] for r in ctx.history] == ["warmup", "search", "search"]
    for r in ctx.history:
        for key in ("loss", "val_acc", "predicted_ms", "temperature"):
            assert math.isfinite(r[key])
    target = 0.95 * budget
    arch = method.decide(net, searched).arch
    assert arch.decisions["target_ms"] == pytest.approx(target)
    assert ctx.history[-1]["predicted_ms"] == pytest.approx(arch.metadata["predicted_ms"])
    assert arch.metadata["predicted_ms"] == pytest.approx(lut.predict(arch.network))
    # lands ≤ T unless the parsed architecture cannot reach it at its min widths
    ops, depths = net.parsed_ops(), net.parsed_depths()
    table = method.cost_table(net, lut)
    at_min = table.parsed(ops, depths, [net.blocks()[j].ops[o].mid_min for j, o in enumerate(ops)])
    assert arch.metadata["predicted_ms"] <= target or at_min > target


def test_cli_search_and_export_end_to_end(tmp_path):
    from nas2deploy.cli import main

    cfg = tmp_path / "tiny.toml"
    stages = ", ".join(f'[{n}, {c}, {s}, "{a}"]' for n, c, s, a in TINY["stages"])
    cfg.write_text(
        'method = "tfnas"\n[method-options]\n'
        f'stem_channels = 8\nstem_block_channels = 8\nstem_se = 2\ntail_channels = 32\n'
        f'stages = [{stages}]\n')
    out = tmp_path / "tmp"
    res = CliRunner().invoke(main, [
        "search-and-export", "--config", str(cfg), "--method", "tfnas", "--search-epochs", "2",
        "--retrain-epochs", "1", "--input-size", "16", "--target", "onnxruntime:cpu",
        "--export", "onnx", "--out", str(out), "--quiet"], catch_exceptions=False)
    assert res.exit_code in (0, 3), res.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["method"]["name"] == "tfnas" and m["method"]["config"]["stem_channels"] == 8
    assert m["parity"]["onnx"]["max_abs_diff"] <= m["parity"]["onnx"]["atol"]
    assert len(m["search"]["history"]) == 2
    assert m["search"]["history"][-1]["phase"] == "search"
    # the search timed its parsed architecture on the target, and the FLOPs proxy learned from it
    meas = m["search"]["measurements"]
    assert meas and all(r["measured_p50_ms"] > 0 and r["ratio_to_largest"] > 0 for r in meas)
    assert m["search"]["history"][-1]["measured_ms"] > 0
    assert m["latency"]["latency_model"]["observed"] == len(meas)
    lat = m["latency"]
    assert lat["budget_ms"] == pytest.approx(0.6 * lat["measured"]["largest_p50_ms"])
    assert lat["ratio_to_budget"] == pytest.approx(lat["measured"]["ratio_to_largest"] / 0.6)
    assert lat["budget_ms_at_start"] == pytest.approx(0.6 * lat["reference"]["largest_p50_ms"])
    arch = json.loads((out / "architecture.json").read_text())
    assert arch["method"] == "tfnas" and arch["space"]["fingerprint"] == m["method"]["space"]["fingerprint"]


def test_registered_and_macs_fallback_without_latency_model():
    from nas2deploy import registry

    assert registry.methods.get("tfnas") is TFNAS
    method, net = tiny()
    table = method.cost_table(net, None)  # no latency model: MACs in millions
    assert table.source.startswith("macs")
    b = net.layout.blocks[0]
    lo, _, hi = b.mid_range(0)
    assert 0 < table.cost(0, 0, lo) < table.cost(0, 0, hi)
    assert table.fixed_ms > 0


def test_candidate_networks_cover_every_op_and_sample_is_valid():
    method, net = tiny()
    archs = method.space(net).covering()
    assert len(archs) == 8
    have = {s for a in archs for s in signatures(a.network).values()}
    wanted = set(net.layout.fixed_signatures())
    wanted |= {b.signature(o, b.mid_range(o)[2]) for b in net.layout.blocks for o in range(8)}
    assert wanted <= have
    before = [p.detach().clone() for p in net.arch_parameters()]
    widths = [op.mid for blk in net.blocks() for op in blk.ops]
    rng = random.Random(0)
    shapes = set()
    for _ in range(8):
        arch = method.space(net).draw(rng)
        assert arch.space["fingerprint"] == method.space(net)["fingerprint"]
        shapes.add(tuple(n.get("mid", 0) for n in block_nodes(arch.network)))
        assert materialize(arch)(torch.randn(1, 1, 16, 16)).shape == (1, 4)
    assert len(shapes) == 8
    assert all(torch.equal(a, b) for a, b in zip(before, net.arch_parameters()))
    assert widths == [op.mid for blk in net.blocks() for op in blk.ops]


@pytest.mark.parametrize("multiple", [8, 16])
def test_sampled_widths_keep_to_the_targets_channel_multiple(multiple):
    """Random search draws at the target's channel multiple: onnxruntime ran a subnet drawn
    with widths such as 127, 303, 169 at 2.2x the largest subnet's latency."""
    method, net = tiny()
    space, rng = method.space(net), random.Random(1)
    stepped = 0
    for _ in range(6):
        arch = space.draw(rng, multiple)
        mids = {n["id"]: n["mid"] for n in block_nodes(arch.network)}
        for b in arch.decisions["blocks"]:
            (lo, hi), mid = b["mid_range"], b["mid"]
            assert lo <= mid <= hi and mids.get(b["id"], mid) == mid
            if -(-lo // multiple) * multiple <= hi:
                assert mid % multiple == 0, b
                stepped += 1
    assert stepped > 0


@pytest.mark.parametrize("landing", [True, False])
def test_measured_landing_corrects_a_biased_estimate(landing):
    """The estimate over-predicts every network by 25% (the FLOPs proxy did about that on
    OpenVINO). Elasticity alone lands the *estimate* on T, so the measured latency ends ~0.8 T;
    with measured landing the search measures its parsed architecture after every elastic step
    and re-aims, and the measurement ends within the tolerance of T (or at the widths' bound)."""
    method, net = tiny(landing_rounds=3, landing_tolerance=0.01, measured_landing=landing)
    data, lut, budget = search_setup(method, net, 0.3)
    calls = []

    def measure(spec, weights=None):
        assert weights and all(torch.is_tensor(t) for t in weights.values())
        calls.append(spec)
        return 0.8 * lut.predict(spec)

    ctx = SearchContext(data=data, epochs=3, seed=0, batch_size=16, budget_ms=budget,
                        latency_model=lut, measure=measure)
    searched = run_search(method, net, ctx)
    arch = method.decide(net, searched).arch
    target = 0.95 * budget
    measured = 0.8 * lut.predict(arch.network)
    if not landing:
        assert not calls and "measured_ms" not in arch.decisions
        assert measured == pytest.approx(0.8 * arch.metadata["predicted_ms"])
        assert measured < 0.85 * target
        return
    assert len(calls) >= 2  # one per search epoch, then the landing
    assert [r.get("measured_ms") is not None for r in ctx.history] == [False, True, True]
    assert arch.decisions["measured_ms"] == pytest.approx(measured)
    assert arch.decisions["estimate_correction"] == pytest.approx(0.8)
    assert calls[-1] == arch.network  # the last measurement is of the decided architecture
    ops, depths = net.parsed_ops(), net.parsed_depths()
    active = method.cost_table(net, lut).active_blocks(depths)
    at_max = all(net.blocks()[j].ops[ops[j]].mid == net.blocks()[j].ops[ops[j]].mid_max
                 for j in active)
    assert abs(measured / target - 1) <= 0.01 or (at_max and measured < target)


def pinned(op_name: str, exit: int):
    """The tiny supernet with one op parsed everywhere and every stage's β peaked at ``exit``."""
    method, net = tiny()
    op = OP_NAMES.index(op_name)
    with torch.no_grad():
        net.alpha.fill_(-10.0)
        net.alpha[:, op] = 0.0
        for b in net.betas:
            b.fill_(0.0)
            b[exit] = 5.0
    return method, net, op


def test_landing_reaches_the_measured_target_in_a_few_re_aimed_elastic_steps():
    """Landing alone, on a fixed architecture (full depth, k5_e3 everywhere) with room between
    its min and max widths: the measurement runs at 0.8 of the estimate, and the re-aimed
    elastic steps bring it within 1% of T."""
    from nas2deploy_plugins.tfnas.search import Landing

    method, net, op = pinned("k5_e3", exit=-1)
    lut = SynthLUT()
    table = method.cost_table(net, lut)
    ops, depths = net.parsed_ops(), net.parsed_depths()
    blocks = table.active_blocks(depths)
    lo = table.parsed(ops, depths, [net.blocks()[j].ops[op].mid_min for j in range(len(ops))])
    hi = table.parsed(ops, depths, [net.blocks()[j].ops[op].mid_max for j in range(len(ops))])
    target = 0.8 * (lo + 3 * hi) / 4  # above where the widths start (the middle of their range)
    calls = []

    def measure(spec, weights=None):
        calls.append(spec)
        return 0.8 * lut.predict(spec)

    landing = Landing(net, table, target, measure)
    first = landing.measure()
    assert abs(first / target - 1) > 0.05 and landing.correction == pytest.approx(0.8)
    landing.land(3, 0.01, True, lambda msg: None)
    mids = [net.blocks()[j].ops[op].mid for j in blocks]
    assert landing.last_ms == pytest.approx(measure(calls[-1]))
    assert abs(landing.last_ms / target - 1) <= 0.01
    assert any(m < net.blocks()[j].ops[op].mid_max for j, m in zip(blocks, mids))


def test_cost_table_follows_a_refitted_flops_proxy():
    from nas2deploy.latency import FlopsProxy
    from nas2deploy.netspec import build_network
    from nas2deploy.counting import count_layers, count_macs

    method, net = tiny()
    anchors = []
    for arch, ms in ((method.space(net).largest(), 0.4), (method.space(net).smallest(), 0.1)):
        n = build_network(arch.network)
        anchors.append((count_macs(n, n.example_input(1)), count_layers(n), ms))
    proxy = FlopsProxy(anchors)
    table = method.cost_table(net, proxy)
    lo, _, hi = net.layout.blocks[0].mid_range(0)
    before, fixed = table.cost(0, 0, hi), table.fixed_ms
    proxy.observe(method.space(net).draw(random.Random(0)).network, 0.35)
    after = table.cost(0, 0, hi)
    assert after == pytest.approx(proxy.op_cost(net.layout.blocks[0].signature(0, hi)))
    assert (after, table.fixed_ms) != (before, fixed)
    assert table.fixed_ms == pytest.approx(
        proxy.base_ms + sum(proxy.op_cost(s) for s in net.layout.fixed_signatures()))


def test_landing_grows_the_depth_when_no_width_reaches_the_target():
    """A parsed architecture of one block per stage whose max widths stay under T: landing adds
    blocks (to the stage whose β favours the next exit most) before re-aiming the widths."""
    from nas2deploy_plugins.tfnas.search import Landing

    method, net, op = pinned("k3_e6", exit=0)
    lut = SynthLUT()
    with torch.no_grad():
        net.betas[1][1] = 4.0  # stage 2 favours its second exit next
    table = method.cost_table(net, lut)
    ops = net.parsed_ops()
    assert net.parsed_depths() == [1, 1, 1]
    full = [len(b) for b in net.betas]
    at_full = table.parsed(ops, full, [b.ops[op].mid_max for b in net.blocks()])
    at_one = table.parsed(ops, [1, 1, 1], [b.ops[op].mid_max for b in net.blocks()])
    target = 0.8 * (at_one + 0.5 * (at_full - at_one))
    landing = Landing(net, table, target, lambda spec, weights=None: 0.8 * lut.predict(spec))
    landing.measure()
    landing.land(4, 0.02, True, lambda msg: None)
    depths = net.parsed_depths()
    assert depths[1] == 2 and sum(depths) > 3
    assert abs(landing.last_ms / target - 1) <= 0.02
    assert method.decide(net).arch.decisions["blocks"]  # the grown architecture derives


def test_landing_aims_by_the_secant_once_the_target_is_bracketed():
    from nas2deploy_plugins.tfnas.search import _next_aim

    assert _next_aim([(1.0, 0.8)], 1.0) == pytest.approx(1.25)  # scaled by target / measured
    assert _next_aim([(1.0, 0.8), (1.5, 1.3)], 1.0) == pytest.approx(1.2)
    # the nearest points either side are used, not the latest
    assert _next_aim([(0.5, 0.4), (1.0, 0.8), (2.0, 1.8), (1.5, 1.3)], 1.0) == pytest.approx(1.2)


def test_resize_re_lands_the_decided_architecture_at_a_factor_of_its_estimate():
    """``resize`` (the decision's lever at full width) starts from the architecture it belongs
    to, not from wherever the supernet was left, and lands the estimate just under factor × its
    estimate, in both directions; past the max (min) widths the depth grows (shrinks) first."""
    method, net, op = pinned("k3_e6", exit=0)
    lut = SynthLUT()
    table = method.cost_table(net, lut)
    for block in net.blocks():  # mid widths halfway, so both directions have room
        block.ops[op].set_width((block.ops[op].mid_min + block.ops[op].mid_max) // 2)
    decision = method.decide(net, Searched(table))
    arch = decision.arch
    est = arch.metadata["predicted_ms"]

    smaller = decision.resize(0.9).arch
    assert smaller is not None and smaller.network != arch.network
    assert 0.9 * est * 0.97 <= smaller.metadata["predicted_ms"] <= 0.9 * est
    for block in net.blocks():  # the supernet moved: the lever must not care
        block.ops[op].set_width(block.ops[op].mid_min)
    larger = decision.resize(1.08).arch
    assert larger is not None
    assert est < larger.metadata["predicted_ms"] <= 1.08 * est
    assert larger.decisions["depths"] == arch.decisions["depths"]

    at_max = table.parsed(net.parsed_ops(), arch.decisions["depths"],
                          [b.ops[op].mid_max for b in net.blocks()])
    deeper_decision = decision.resize(1.05 * at_max / est)
    deeper = deeper_decision.arch
    assert sum(deeper.decisions["depths"]) > sum(arch.decisions["depths"])
    assert deeper_decision.weights  # the re-sized architecture inherits weights
    sub = materialize(deeper, deeper_decision.weights)  # they fit the re-sized network
    assert set(deeper_decision.weights) <= set(sub.state_dict())

    _, deep, op = pinned("k3_e6", exit=0)
    with torch.no_grad():
        for b in deep.betas:  # every stage at full depth
            b[-1] = 10.0
    deep_table = method.cost_table(deep, lut)
    full_decision = method.decide(deep, Searched(deep_table))
    full = full_decision.arch
    at_min = deep_table.parsed(deep.parsed_ops(), full.decisions["depths"],
                               [b.ops[op].mid_min for b in deep.blocks()])
    aim = 0.97 * at_min
    shallower = full_decision.resize(aim / full.metadata["predicted_ms"]).arch
    assert sum(shallower.decisions["depths"]) < sum(full.decisions["depths"])
    assert shallower.metadata["predicted_ms"] <= aim * (1 + 1e-9)

    # full depth, max widths: only a costlier op can grow it; k3_e6 → one of the k5/SE ops
    _, deep, op = pinned("k3_e6", exit=0)
    with torch.no_grad():
        for b in deep.betas:
            b[-1] = 10.0
    for block in deep.blocks():
        block.ops[op].set_width(block.ops[op].mid_max)
    max_decision = method.decide(deep, Searched(method.cost_table(deep, lut)))
    at_max = max_decision.arch
    assert at_max.decisions["depths"] == [len(b) for b in deep.betas]
    upgraded = max_decision.resize(1.1).arch
    assert upgraded is not None and upgraded.decisions["depths"] == at_max.decisions["depths"]
    pairs = zip(at_max.decisions["blocks"], upgraded.decisions["blocks"])
    changed = [(a["op"], b["op"]) for a, b in pairs if a["op"] != b["op"]]
    assert changed and all(a == "k3_e6" for a, _ in changed)
    assert at_max.metadata["predicted_ms"] < upgraded.metadata["predicted_ms"] \
        <= 1.1 * at_max.metadata["predicted_ms"]

    other, _ = tiny(stem_channels=16)
    with pytest.raises(UsageError, match="another space"):
        method.space(net).weights(other.space(other.build(TINY_TASK)).smallest())
    method2, fresh = tiny()
    assert method2.decide(fresh).resize is None  # no search, no table: no lever
