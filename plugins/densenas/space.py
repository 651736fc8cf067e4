"""The DenseNAS space: the routing layout, every candidate op's signature, and the supernet.

Layout (DenseNAS, Fang et al., CVPR 2020, search space)::

    node 0      stem: 3×3 conv (stride 1 or 2) → BN → ReLU6, then a fixed MBConv(k3, t1)
    nodes 1..B  routing blocks of increasing width, grouped; block j =
                Σ_{i→j} p(i→j)·head_{i→j}(x_i)   (a head = mixed op over MBConv k×t,
                                                  stride 1 or 2 as the resolutions require)
                → stacked layers (each a mixed op over the same MBConvs plus skip)
    node B+1    output: Σ_{i→out} p(i→out)·conv1×1_i(x_i) (1×1 conv → BN → ReLU6 per branch)
                → global average pool → FC

Edges follow the paper's rule (``routing.paper_edges``). Every module that holds weights is one
of ``nas2deploy.ops``' classes built with the parameters the derived network gives it, so a
derived node inherits its weights by copying that module's state dict. In the supernet BN has no
affine parameters unless ``bn_affine`` (paper: affine=False during search).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Sequence

import torch
from torch import nn

from nas2deploy.method import TaskSpec
from nas2deploy.netspec import OpSignature
from nas2deploy.ops import Conv, Head, MBConv

from .routing import Graph, paper_edges

ACT = "relu6"


def _half(size: int) -> int:
    return (size - 1) // 2 + 1  # stride-2 k×k conv with padding k//2, odd k


def _size_at(input_size: int, reduction: int) -> int:
    s = input_size
    while reduction > 1:
        s, reduction = _half(s), reduction // 2
    return s


@dataclass(frozen=True)
class Candidate:
    """One MBConv choice: kernel and expansion (``None`` for skip)."""

    k: int | None
    t: int | None

    @property
    def name(self) -> str:
        return "skip" if self.k is None else f"k{self.k}_t{self.t}"


@dataclass(frozen=True)
class Layout:
    """Everything the supernet and the derivation share, as plain data."""

    input_channels: int
    input_size: int
    num_classes: int
    widths: tuple[int, ...]
    groups: tuple[int, ...]
    reductions: tuple[int, ...]
    layers: tuple[int, ...]
    stem_channels: int
    stem_stride: int
    final_channels: int
    max_successors: int
    kernels: tuple[int, ...]
    expansions: tuple[int, ...]
    bn_affine: bool = False

    @classmethod
    def from_config(cls, resolved: dict[str, Any], task: TaskSpec) -> "Layout":
        return cls(task.input_channels, task.input_size, task.num_classes,
                   tuple(resolved["widths"]), tuple(resolved["groups"]),
                   tuple(resolved["reductions"]), tuple(resolved["layers"]),
                   int(resolved["stem_channels"]), int(resolved["stem_stride"]),
                   int(resolved["final_channels"]), int(resolved["max_successors"]),
                   tuple(resolved["kernels"]), tuple(resolved["expansions"]),
                   bool(resolved.get("bn_affine", False)))

    # --- nodes ---------------------------------------------------------------------------

    @property
    def blocks(self) -> int:
        return len(self.widths)

    @property
    def out_node(self) -> int:
        return self.blocks + 1

    @cached_property
    def node_channels(self) -> tuple[int, ...]:
        return (self.stem_channels, *self.widths, self.final_channels)

    @cached_property
    def node_reductions(self) -> tuple[int, ...]:
        return (self.stem_stride, *self.reductions, self.reductions[-1])

    @cached_property
    def node_groups(self) -> tuple[int, ...]:
        return (0, *self.groups, self.groups[-1] + 1)

    @cached_property
    def node_sizes(self) -> tuple[int, ...]:
        return tuple(_size_at(self.input_size, r) for r in self.node_reductions)

    @cached_property
    def graph(self) -> Graph:
        return Graph(self.blocks + 2, tuple(paper_edges(self.node_groups, self.node_reductions,
                                                        self.max_successors)))

    # --- choice points -------------------------------------------------------------------

    @cached_property
    def head_candidates(self) -> tuple[Candidate, ...]:
        return tuple(Candidate(k, t) for t in self.expansions for k in self.kernels)

    @cached_property
    def stack_candidates(self) -> tuple[Candidate, ...]:
        return (*self.head_candidates, Candidate(None, None))

    @property
    def skip_index(self) -> int:
        return len(self.head_candidates)

    @cached_property
    def head_row(self) -> dict[int, int]:
        """Edge index → row of α_head, for edges into routing blocks (mixed heads)."""
        rows = [e for e, (_, j) in enumerate(self.graph.edges) if j != self.out_node]
        return {e: r for r, e in enumerate(rows)}

    @cached_property
    def out_row(self) -> dict[int, int]:
        """Edge index → index of its fixed 1×1 conv, for edges into the output node."""
        rows = [e for e, (_, j) in enumerate(self.graph.edges) if j == self.out_node]
        return {e: r for r, e in enumerate(rows)}

    @cached_property
    def layer_rows(self) -> tuple[tuple[int, ...], ...]:
        """Per node: the rows of α_stack of its stacked layers (empty for stem and output)."""
        rows: list[tuple[int, ...]] = [()]
        r = 0
        for n in self.layers:
            rows.append(tuple(range(r, r + n)))
            r += n
        rows.append(())
        return tuple(rows)

    @property
    def n_layer_rows(self) -> int:
        return sum(self.layers)

    @cached_property
    def edge_gather(self) -> torch.Tensor:
        """Index into [head rows, output convs] giving each edge's entry, in edge order."""
        nh = len(self.head_row)
        return torch.tensor([self.head_row[e] if e in self.head_row else nh + self.out_row[e]
                             for e in range(len(self.graph.edges))], dtype=torch.long)

    @cached_property
    def layer_node(self) -> torch.Tensor:
        """The node each layer row belongs to."""
        return torch.tensor([v for v, rows in enumerate(self.layer_rows) for _ in rows],
                            dtype=torch.long)

    # --- signatures (what the latency model keys on) -------------------------------------

    def _mb(self, node_in: int, c_out: int, stride: int, cand: Candidate, c_in: int | None = None) -> OpSignature:
        s = self.node_sizes[node_in]
        c_in = self.node_channels[node_in] if c_in is None else c_in
        return OpSignature("mbconv", s, s, c_in, c_out, c_in * cand.t, cand.k, stride, 0, ACT)

    def stride(self, i: int, j: int) -> int:
        return self.node_reductions[j] // self.node_reductions[i]

    def stem_signatures(self) -> list[OpSignature]:
        s, c = self.input_size, self.stem_channels
        return [OpSignature("conv", s, s, self.input_channels, c, 0, 3, self.stem_stride, 0, ACT),
                OpSignature("mbconv_noexpand", self.node_sizes[0], self.node_sizes[0], c, c, c, 3,
                            1, 0, ACT)]

    def head_signature(self, e: int, cand: Candidate) -> OpSignature:
        i, j = self.graph.edges[e]
        return self._mb(i, self.node_channels[j], self.stride(i, j), cand)

    def out_signature(self, e: int) -> OpSignature:
        i, _ = self.graph.edges[e]
        s = self.node_sizes[i]
        return OpSignature("conv", s, s, self.node_channels[i], self.final_channels, 0, 1, 1, 0, ACT)

    def layer_signature(self, node: int, cand: Candidate) -> OpSignature | None:
        if cand.k is None:
            return None
        return self._mb(node, self.node_channels[node], 1, cand)

    def classifier_signature(self) -> OpSignature:
        s = self.node_sizes[self.out_node]
        return OpSignature("head", s, s, self.final_channels, self.num_classes)

    def describe(self) -> dict[str, Any]:
        return {"widths": list(self.widths), "groups": list(self.groups),
                "reductions": list(self.reductions), "layers": list(self.layers),
                "sizes": list(self.node_sizes[1:-1]), "stem_channels": self.stem_channels,
                "stem_stride": self.stem_stride, "final_channels": self.final_channels,
                "max_successors": self.max_successors, "kernels": list(self.kernels),
                "expansions": list(self.expansions), "bn_affine": self.bn_affine}


