"""Routing over a DAG of blocks: edges by the paper's rule, transition probabilities, the chained
expected cost, Viterbi, and path counting. Pure functions on plain data (and torch tensors where
gradients must flow), so the behavioural tests can check each against brute force.

A routing graph has nodes ``0 .. n-1`` in topological order: node 0 is the stem, node ``n-1`` the
output (the tail's 1×1 conv), the rest routing blocks. ``edges`` is a list of ``(i, j)`` with
``i < j``, sorted by source, so the outgoing edges of a node are one contiguous slice (which is
what the per-source softmax over β works on).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import torch


def paper_edges(groups: Sequence[int], sizes: Sequence[int], max_successors: int) -> list[tuple[int, int]]:
    """The paper's connection rule over nodes with group ids and resolutions (sizes may be
    reductions: only ratios are compared). Node i connects to up to ``max_successors``
    following nodes, stopping at the first one more than one group ahead or whose size ratio to
    node i is not 1 or 2."""
    edges = []
    n = len(groups)
    for i in range(n):
        for j in range(i + 1, min(n, i + 1 + max_successors)):
            if groups[j] > groups[i] + 1:
                break
            big, small = max(sizes[i], sizes[j]), min(sizes[i], sizes[j])
            if big % small or big // small not in (1, 2):
                break
            edges.append((i, j))
    return edges


@dataclass(frozen=True)
class Graph:
    n: int
    edges: tuple[tuple[int, int], ...]

    def __post_init__(self):
        for a, b in zip(self.edges, self.edges[1:]):
            if a >= b:
                raise ValueError("edges must be sorted by (source, target) without duplicates")
        for i, j in self.edges:
            if not 0 <= i < j < self.n:
                raise ValueError(f"edge {(i, j)} is not forward in a graph of {self.n} nodes")

    @cached_property
    def out_edges(self) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in range(self.n)]
        for e, (i, _) in enumerate(self.edges):
            out[i].append(e)
        return out

    @cached_property
    def in_edges(self) -> list[list[int]]:
        inn: list[list[int]] = [[] for _ in range(self.n)]
        for e, (_, j) in enumerate(self.edges):
            inn[j].append(e)
        return inn

    @cached_property
    def sources(self) -> list[int]:
        """Nodes with outgoing edges (each owns one β vector)."""
        return [v for v in range(self.n) if self.out_edges[v]]

    def transition_probs(self, beta: torch.Tensor) -> torch.Tensor:
        """p(i→j) per edge: softmax of β over each source's *outgoing* edges (DenseNAS, Fang et
        al., CVPR 2020, relaxation of the search space: the weights on a block's inputs do not
        sum to 1, and must not be made to)."""
        parts = []
        for v in self.sources:
            idx = self.out_edges[v]
            parts.append(torch.softmax(beta[idx[0]:idx[-1] + 1], dim=0))
        return torch.cat(parts)

    def count_paths(self, src: int = 0, dst: int | None = None) -> int:
        dst = self.n - 1 if dst is None else dst
        ways = [0] * self.n
        ways[src] = 1
        for v in range(src, self.n):
            for e in self.out_edges[v]:
                ways[self.edges[e][1]] += ways[v]
        return ways[dst]


def chained_cost(graph: Graph, p, edge_cost, node_cost, base=0.0):
    """Expected cost of the path from node 0 to the last node under the transition
    probabilities ``p``: Ĉ_v = node_v + Σ_{e=(v,w)} p_e·(edge_e + Ĉ_w), computed in reverse
    topological order; the result is ``base + Ĉ_0``. This equals Σ_paths P(path)·cost(path)
    when every walk from node 0 ends in the last node (the tests check it against enumeration).
    Works on floats or tensors (differentiable in p, edge_cost and node_cost)."""
    c = [None] * graph.n
    last = graph.n - 1
    c[last] = node_cost[last]
    tensors = isinstance(p, torch.Tensor)
    for v in range(last - 1, -1, -1):
        out = graph.out_edges[v]
        if tensors and out:  # one vectorised step per node (out edges are a contiguous slice)
            lo, hi = out[0], out[-1] + 1
            nxt = torch.stack([c[graph.edges[e][1]] for e in out])
            c[v] = node_cost[v] + (p[lo:hi] * (edge_cost[lo:hi] + nxt)).sum()
            continue
        acc = node_cost[v]
        for e in out:
            acc = acc + p[e] * (edge_cost[e] + c[graph.edges[e][1]])
        c[v] = acc
    return base + c[0]


def viterbi(graph: Graph, p: Sequence[float], src: int = 0,
            dst: int | None = None) -> tuple[float, list[int]]:
    """Most probable path from ``src`` to ``dst`` (default: the last node) and its probability.

    P*(src) = 1, P*(j) = max over incoming i of P*(i)·p(i→j); ties go to the nearest source
    (incoming edges are visited from the nearest source back, and only a strictly larger product
    replaces the best). Op weights play no part, as in the paper."""
    dst = graph.n - 1 if dst is None else dst
    best = [0.0] * graph.n
    back: list[int | None] = [None] * graph.n
    best[src] = 1.0
    reach = [False] * graph.n
    reach[src] = True
    for j in range(src + 1, graph.n):
        for e in sorted(graph.in_edges[j], key=lambda e: -graph.edges[e][0]):
            i = graph.edges[e][0]
            if not reach[i]:
                continue
            cand = best[i] * float(p[e])
            if not reach[j] or cand > best[j]:
                best[j], back[j], reach[j] = cand, i, True
    if not reach[dst]:
        raise ValueError(f"node {dst} is not reachable from {src}")
    path = [dst]
    while path[-1] != src:
        path.append(back[path[-1]])  # type: ignore[arg-type]
    return best[dst], path[::-1]


def best_cost_path(graph: Graph, edge_cost: Sequence[float], node_cost: Sequence[float], *,
                   largest: bool = False) -> tuple[float, list[int]]:
    """The cheapest (or costliest) path from node 0 to the last node by dynamic programming:
    used for the budget references (largest and smallest subnets)."""
    sign = -1.0 if largest else 1.0
    inf = float("inf")
    best = [inf] * graph.n
    back: list[int | None] = [None] * graph.n
    best[0] = sign * float(node_cost[0])
    for j in range(1, graph.n):
        for e in graph.in_edges[j]:
            i = graph.edges[e][0]
            if best[i] == inf:
                continue
            cand = best[i] + sign * (float(edge_cost[e]) + float(node_cost[j]))
            if cand < best[j]:
                best[j], back[j] = cand, i
    last = graph.n - 1
    path = [last]
    while path[-1] != 0:
        path.append(back[path[-1]])  # type: ignore[arg-type]
    return sign * best[last], path[::-1]


def path_edges(graph: Graph, path: Sequence[int]) -> list[int]:
    index = {edge: k for k, edge in enumerate(graph.edges)}
    return [index[(a, b)] for a, b in zip(path, path[1:])]


def edge_cover(graph: Graph) -> list[list[int]]:
    """Stem-to-output paths that together use every edge (greedy: each new path runs through an
    unused edge and, before and after it, through as many other unused edges as it can)."""
    last = graph.n - 1
    used: set[int] = set()
    paths: list[list[int]] = []
    index = {edge: k for k, edge in enumerate(graph.edges)}

    def gain(e: int) -> int:
        return 0 if e in used else 1

    while len(used) < len(graph.edges):
        # most unused edges on a path 0 → v (forward) and v → last (backward)
        fwd: list[tuple[int, list[int]] | None] = [None] * graph.n
        fwd[0] = (0, [0])
        for v in range(graph.n):
            if fwd[v] is None:
                continue
            for e in graph.out_edges[v]:
                w = graph.edges[e][1]
                cand = (fwd[v][0] + gain(e), fwd[v][1] + [w])
                if fwd[w] is None or cand[0] > fwd[w][0]:
                    fwd[w] = cand
        bwd: list[tuple[int, list[int]] | None] = [None] * graph.n
        bwd[last] = (0, [last])
        for v in range(last, -1, -1):
            for e in graph.out_edges[v]:
                w = graph.edges[e][1]
                if bwd[w] is None:
                    continue
                cand = (bwd[w][0] + gain(e), [v] + bwd[w][1])
                if bwd[v] is None or cand[0] > bwd[v][0]:
                    bwd[v] = cand
        best = None
        for e, (i, j) in enumerate(graph.edges):
            if e in used or fwd[i] is None or bwd[j] is None:
                continue
            score = fwd[i][0] + 1 + bwd[j][0]
            if best is None or score > best[0]:
                best = (score, fwd[i][1] + bwd[j][1])
        if best is None:
            raise ValueError("some edges lie on no stem-to-output path")
        paths.append(best[1])
        used.update(index[(a, b)] for a, b in zip(best[1], best[1][1:]))
    return paths
