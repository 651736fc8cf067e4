"""DenseNAS: behavioural checks of what the paper claims (METHODS.md §6), on tiny spaces.

Viterbi against brute force, the chained cost against the exact path expectation, the rescale
invariant, cost pressure, the paper's ImageNet space counts, weight inheritance, config
validation, and the CLI end to end on a tiny space.
"""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from click.testing import CliRunner

from nas2deploy.architecture import Architecture
from nas2deploy.counting import count_macs
from nas2deploy.errors import UsageError
from nas2deploy.latency import FlopsProxy
from nas2deploy.materialize import materialize
from nas2deploy.method import SearchContext, SearchData, TaskSpec
from nas2deploy.netspec import signatures
from nas2deploy_plugins.densenas import DenseNAS, DenseNASConfig
from nas2deploy_plugins.densenas.derive import (build_spec, choice_cost, cost_choice, expected_cost,
                                               viterbi_choice)
from nas2deploy_plugins.densenas.routing import Graph, chained_cost, path_edges, viterbi
from nas2deploy_plugins.densenas.search import ArchOptimizer, sample_mask, sample_ops
from nas2deploy_plugins.densenas.space import CostTable, macs

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is faster, and steadier on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY = {"widths": [8, 12, 16, 20], "groups": [1, 2, 2, 3], "reductions": [2, 4, 4, 4],
        "layers": [1, 1, 0, 0], "stem_channels": 8, "final_channels": 32, "kernels": [3, 5],
        "expansions": [2, 3]}


# ------------------------------------------------------------------------------------------
# helpers: random DAGs and path enumeration


def random_dag(rng: random.Random) -> Graph:
    """4–9 nodes, every node but the last with 1–3 forward edges (so every walk from node 0
    ends in the last node)."""
    n = rng.randint(4, 9)
    edges = []
    for i in range(n - 1):
        succ = list(range(i + 1, n))
        edges += [(i, j) for j in sorted(rng.sample(succ, rng.randint(1, min(3, len(succ)))))]
    return Graph(n, tuple(edges))


def all_paths(g: Graph, v: int = 0):
    if v == g.n - 1:
        yield [v]
        return
    for e in g.out_edges[v]:
        for rest in all_paths(g, g.edges[e][1]):
            yield [v] + rest


def path_prob(g: Graph, p, path) -> float:
    return math.prod(float(p[e]) for e in path_edges(g, path))


def random_probs(g: Graph, rng: random.Random) -> torch.Tensor:
    beta = torch.tensor([rng.gauss(0, 2) for _ in g.edges], dtype=torch.float64)
    return g.transition_probs(beta)


# ------------------------------------------------------------------------------------------
# 1. Viterbi vs brute force


def test_viterbi_matches_brute_force():
    rng = random.Random(0)
    for _ in range(200):
        g = random_dag(rng)
        p = random_probs(g, rng)
        paths = list(all_paths(g))
        probs = [path_prob(g, p, q) for q in paths]
        assert sum(probs) == pytest.approx(1.0, abs=1e-12)  # outgoing softmax: a distribution
        prob, path = viterbi(g, p.tolist())
        best = max(range(len(paths)), key=probs.__getitem__)
        assert prob == pytest.approx(probs[best], rel=1e-12)
        assert path == paths[best]


def test_viterbi_ties_go_to_the_nearest_source():
    _, path = viterbi(Graph(3, ((0, 1), (0, 2), (1, 2))), [0.5, 0.5, 1.0])
    assert path == [0, 1, 2]  # 0→2 and 0→1→2 tie at .5; 2's nearest source is 1


# ------------------------------------------------------------------------------------------
# 2. chained cost = exact expectation


def test_chained_cost_equals_path_expectation():
    rng = random.Random(1)
    for _ in range(200):
        g = random_dag(rng)
        p = random_probs(g, rng)
        edge = torch.tensor([rng.uniform(0, 5) for _ in g.edges], dtype=torch.float64)
        node = torch.tensor([rng.uniform(0, 5) for _ in range(g.n)], dtype=torch.float64)
        base = rng.uniform(0, 1)
        exact = sum(path_prob(g, p, q) * (base + sum(float(node[v]) for v in q)
                                          + sum(float(edge[e]) for e in path_edges(g, q)))
                    for q in all_paths(g))
        assert float(chained_cost(g, p, edge, node, base)) == pytest.approx(exact, abs=1e-9)


