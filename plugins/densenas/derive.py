"""From architecture parameters (or costs) to one path, and from a path to a network spec.

Derivation (DenseNAS, Fang et al., CVPR 2020, deriving the architecture): Viterbi over the
transition probabilities picks the path; on it, each block's head is the argmax-α candidate of the
chosen incoming edge and each stacked layer its argmax-α candidate; skips are dropped. Only the path
is materialized: the blocks, edges and ops off it are absent from the spec (the net has
mbconv/conv/head nodes only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .routing import best_cost_path, chained_cost, path_edges, viterbi
from .space import ACT, CostTable, Layout


@dataclass
class Choice:
    path: list[int]  # node ids, 0 (stem) .. out node
    head_ops: dict[int, int]  # edge index on the path (into a block) -> candidate index
    layer_ops: dict[int, int]  # layer row of a block on the path -> candidate index (skip kept)
    probability: float | None = None  # Viterbi path probability (None for cost-chosen paths)
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def viterbi_choice(layout: Layout, p: torch.Tensor, alpha_head: torch.Tensor,
                   alpha_stack: torch.Tensor) -> Choice:
    g = layout.graph
    prob, path = viterbi(g, [float(v) for v in p.detach()])
    edges = path_edges(g, path)
    head_ops = {e: int(alpha_head[layout.head_row[e]].argmax()) for e in edges if e in layout.head_row}
    layer_ops = {r: int(alpha_stack[r].argmax()) for v in path for r in layout.layer_rows[v]}
    return Choice(path, head_ops, layer_ops, prob)


def cost_choice(layout: Layout, table: CostTable, *, largest: bool) -> Choice:
    """The costliest path with the costliest candidate everywhere (``largest``), or the cheapest
    path with the cheapest candidate everywhere (skip for every stacked layer)."""
    pick = torch.argmax if largest else torch.argmin
    head_ops = {e: int(pick(table.head[r])) for e, r in layout.head_row.items()}
    if largest:
        layer_ops = {r: int(torch.argmax(table.stack[r, :layout.skip_index]))
                     for r in range(layout.n_layer_rows)}
    else:
        layer_ops = {r: int(torch.argmin(table.stack[r])) for r in range(layout.n_layer_rows)}
    wh = torch.zeros_like(table.head)
    for e, r in layout.head_row.items():
        wh[r, head_ops[e]] = 1.0
    ws = torch.zeros_like(table.stack)
    for r, o in layer_ops.items():
        ws[r, o] = 1.0
    edge, node = table.edge_and_node_costs(layout, wh, ws)
    _, path = best_cost_path(layout.graph, edge.tolist(), node.tolist(), largest=largest)
    on = set(path_edges(layout.graph, path))
    rows = {r for v in path for r in layout.layer_rows[v]}
    return Choice(path, {e: o for e, o in head_ops.items() if e in on},
                  {r: o for r, o in layer_ops.items() if r in rows})


def choice_cost(layout: Layout, table: CostTable, choice: Choice) -> float:
    """Cost of the derived network under ``table`` (skips dropped: they cost nothing there)."""
    g = layout.graph
    total = table.base + table.stem + table.classifier
    for e in path_edges(g, choice.path):
        total += float(table.head[layout.head_row[e], choice.head_ops[e]]) if e in layout.head_row \
            else float(table.out[layout.out_row[e]])
    for r, o in choice.layer_ops.items():
        if o != layout.skip_index:
            total += float(table.stack[r, o])
    return total


def expected_cost(layout: Layout, table: CostTable, p: torch.Tensor, w_head: torch.Tensor,
                  w_stack: torch.Tensor) -> torch.Tensor:
    """Chained expected cost over the β-induced path distribution with op weights w."""
    edge, node = table.edge_and_node_costs(layout, w_head, w_stack)
    return chained_cost(layout.graph, p.to(edge.dtype), edge, node, table.base)


def build_spec(layout: Layout, choice: Choice) -> tuple[dict[str, Any], dict[str, str], list[dict[str, Any]]]:
    """The network spec of a path, the supernet module each node inherits from, and a
    per-block summary for the architecture's ``decisions``."""
    L, g = layout, layout.graph
    c0 = L.stem_channels
    nodes: list[dict[str, Any]] = [
        {"id": "stem", "op": "conv", "inputs": ["input"], "c_in": L.input_channels, "c_out": c0,
         "k": 3, "stride": L.stem_stride, "act": ACT},
        {"id": "stem_mb", "op": "mbconv", "inputs": ["stem"], "c_in": c0, "c_out": c0, "mid": c0,
         "k": 3, "stride": 1, "expand": False, "act": ACT},
    ]
    modules = {"stem": "stem", "stem_mb": "stem_mb"}
    blocks: list[dict[str, Any]] = []
    prev = "stem_mb"
    for e in path_edges(g, choice.path):
        i, j = g.edges[e]
        ci, cj = L.node_channels[i], L.node_channels[j]
        if j == L.out_node:
            nodes.append({"id": "final", "op": "conv", "inputs": [prev], "c_in": ci,
                          "c_out": L.final_channels, "k": 1, "stride": 1, "act": ACT})
            modules["final"] = f"out_convs.{L.out_row[e]}"
            prev = "final"
            continue
        o = choice.head_ops[e]
        cand = L.head_candidates[o]
        nid = f"b{j}_head"
        nodes.append({"id": nid, "op": "mbconv", "inputs": [prev], "c_in": ci, "c_out": cj,
                      "mid": ci * cand.t, "k": cand.k, "stride": L.stride(i, j), "act": ACT})
        modules[nid] = f"heads.{L.head_row[e]}.{o}"
        prev = nid
        kept = []
        for q, r in enumerate(L.layer_rows[j]):
            lo = choice.layer_ops[r]
            lc = L.stack_candidates[lo]
            kept.append(lc.name)
            if lo == L.skip_index:
                continue  # skips are dropped: the block has as many layers as non-skip choices
            lid = f"b{j}_l{q}"
            nodes.append({"id": lid, "op": "mbconv", "inputs": [prev], "c_in": cj, "c_out": cj,
                          "mid": cj * lc.t, "k": lc.k, "stride": 1, "act": ACT})
            modules[lid] = f"layers.{r}.{lo}"
            prev = lid
        blocks.append({"block": j, "from": i, "width": cj, "stride": L.stride(i, j),
                       "size": L.node_sizes[j], "head": cand.name, "layers": kept})
    nodes.append({"id": "head", "op": "head", "inputs": [prev], "c_in": L.final_channels,
                  "num_classes": L.num_classes})
    modules["head"] = "classifier"
    spec = {"input": {"channels": L.input_channels, "size": [L.input_size, L.input_size]},
            "num_classes": L.num_classes, "nodes": nodes, "output": "head"}
    return spec, modules, blocks