# ------------------------------------------------------------------------------------------
# cost tables


def macs(sig: OpSignature) -> int:
    """Multiply-accumulates of one op, as torch's FLOP counter counts them (convs and linear)."""
    def out(h: int) -> int:
        return (h + 2 * (sig.kernel // 2) - sig.kernel) // sig.stride + 1

    if sig.type == "conv":
        return out(sig.h) * out(sig.w) * sig.c_in * sig.c_out * sig.kernel ** 2
    if sig.type in ("mbconv", "mbconv_noexpand"):
        ho, wo = out(sig.h), out(sig.w)
        expand = sig.h * sig.w * sig.c_in * sig.mid if sig.type == "mbconv" else 0
        return expand + ho * wo * sig.mid * sig.kernel ** 2 + ho * wo * sig.mid * sig.c_out
    if sig.type == "head":
        return sig.c_in * sig.c_out
    raise ValueError(f"no MAC count for {sig.type!r}")


@dataclass
class CostTable:
    """Per-candidate costs of the space under one cost function (ms of a latency model, or MACs).

    ``head`` is (head rows × candidates), ``stack`` is (layer rows × candidates + skip), ``out``
    the per-edge 1×1 convs into the output node, ``stem`` and ``classifier`` the fixed parts,
    ``base`` the per-network constant.

    Every entry is looked up by the op's ``OpSignature`` (with the input shape it really sees),
    never by position. The authors' table is a positional nested list, and the shipped one holds
    three stack-layer entries for blocks 14–16, which have none in the shipped config; it is
    silently read anyway by the DenseNAS authors' code. Keyed by signature, such a mismatch
    cannot happen. The fixed parts (stem, tail, base) are part of the total, as in the paper;
    being constants they only rescale the log penalty's gradient (pitfall 4).
    """

    head: torch.Tensor
    stack: torch.Tensor
    out: torch.Tensor
    stem: float
    classifier: float
    base: float

    @classmethod
    def build(cls, layout: Layout, cost, base: float = 0.0, skip_fraction: float = 0.1) -> "CostTable":
        cache: dict[OpSignature, float] = {}

        def c(sig: OpSignature) -> float:
            if sig not in cache:
                cache[sig] = float(cost(sig))
            return cache[sig]

        head = torch.zeros(len(layout.head_row), len(layout.head_candidates), dtype=torch.float64)
        for e, r in layout.head_row.items():
            for o, cand in enumerate(layout.head_candidates):
                head[r, o] = c(layout.head_signature(e, cand))
        stack = torch.zeros(layout.n_layer_rows, len(layout.stack_candidates), dtype=torch.float64)
        for node, rows in enumerate(layout.layer_rows):
            for r in rows:
                for o, cand in enumerate(layout.head_candidates):
                    stack[r, o] = c(layout.layer_signature(node, cand))
                # Skip is not free: the paper gives it 1/10 of the first candidate's cost so the
                # cost term does not simply empty every block (DenseNAS, Fang et al., CVPR 2020,
                # chained cost estimation).
                stack[r, layout.skip_index] = skip_fraction * float(stack[r, :layout.skip_index].min())
        out = torch.zeros(len(layout.out_row), dtype=torch.float64)
        for e, r in layout.out_row.items():
            out[r] = c(layout.out_signature(e))
        return cls(head, stack, out, sum(c(s) for s in layout.stem_signatures()),
                   c(layout.classifier_signature()), float(base))

    def edge_and_node_costs(self, layout: Layout, w_head: torch.Tensor, w_stack: torch.Tensor):
        """Expected cost per edge and per node under op weights (rows summing to 1, or one-hot):
        the inputs of ``routing.chained_cost``."""
        # on the weights' device (a no-op where the table is already there)
        dev = w_head.device
        head_rows = (w_head.to(self.head.dtype) * self.head.to(dev)).sum(1)
        stack_rows = (w_stack.to(self.stack.dtype) * self.stack.to(dev)).sum(1)
        # edges: the head rows, then the fixed 1×1 convs, put in edge order
        edge = torch.cat([head_rows, self.out.to(dev)])[layout.edge_gather.to(dev)]
        node = torch.zeros(layout.graph.n, dtype=head_rows.dtype, device=dev).index_add(
            0, layout.layer_node.to(dev), stack_rows)
        fixed = torch.zeros(layout.graph.n, dtype=head_rows.dtype, device=dev)
        fixed[0] += self.stem
        fixed[layout.out_node] += self.classifier
        return edge, node + fixed


# ------------------------------------------------------------------------------------------
# the supernet


def _strip_affine(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d inside ``module`` by one without affine parameters."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.BatchNorm2d(child.num_features, eps=child.eps,
                                                 momentum=child.momentum, affine=False))
        else:
            _strip_affine(child)
    return module


class DenseNASSupernet(nn.Module):
    """Dense routing blocks with a mixed head per incoming edge and mixed stacked layers.

    ``forward(x, head_sel, stack_sel, p)`` runs one realisation: for each head row and layer row
    a list of candidate indices and their weights (``None``: weight 1), and the transition
    probabilities ``p`` (one per edge) that weight the head (and output-branch) sums.
    """

    def __init__(self, layout: Layout, nested_init: bool = True):
        super().__init__()
        self.layout = L = layout
        g = L.graph
        fix = (lambda m: m) if L.bn_affine else _strip_affine
        self.stem = fix(Conv(L.input_channels, L.stem_channels, 3, L.stem_stride, act=ACT))
        c0 = L.stem_channels
        self.stem_mb = fix(MBConv(c0, c0, c0, 3, 1, expand=False, act=ACT))
        self.heads = nn.ModuleList()
        for e in sorted(L.head_row, key=L.head_row.get):
            i, j = g.edges[e]
            ci, cj, s = L.node_channels[i], L.node_channels[j], L.stride(i, j)
            self.heads.append(nn.ModuleList(
                fix(MBConv(ci, cj, ci * c.t, c.k, s, act=ACT)) for c in L.head_candidates))
        self.layers = nn.ModuleList()
        for node, rows in enumerate(L.layer_rows):
            c = L.node_channels[node]
            for _ in rows:
                self.layers.append(nn.ModuleList(
                    fix(MBConv(c, c, c * k.t, k.k, 1, act=ACT)) for k in L.head_candidates))
        self.out_convs = nn.ModuleList()
        for e in sorted(L.out_row, key=L.out_row.get):
            i, _ = g.edges[e]
            self.out_convs.append(fix(Conv(L.node_channels[i], L.final_channels, 1, 1, act=ACT)))
        self.classifier = Head(L.final_channels, L.num_classes)
        # Architecture parameters, 1e-3·N(0, 1) (paper): β one entry per edge (a softmax per
        # source block over its outgoing edges), α per mixed op.
        self.beta = nn.Parameter(1e-3 * torch.randn(len(g.edges)))
        self.alpha_head = nn.Parameter(1e-3 * torch.randn(len(L.head_row), len(L.head_candidates)))
        self.alpha_stack = nn.Parameter(1e-3 * torch.randn(L.n_layer_rows, len(L.stack_candidates)))
        if nested_init:
            self.nest_candidates()
        # Filled in by the search: the derived architectures of the best validation epochs.
        self.seed: int | None = None

    @torch.no_grad()
    def nest_candidates(self) -> None:
        """Start every candidate of a mixed op as the same function as its smallest candidate.

        Not in the paper, which initialises the candidates independently and warms the supernet
        up for 50 ImageNet-100 epochs (≈18k steps). A CPU run has a few hundred steps, and with
        independent inits single-path sampling does not train at all there: each step swaps
        unrelated functions in under the shared layers (on digits the supernet stays at chance
        for 10 epochs; nested, it reaches ~80% validation accuracy). So the smallest kernel is
        the centre of the larger ones (their outer ring starts at 0) and the smallest expansion's
        channels are the first channels of the larger ones (the extra channels' projection
        starts at 0, so they add nothing until trained). The candidates remain separate
        parameters, trained only when sampled, as in the paper; only their starting point is
        shared."""
        cands = self.layout.head_candidates
        small = min(range(len(cands)), key=lambda o: (cands[o].t, cands[o].k))
        for mods in [*self.heads, *self.layers]:
            ref = mods[small]
            m0, k0 = ref.dw[0].weight.shape[0], ref.k
            for o, mod in enumerate(mods):
                if o == small:
                    continue
                off = (mod.k - k0) // 2
                mod.expand[0].weight[:m0].copy_(ref.expand[0].weight)
                mod.dw[0].weight[:m0].zero_()
                mod.dw[0].weight[:m0, :, off:off + k0, off:off + k0].copy_(ref.dw[0].weight)
                mod.project[0].weight.zero_()
                mod.project[0].weight[:, :m0].copy_(ref.project[0].weight)

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.beta, self.alpha_head, self.alpha_stack]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def transition_probs(self) -> torch.Tensor:
        return self.layout.graph.transition_probs(self.beta)

    @staticmethod
    def _mixed(mods: Sequence[nn.Module], sel, x: torch.Tensor, skip: int | None = None) -> torch.Tensor:
        ops, w = sel
        out = None
        for k, o in enumerate(ops):
            y = x if o == skip else mods[o](x)
            if w is not None:
                y = y * w[k]
            out = y if out is None else out + y
        return out

    def forward(self, x: torch.Tensor, head_sel: Sequence, stack_sel: Sequence,
                p: torch.Tensor) -> torch.Tensor:
        L, g = self.layout, self.layout.graph
        feats: list[torch.Tensor | None] = [None] * g.n
        feats[0] = self.stem_mb(self.stem(x))
        for j in range(1, g.n):
            acc = None
            for e in g.in_edges[j]:
                i = g.edges[e][0]
                if j == L.out_node:
                    y = self.out_convs[L.out_row[e]](feats[i])
                else:
                    r = L.head_row[e]
                    y = self._mixed(self.heads[r], head_sel[r], feats[i])
                y = y * p[e]
                acc = y if acc is None else acc + y
            for r in L.layer_rows[j]:
                acc = self._mixed(self.layers[r], stack_sel[r], acc, skip=L.skip_index)
            feats[j] = acc
        return self.classifier(feats[L.out_node])

    # --- realisations --------------------------------------------------------------------

    def full_selection(self) -> tuple[list, list]:
        """Every candidate, weighted by softmax(α) (supernet validation)."""
        wh = torch.softmax(self.alpha_head, 1)
        ws = torch.softmax(self.alpha_stack, 1)
        heads = [(list(range(wh.shape[1])), wh[r]) for r in range(wh.shape[0])]
        stacks = [(list(range(ws.shape[1])), ws[r]) for r in range(ws.shape[0])]
        return heads, stacks