def test_expected_cost_of_a_one_hot_path_is_the_derived_nets_prediction():
    """The cost table keys on the derived nodes' own signatures: a one-hot distribution on a
    path costs exactly what the latency model predicts for the materialized net."""
    m = DenseNAS(TINY)
    net = m.build(TaskSpec(1, 16, 10))
    L = net.layout
    large, small = materialize(m.space(net).largest()), materialize(m.space(net).smallest())
    ex = large.example_input(1)
    lm = FlopsProxy([(count_macs(large, ex), 0.5), (count_macs(small, ex), 0.1)])
    table = CostTable.build(L, lm.op_cost, lm.base_ms)
    with torch.no_grad():
        net.beta.copy_(torch.randn(len(net.beta)))
        choice = viterbi_choice(L, net.transition_probs(), net.alpha_head, net.alpha_stack)
    spec, _, _ = build_spec(L, choice)
    assert choice_cost(L, table, choice) == pytest.approx(lm.predict(spec), rel=1e-9)
    on = set(path_edges(L.graph, choice.path))
    p = torch.tensor([1.0 if (e in on) else 0.0 for e in range(len(L.graph.edges))], dtype=torch.float64)
    wh = torch.zeros_like(table.head)
    ws = torch.zeros_like(table.stack)
    for e, o in choice.head_ops.items():
        wh[L.head_row[e], o] = 1
    for r, o in choice.layer_ops.items():
        ws[r, o] = 1
    skips = sum(float(table.stack[r, o]) for r, o in choice.layer_ops.items() if o == L.skip_index)
    assert float(expected_cost(L, table, p, wh, ws)) - skips == pytest.approx(lm.predict(spec), rel=1e-9)
    sigs = signatures(spec)
    assert sigs["final"] == L.out_signature(path_edges(L.graph, choice.path)[-1])
    assert sigs["head"] == L.classifier_signature()


# ------------------------------------------------------------------------------------------
# 3. the rescale


def test_rescale_keeps_unsampled_probabilities():
    torch.manual_seed(0)
    beta = torch.nn.Parameter(torch.randn(5))
    alphas = [torch.nn.Parameter(torch.randn(6, 6)), torch.nn.Parameter(torch.randn(4, 7))]
    opt = ArchOptimizer(beta, alphas, lr=0.05, weight_decay=1e-3)
    gen = torch.Generator().manual_seed(0)
    for step in range(20):
        masks = [sample_mask(a, sample_ops(a, 2, gen)) for a in alphas]
        assert all(int(m.sum(1).min()) == 2 and int(m.sum(1).max()) == 2 for m in masks)
        before = [torch.softmax(a.detach(), 1) for a in alphas]
        grads = [torch.randn(5)] + [torch.randn_like(a) * m for a, m in zip(alphas, masks)]
        opt.step(grads, masks)
        for a, m, b in zip(alphas, masks, before):
            after = torch.softmax(a.detach(), 1)
            assert torch.allclose(after[~m], b[~m], atol=1e-6)
            assert torch.allclose(after.sum(1), torch.ones(a.shape[0]), atol=1e-6)
            assert torch.allclose(after[m].view(-1, 2).sum(1), b[m].view(-1, 2).sum(1), atol=1e-6)
            if step == 0:
                assert not torch.allclose(after[m], b[m])  # the sampled pair did move


# ------------------------------------------------------------------------------------------
# 4. cost pressure