def weighted_choice(layout: Layout, p: torch.Tensor, alpha_head: torch.Tensor,
                    alpha_stack: torch.Tensor, table: CostTable, mu: float) -> Choice:
    """Viterbi with a cost weight: the path and ops maximising
    log P(path) + Σ_ops log(softmax(α)_chosen / softmax(α)_argmax) − μ·cost(derived net), by
    dynamic programming over the blocks (each block's layers are chosen on their own, as argmax
    does). At μ = 0 the ops' term is 0 at the argmax: Viterbi + argmax, the op weights playing
    no part in the path, as in the paper. μ > 0 trades probability for a cheaper net, μ < 0 for
    a costlier one. Skipped layers cost nothing (they are dropped from the net)."""
    g = layout.graph

    def regret(alpha: torch.Tensor) -> torch.Tensor:
        a = torch.log_softmax(alpha.detach().double().cpu(), 1)
        return a - a.max(1, keepdim=True).values

    lp = torch.log(p.detach().double().cpu().clamp_min(1e-300))
    lh = regret(alpha_head) - mu * table.head.cpu()
    stack = table.stack.cpu().clone()
    stack[:, layout.skip_index] = 0.0
    ls = regret(alpha_stack) - mu * stack
    head_ops = {e: int(lh[r].argmax()) for e, r in layout.head_row.items()}
    layer_ops = {r: int(ls[r].argmax()) for r in range(layout.n_layer_rows)}
    node = [sum(float(ls[r, layer_ops[r]]) for r in rows) for rows in layout.layer_rows]
    edge = [float(lp[e]) + (float(lh[layout.head_row[e], head_ops[e]]) if e in layout.head_row
                            else -mu * float(table.out[layout.out_row[e]]))
            for e in range(len(g.edges))]
    best: list[float | None] = [None] * g.n
    back: list[int | None] = [None] * g.n
    best[0] = 0.0
    for j in range(1, g.n):
        for e in sorted(g.in_edges[j], key=lambda e: -g.edges[e][0]):  # nearest source first
            i = g.edges[e][0]
            if best[i] is None:
                continue
            cand = best[i] + edge[e] + node[j]
            if best[j] is None or cand > best[j]:
                best[j], back[j] = cand, i
    path = [layout.out_node]
    while path[-1] != 0:
        path.append(back[path[-1]])  # type: ignore[arg-type]
    path.reverse()
    on = set(path_edges(g, path))
    rows = {r for v in path for r in layout.layer_rows[v]}
    prob = float(torch.exp(sum(lp[e] for e in on)))
    return Choice(path, {e: o for e, o in head_ops.items() if e in on},
                  {r: o for r, o in layer_ops.items() if r in rows}, prob)


def _key(choice: Choice) -> tuple:
    return (tuple(choice.path), tuple(sorted(choice.head_ops.items())),
            tuple(sorted(choice.layer_ops.items())))


def resized_choice(layout: Layout, p: torch.Tensor, alpha_head: torch.Tensor,
                   alpha_stack: torch.Tensor, table: CostTable, current: Choice,
                   factor: float) -> Choice | None:
    """The cost-weighted Viterbi choice (``weighted_choice``) whose cost is nearest
    ``factor`` × ``current``'s (in ratio), found by bisecting μ (the cost is non-increasing in
    μ); None where no such choice is nearer than ``current`` itself."""
    now = choice_cost(layout, table, current)
    aim = factor * now
    if not now > 0 or not aim > 0 or factor == 1.0:
        return None
    seen: dict[tuple, tuple[float, Choice]] = {}

    def at(mu: float) -> float:
        c = weighted_choice(layout, p, alpha_head, alpha_stack, table, mu)
        cost = choice_cost(layout, table, c)
        seen.setdefault(_key(c), (cost, c))
        return cost

    sign = 1.0 if factor < 1 else -1.0
    # the first μ worth trying moves one nat per (whole net's cost): then widen, then bisect
    lo, hi = 0.0, sign / now
    for _ in range(40):
        if (at(hi) <= aim) if sign > 0 else (at(hi) >= aim):
            break
        lo, hi = hi, hi * 2
    for _ in range(30):
        mid = (lo + hi) / 2
        if (at(mid) <= aim) if sign > 0 else (at(mid) >= aim):
            hi = mid
        else:
            lo = mid
    at(lo)
    mine = _key(current)
    best = min((v for k, v in seen.items() if k != mine),
               key=lambda v: abs(math.log(v[0] / aim)), default=None)
    if best is None or abs(math.log(best[0] / aim)) >= abs(math.log(now / aim)):
        return None
    return best[1]