def _pressure(lam: float, steps: int, layout, table):
    torch.manual_seed(0)
    beta = torch.nn.Parameter(1e-3 * torch.randn(len(layout.graph.edges), dtype=torch.float64))
    ah = torch.nn.Parameter(1e-3 * torch.randn(*table.head.shape, dtype=torch.float64))
    as_ = torch.nn.Parameter(1e-3 * torch.randn(*table.stack.shape, dtype=torch.float64))
    opt = torch.optim.Adam([beta, ah, as_], lr=0.05, betas=(0.5, 0.999), weight_decay=1e-3)
    for _ in range(steps):  # constant logits: CE has no gradient, only λ·log_τ C acts
        cost = expected_cost(layout, table, layout.graph.transition_probs(beta),
                             torch.softmax(ah, 1), torch.softmax(as_, 1))
        loss = lam * torch.log(cost) / math.log(15.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        p = layout.graph.transition_probs(beta)
        cost = float(expected_cost(layout, table, p, torch.softmax(ah, 1), torch.softmax(as_, 1)))
    return cost, p, ah.detach(), as_.detach()


def test_cost_pressure():
    m = DenseNAS({**TINY, "widths": [8, 16, 24, 32], "layers": [1, 1, 1, 0]})
    layout = m.build(TaskSpec(1, 16, 10)).layout

    def synthetic(sig):  # rises with width (and kernel and expansion)
        return 1e-3 * sig.c_out * max(sig.mid, sig.c_in) * (sig.kernel or 1) + 1e-3 * sig.c_in

    table = CostTable.build(layout, synthetic, base=0.05)
    costs = [_pressure(lam, 60, layout, table)[0] for lam in (0.05, 0.15, 0.5)]
    assert costs[0] >= costs[1] - 1e-12 and costs[1] >= costs[2] - 1e-12, costs
    assert costs[2] < costs[0]

    _, p, ah, as_ = _pressure(0.5, 300, layout, table)
    _, path = viterbi(layout.graph, p.tolist())
    cheapest_edge = [float(table.head[layout.head_row[e]].min()) if e in layout.head_row
                     else float(table.out[layout.out_row[e]]) for e in range(len(layout.graph.edges))]
    cheapest_node = [sum(float(table.stack[r].min()) for r in rows) for rows in layout.layer_rows]

    def path_cost(q):
        return sum(cheapest_node[v] for v in q) + sum(cheapest_edge[e] for e in path_edges(layout.graph, q))

    best = min(all_paths(layout.graph), key=path_cost)
    assert path == best
    assert all(int(ah[layout.head_row[e]].argmax()) == int(table.head[layout.head_row[e]].argmin())
               for e in path_edges(layout.graph, path) if e in layout.head_row)


# ------------------------------------------------------------------------------------------
# 5. the paper's ImageNet space


def test_imagenet_space_counts_and_builds():
    m = DenseNAS({"space": "imagenet"})
    net = m.build(TaskSpec(3, 224, 100))
    space = m.space(net)
    assert space["edges"] == 54 and space["paths"] == 15456
    assert len(net.heads) == 51 and len(net.layers) == 39  # α_head rows, α_stack rows
    assert net.beta.numel() == 54 and net.alpha_head.shape == (51, 6) and net.alpha_stack.shape == (39, 7)
    assert space["sizes"] == [56] + [28] * 3 + [14] * 6 + [7] * 6
    large, small = m.space(net).largest(), m.space(net).smallest()
    assert len(large.decisions["path"]) == 18  # every block
    assert sum(macs(s) for s in signatures(small.network).values() if s.type != "head") < \
        sum(macs(s) for s in signatures(large.network).values() if s.type != "head")
    for arch in (large, small):
        Architecture.from_json(arch.to_json())  # valid, round-trips


def test_candidate_networks_hold_every_op_of_the_space():
    """What a latency table measures: every signature the cost term asks the latency model for
    appears in some candidate network, at the input shape it really sees."""
    for opts, task in ((TINY, TaskSpec(1, 16, 10)), ({}, TaskSpec(1, 32, 10))):
        m = DenseNAS(opts)
        net = m.build(task)
        L = net.layout
        wanted = set(L.stem_signatures()) | {L.classifier_signature()}
        wanted |= {L.head_signature(e, c) for e in L.head_row for c in L.head_candidates}
        wanted |= {L.out_signature(e) for e in L.out_row}
        wanted |= {L.layer_signature(v, c) for v, rows in enumerate(L.layer_rows) if rows
                   for c in L.head_candidates}
        archs = m.space(net).covering()
        have = {s for a in archs for s in signatures(a.network).values()}
        assert wanted <= have, sorted(s.key() for s in wanted - have)[:5]
        covered = {e for a in archs for e in path_edges(L.graph, a.decisions["path"])}
        assert covered == set(range(len(L.graph.edges)))
        rng = random.Random(0)
        for _ in range(5):
            arch = m.space(net).draw(rng)
            materialize(arch, m.space(net).weights(arch))


# ------------------------------------------------------------------------------------------
# weights, config


def test_inherited_weights_reproduce_the_supernet_path():
    torch.manual_seed(0)
    for affine in (False, True):
        m = DenseNAS({**TINY, "bn_affine": affine})
        net = m.build(TaskSpec(1, 16, 10))
        L = net.layout
        with torch.no_grad():
            for prm in net.parameters():  # make BN statistics and affine params non-trivial
                prm.add_(0.01 * torch.randn_like(prm))
            for mod in net.modules():
                if isinstance(mod, torch.nn.BatchNorm2d):
                    mod.running_mean.normal_(0, 0.1)
                    mod.running_var.uniform_(0.5, 2)
            net.alpha_stack[:, L.skip_index] = 5.0  # one layer skipped, one not
            net.alpha_stack[0, L.skip_index] = -5.0
        arch = m.decide(net).arch
        choice = viterbi_choice(L, net.transition_probs(), net.alpha_head, net.alpha_stack)
        assert choice.path == arch.decisions["path"]
        on = set(path_edges(L.graph, choice.path))
        # Weight 1 on the path's edges and 0 elsewhere (β alone cannot do that: a block with one
        # outgoing edge always sends all its mass along it, on the path or not).
        p = torch.tensor([1.0 if e in on else 0.0 for e in range(len(L.graph.edges))])
        sub = materialize(arch, m.space(net).weights(arch)).eval()
        net.eval()
        heads = [([int(choice.head_ops.get(e, 0))], None) for e in sorted(L.head_row, key=L.head_row.get)]
        stacks = [([int(a.argmax())], None) for a in net.alpha_stack]
        x = torch.randn(4, 1, 16, 16)
        with torch.no_grad():
            want = net(x, heads, stacks, p)
            assert torch.allclose(sub(x), want, atol=1e-5)
        assert {n["op"] for n in arch.network["nodes"]} <= {"conv", "mbconv", "head"}


@pytest.mark.parametrize("bad", [
    {"space": "huge"}, {"latency_lambda": -1}, {"latency_tau": 1}, {"widths": [8, 16]},
    {"groups": [2, 2, 3, 3, 4, 4, 5]}, {"reductions": [4, 16, 16, 16, 16, 16, 16]},
    {"stem_stride": 3}, {"kernels": [4]}, {"penalty": "soft"}, {"warmup_fraction": 1},
    {"top_k": 0}, {"lr": 0}, {"arch_lr": -1}, {"layers": -1}, {"nope": 1}, {"bn_affine": "yes"},
])
def test_config_validation(bad):
    with pytest.raises(UsageError):
        DenseNAS(bad)


def test_config_defaults_and_overrides():
    cfg = DenseNASConfig.from_dict({})
    assert cfg.space == "small" and cfg.resolved()["widths"] == [16, 24, 32, 40, 48, 64, 80]
    assert DenseNAS.default_search_epochs >= 1
    cfg = DenseNASConfig.from_dict({"space": "imagenet", "final_channels": 1280, "layers": 2})
    r = cfg.resolved()
    assert r["final_channels"] == 1280 and r["layers"] == [2] * 16 and len(r["widths"]) == 16


# ------------------------------------------------------------------------------------------
# the search loop, without a latency model (MACs fallback)


def test_search_records_history_and_top_epochs():
    torch.manual_seed(0)
    m = DenseNAS(TINY)
    net = m.build(TaskSpec(1, 16, 4))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 1, 16, 16, generator=gen)
    y = torch.arange(40) % 4
    x[torch.arange(40), 0, y, y] += 3.0  # learnable
    ctx = SearchContext(SearchData(x[:16], y[:16], x[16:32], y[16:32], x[32:], y[32:]), epochs=4,
                        seed=0, batch_size=8)
    before = net.alpha_head.detach().clone()
    searched = m.search(net, ctx)
    assert [r["epoch"] for r in ctx.history] == [1, 2, 3, 4]
    assert [r["phase"] for r in ctx.history] == ["warmup", "search", "search", "search"]
    assert all({"loss", "val_acc", "expected_mmacs", "derived_mmacs", "path"} <= set(r) for r in ctx.history)
    assert not torch.equal(before, net.alpha_head.detach())
    arch = m.decide(net, searched).arch
    assert 1 <= len(arch.decisions["top"]) <= 2
    assert arch.decisions["path"] == arch.decisions["top"][0]["path"]
    tops = [t["val_acc"] for t in arch.decisions["top"]]
    assert tops == sorted(tops, reverse=True)
    materialize(arch, m.space(net).weights(arch))


# ------------------------------------------------------------------------------------------
# 6. the CLI end to end


def test_cli_search_and_export_end_to_end(tmp_path):
    from nas2deploy.cli import main

    cfg = tmp_path / "tiny.toml"
    opts = "\n".join(f"{k} = {json.dumps(v)}" for k, v in TINY.items())
    cfg.write_text(f"[method-options]\n{opts}\n")
    out = tmp_path / "bundle"
    res = CliRunner().invoke(main, [
        "search-and-export", "--method", "densenas", "--config", str(cfg), "--search-epochs", "2",
        "--retrain-epochs", "1", "--input-size", "16", "--target", "onnxruntime:cpu",
        "--export", "onnx", "--out", str(out), "--quiet",
        # a tiny net is all per-call overhead: 0.6 of the largest is below the smallest
        "--latency-fraction", "0.9"], catch_exceptions=False)
    assert res.exit_code in (0, 3), res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"]["name"] == "densenas"
    par = manifest["parity"]["onnx"]
    assert par["max_abs_diff"] <= par["atol"]
    assert [r["epoch"] for r in manifest["search"]["history"]] == [1, 2]
    assert all("predicted_ms" in r for r in manifest["search"]["history"])

    arch = Architecture.load(out / "architecture.json")
    path = arch.decisions["path"]
    assert len(arch.decisions["top"]) <= 2
    # the decided path, unless the closed loop re-sized it with the method's lever
    assert arch.decisions["top"][0]["path"] == path or "re-decoded" in arch.decisions["note"]
    blocks = path[1:-1]
    allowed = {"stem", "stem_mb", "final", "head"}
    allowed |= {f"b{j}_head" for j in blocks} | {f"b{j}_l{q}" for j in blocks for q in range(4)}
    ids = [n["id"] for n in arch.network["nodes"]]
    assert set(ids) <= allowed
    assert {f"b{j}_head" for j in blocks} <= set(ids)  # every block on the path, and only those
    assert {n["op"] for n in arch.network["nodes"]} <= {"conv", "mbconv", "head"}
    for prev, node in zip(ids, arch.network["nodes"][1:]):
        assert node["inputs"] == [prev]  # one chain: the path, nothing beside it


# ------------------------------------------------------------------------------------------
# budget response: the latency term, the resize lever, the search as a whole


def _tiny_search_data(n: int = 120) -> SearchData:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 16, 16, generator=gen)
    y = torch.arange(n) % 4
    x[torch.arange(n), 0, y, y] += 3.0
    a, b = 2 * n // 5, 4 * n // 5
    return SearchData(x[:a], y[:a], x[a:b], y[a:b], x[b:], y[b:])


def _proxy(m, net) -> FlopsProxy:
    large, small = materialize(m.space(net).largest()), materialize(m.space(net).smallest())
    ex = large.example_input(1)
    return FlopsProxy([(count_macs(large, ex), 0.5), (count_macs(small, ex), 0.1)])


def test_latency_term_acts_below_the_budget():
    from nas2deploy_plugins.densenas.search import latency_penalty

    def grad(penalty, cost, budget):
        c = torch.tensor(cost, dtype=torch.float64, requires_grad=True)
        latency_penalty(c, DenseNASConfig(penalty=penalty), budget, aim=0.95).backward()
        return float(c.grad)

    assert DenseNASConfig().penalty == "target"
    assert grad("target", 1.0, 2.0) < 0 < grad("target", 3.0, 2.0)  # pulled towards 0.95 × 2
    assert grad("paper", 1.0, 2.0) > 0 and grad("hinge", 1.0, 2.0) == 0.0
    assert grad("target", 3.0, 2.0) == pytest.approx(grad("paper", 3.0, 2.0))
    assert grad("target", 3.0, None) == pytest.approx(grad("paper", 3.0, None))


@pytest.mark.parametrize("penalty", ["target", "hinge"])
def test_the_arch_step_feels_the_budget_from_below(penalty):
    """The searcher's own arch step with the budget above the expected cost: with the default
    term its gradients on β and α differ from cross-entropy's alone; with the hinge (the old
    default) they are cross-entropy's, which is how the search ignored its budget."""
    import copy

    from nas2deploy_plugins.densenas.search import Searcher, cost_table

    torch.manual_seed(0)
    m = DenseNAS({**TINY, "penalty": penalty})
    net = m.build(TaskSpec(1, 16, 4))
    lm = _proxy(m, net)
    table, unit = cost_table(net.layout, lm, m.config.skip_cost_fraction)
    assert unit == "ms"
    budget = 2 * lm.predict(m.space(net).largest().network)
    data = _tiny_search_data(40)
    x, y = data.x_arch[:8], data.y_arch[:8]
    grads = []
    for cfg in (m.config, DenseNASConfig.from_dict({**TINY, "latency_lambda": 0.0})):
        s = Searcher(copy.deepcopy(net), cfg, table, budget, 10, 10, seed=0, batch_size=8)
        seen = []
        s.a_opt.step = lambda g, masks: seen.append([t.clone() for t in g])
        s.arch_step(x, y)
        assert float(s.expected_ms()) < budget
        grads.append(seen[0])
    ce_alone = all(torch.allclose(a, b, rtol=0, atol=1e-12) for a, b in zip(*grads))
    assert ce_alone == (penalty == "hinge")


def test_weighted_viterbi_at_zero_cost_weight_is_viterbi_and_argmax():
    from nas2deploy_plugins.densenas.derive import weighted_choice

    m = DenseNAS(TINY)
    net = m.build(TaskSpec(1, 16, 10))
    L, table = net.layout, m._mac_table(net)
    rng = random.Random(0)
    for _ in range(20):
        with torch.no_grad():
            for prm in net.arch_parameters():
                prm.copy_(torch.tensor([rng.gauss(0, 2) for _ in range(prm.numel())]).view_as(prm))
        want = viterbi_choice(L, net.transition_probs(), net.alpha_head, net.alpha_stack)
        got = weighted_choice(L, net.transition_probs(), net.alpha_head, net.alpha_stack, table, 0.0)
        assert (got.path, got.head_ops, got.layer_ops) == (want.path, want.head_ops, want.layer_ops)
        huge = weighted_choice(L, net.transition_probs(), net.alpha_head, net.alpha_stack, table, 1e6)
        assert choice_cost(L, table, huge) == pytest.approx(
            choice_cost(L, table, cost_choice(L, table, largest=False)))


def _searched(fraction: float, epochs: int = 4):
    torch.manual_seed(0)
    m = DenseNAS(TINY)
    net = m.build(TaskSpec(1, 16, 4))
    lm = _proxy(m, net)
    budget = fraction * lm.predict(m.space(net).largest().network)
    ctx = SearchContext(_tiny_search_data(), epochs=epochs, seed=0, batch_size=8,
                        budget_ms=budget, latency_model=lm)
    searched = m.search(net, ctx)
    return m, net, lm, m.decide(net, searched)


def test_a_tighter_budget_decides_a_faster_architecture():
    est = {}
    for fraction in (0.4, 0.8):
        _, _, lm, decision = _searched(fraction)
        est[fraction] = lm.predict(decision.arch.network)
    assert est[0.4] < est[0.8], est


def test_resize_lever_moves_the_estimate_towards_the_factor():
    m, net, lm, decision = _searched(0.8, epochs=3)
    now = lm.predict(decision.arch.network)
    moved = 0
    for factor in (0.5, 0.8, 1.25, 2.0):
        new = decision.resize(factor)
        if new is None:
            continue
        moved += 1
        ratio = lm.predict(new.arch.network) / now
        assert (ratio < 1) == (factor < 1), (factor, ratio)
        assert abs(math.log(ratio / factor)) < abs(math.log(factor)), (factor, ratio)
        assert "cost-weighted Viterbi" in new.arch.decisions["note"]
        # its own lever, and the supernet's weights for the new path
        assert new.resize is not None
        want = m.space(net).weights(new.arch)
        assert new.weights.keys() == want.keys()
        assert all(torch.equal(new.weights[k], v) for k, v in want.items())
        materialize(new.arch, new.weights)(torch.randn(1, 1, 16, 16))
    assert moved >= 2
    with pytest.raises(UsageError):
        decision.resize(0)


def test_shared_weights_compute_the_subnet_and_train_the_supernet():
    torch.manual_seed(0)
    m = DenseNAS(TINY)
    net = m.build(TaskSpec(1, 16, 10))
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 2)
    space = m.space(net)
    arch = space.draw(random.Random(1))
    shared, copied = space.shared(arch), space.weights(arch)
    assert shared.keys() == copied.keys()
    own = dict(net.state_dict(keep_vars=True))
    assert all(any(t is v for v in own.values()) for t in shared.values())
    sub = materialize(arch).eval()
    loaded = materialize(arch, copied).eval()
    x = torch.randn(3, 1, 16, 16)
    out = torch.func.functional_call(sub, shared, (x,))
    with torch.no_grad():
        assert torch.allclose(out, loaded(x), atol=1e-6)
    out.sum().backward()
    params = [t for t in shared.values() if isinstance(t, torch.nn.Parameter)]
    assert params and all(p.grad is not None for p in params)
    assert all(p.grad is None for p in net.parameters() if all(p is not t for t in params))
