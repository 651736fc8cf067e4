"""Derivation: λ → which edges and ops survive → a network spec in nas2deploy's op vocabulary.

Pruning (DSO-NAS, Zhang et al. 2018, pruning after search): an edge is removed when its λ is exactly
0; then dead ops are removed until nothing changes. An op is dead when no non-zero edge from a live
source feeds it, or when no non-zero edge carries it to a live consumer (a later op or the block
output); removing an op zeroes all its edges. The fixed point is exactly the set of ops reachable
from the block input *and* reaching the block output through non-zero edges.

The spec mirrors the supernet node by node (ids ``{unit}_op_{m}_{n}``, ``{unit}_proj_{m}_{n}``,
``{unit}_in_{m}_{n}``, ``{unit}_sum``, ``{unit}_bn``, ``{unit}_short``, ``{unit}_add``,
``r{s}_c1``/``r{s}_c3``/``r{s}_sum``), so weights are inherited by id. With ``keep_scales`` the
surviving λ become the constant coefficients of the ``sum`` nodes, and the derived network with
inherited weights computes what the supernet computes once the dead edges' λ are zeroed (eval
mode). Without it the sums are plain, as in the paper's final network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from nas2deploy.method import TaskSpec

from .config import DSONASConfig
from .space import (NormalBlock, NormalUnit, ReductionUnit, final_width, layout, op_params,
                    proj_params, reduction_params, shortcut_params, stem_params)

REDUCTION_BRANCHES = ("conv1x1", "conv3x3")


@dataclass
class BlockCut:
    """What survives of one normal block: live ops and live edges (both after the closure)."""

    alive: np.ndarray  # bool M × N
    edges_in: list[np.ndarray]  # per level, bool N × (1 + N·m)
    edges_out: np.ndarray  # bool M × N


def closure(lam_in: Sequence[Any], lam_out: Any) -> BlockCut:
    """Zero-λ edges removed, then dead ops removed until nothing changes."""
    ein = [np.asarray(l, dtype=np.float64) != 0 for l in lam_in]
    eout = np.asarray(lam_out, dtype=np.float64) != 0
    levels, n_ops = eout.shape
    alive = np.ones((levels, n_ops), dtype=bool)
    changed = True
    while changed:
        changed = False
        for m in range(levels):
            for n in range(n_ops):
                if not alive[m, n]:
                    continue
                col = 1 + n_ops * m + n
                fed = bool(ein[m][n].any())
                used = bool(eout[m, n]) or any(bool(ein[k][:, col].any()) for k in range(m + 1, levels))
                if fed and used:
                    continue
                alive[m, n] = False
                changed = True
                ein[m][n, :] = False
                eout[m, n] = False
                for k in range(m + 1, levels):
                    ein[k][:, col] = False
    return BlockCut(alive, ein, eout)


def _src_label(col: int, n_ops: int) -> str:
    if col == 0:
        return "in"
    m, n = divmod(col - 1, n_ops)
    return f"op{m + 1}.{n + 1}"


def _coeffs(values: list[float], keep_scales: bool) -> dict[str, Any]:
    if not keep_scales or all(v == 1.0 for v in values):
        return {}
    return {"coeffs": [float(v) for v in values]}


class _Spec:
    def __init__(self):
        self.nodes: list[dict[str, Any]] = []

    def add(self, nid: str, op: str, inputs: list[str], **params: Any) -> str:
        self.nodes.append({"id": nid, "op": op, "inputs": list(inputs), **params})
        return nid

    def weighted_sum(self, nid: str, inputs: list[str], values: list[float], keep_scales: bool) -> str:
        """A sum node over ``inputs`` scaled by ``values`` (or plain); a lone unscaled input is
        passed through without a node."""
        extra = _coeffs(values, keep_scales)
        if len(inputs) == 1 and not extra:
            return inputs[0]
        return self.add(nid, "sum", inputs, **extra)


def derive(cfg: DSONASConfig, task: TaskSpec, lam_values: list[Any], *,
           keep_scales: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(network spec, decisions) for λ given as ``DSONASSupernet.lambda_values()`` returns them."""
    units = layout(cfg, task)
    if len(units) != len(lam_values):
        raise ValueError(f"{len(lam_values)} λ groups for {len(units)} units")
    spec = _Spec()
    cur = spec.add("stem", "conv", ["input"], **stem_params(task.input_channels, cfg.base_width, cfg.stem_stride))
    edges: dict[str, float] = {}
    blocks: dict[str, Any] = {}
    reductions: dict[str, Any] = {}
    guards: list[str] = []
    alive_total = total = 0
    n_ops = len(cfg.ops)

    for unit, lam in zip(units, lam_values):
        if isinstance(unit, NormalUnit):
            lam_in = [np.asarray(l, dtype=np.float64) for l in lam[0]]
            lam_out = np.asarray(lam[1], dtype=np.float64)
            cut = closure(lam_in, lam_out)
            p, c = unit.name, unit.width
            src_ids = [cur] + [f"{p}_op_{m + 1}_{n + 1}" for m in range(cfg.levels) for n in range(n_ops)]
            n_alive_edges = 0
            alive_ops: dict[str, str] = {}
            for m in range(cfg.levels):
                for n in range(n_ops):
                    if not cut.alive[m, n]:
                        continue
                    label = f"op{m + 1}.{n + 1}"
                    alive_ops[label] = cfg.ops[n]
                    cols = np.flatnonzero(cut.edges_in[m][n]).tolist()
                    values = [float(lam_in[m][n, j]) for j in cols]
                    for j, v in zip(cols, values):
                        edges[f"{p}:{_src_label(j, n_ops)}->{label}"] = v
                    n_alive_edges += len(cols)
                    x = spec.weighted_sum(f"{p}_in_{m + 1}_{n + 1}", [src_ids[j] for j in cols],
                                          values, keep_scales)
                    op, params = op_params(cfg.ops[n], c)
                    spec.add(f"{p}_op_{m + 1}_{n + 1}", op, [x], **params)
            outs, out_values = [], []
            for m in range(cfg.levels):
                for n in range(n_ops):
                    if cut.edges_out[m, n]:
                        v = float(lam_out[m, n])
                        edges[f"{p}:op{m + 1}.{n + 1}->out"] = v
                        outs.append(spec.add(f"{p}_proj_{m + 1}_{n + 1}", "conv",
                                             [f"{p}_op_{m + 1}_{n + 1}"], **proj_params(c)))
                        out_values.append(v)
            n_alive_edges += len(outs)
            n_edges = sum(l.size for l in lam_in) + lam_out.size
            shortcut = (spec.add(f"{p}_short", "conv", [cur], **shortcut_params(c))
                        if unit.conv_shortcut else cur)
            if outs:
                y = spec.weighted_sum(f"{p}_sum", outs, out_values, keep_scales)
                y = spec.add(f"{p}_bn", "bn_act", [y], c=c, act="relu")
                cur = spec.add(f"{p}_add", "sum", [y, shortcut])
            else:
                cur = shortcut  # an empty block is its shortcut alone
            blocks[p] = {"alive_ops": alive_ops, "alive_edges": n_alive_edges, "total_edges": int(n_edges),
                         "empty": not outs}
            alive_total += n_alive_edges
            total += int(n_edges)
        else:
            assert isinstance(unit, ReductionUnit)
            lam_r = [float(v) for v in lam]
            kept = [i for i in range(2) if lam_r[i] != 0]
            values = [lam_r[i] for i in kept]
            guard = None
            if not kept:
                # Both λ are 0: the authors' code would sum an empty list. Keep the branch with the
                # larger λ (the 3×3 one on a tie), unscaled, so the stage still has an input.
                i = 0 if lam_r[0] > lam_r[1] else 1
                kept, values = [i], [1.0]
                guard = (f"{unit.name}: both reduction λ are 0; kept the {REDUCTION_BRANCHES[i]} "
                         f"branch with coefficient 1")
                guards.append(guard)
            else:
                for i in kept:
                    edges[f"{unit.name}:{REDUCTION_BRANCHES[i]}"] = lam_r[i]
                alive_total += len(kept)
            total += 2
            ids = []
            for i in kept:
                k = 1 if i == 0 else 3
                ids.append(spec.add(f"{unit.name}_c{k}", "conv", [cur],
                                    **reduction_params(unit.c_in, unit.c_out, k)))
            cur = spec.weighted_sum(f"{unit.name}_sum", ids, values, keep_scales)
            reductions[unit.name] = {"kept": [REDUCTION_BRANCHES[i] for i in kept], "lambda": lam_r,
                                     "guard": guard}

    spec.add("head", "head", [cur], c_in=final_width(cfg), num_classes=task.num_classes)
    network = {"input": {"channels": task.input_channels, "size": [task.input_size, task.input_size]},
               "num_classes": task.num_classes, "nodes": spec.nodes, "output": "head"}
    decisions = {"alive_edges": alive_total, "total_edges": total, "keep_scales": keep_scales,
                 "blocks": blocks, "reductions": reductions, "guards": guards, "edges": edges}
    return network, decisions


# --------------------------------------------------------------------------------------------
# helpers on a live supernet


def uniform_lambdas(cfg: DSONASConfig, task: TaskSpec, *, normal: float,
                    reduction: tuple[float, float]) -> list[Any]:
    """λ values of the right shapes, every normal edge ``normal``, reductions ``reduction``."""
    n = len(cfg.ops)
    vals: list[Any] = []
    for unit in layout(cfg, task):
        if isinstance(unit, NormalUnit):
            vals.append(([[[normal] * (1 + n * m) for _ in range(n)] for m in range(cfg.levels)],
                         [[normal] * n for _ in range(cfg.levels)]))
        else:
            vals.append(list(reduction))
    return vals


@torch.no_grad()
def zero_dead_edges(supernet) -> int:
    """Zero, in place, the λ of every edge the closure removes; returns how many were non-zero.

    Afterwards the supernet computes what the derived network computes (eval mode), except that
    an empty normal block still adds the constant ReLU(BN(0)) the derived net drops.
    """
    changed = 0
    for unit in supernet.units:
        if not isinstance(unit, NormalBlock):
            continue
        cut = closure([t.detach().cpu().numpy() for t in unit.lam_in], unit.lam_out.detach().cpu().numpy())
        for t, keep in zip([*unit.lam_in, unit.lam_out], [*cut.edges_in, cut.edges_out]):
            mask = torch.as_tensor(keep, dtype=torch.bool, device=t.device)
            changed += int(((t != 0) & ~mask).sum())
            t.masked_fill_(~mask, 0.0)
    return changed


def alive_masks(supernet) -> list[torch.Tensor]:
    """Per λ tensor (in ``arch_parameters()`` order): 1.0 where the edge survives the closure.
    On the CPU, wherever the supernet is."""
    masks: list[torch.Tensor] = []
    for unit in supernet.units:
        if isinstance(unit, NormalBlock):
            cut = closure([t.detach().cpu().numpy() for t in unit.lam_in], unit.lam_out.detach().cpu().numpy())
            masks.extend(torch.as_tensor(e, dtype=torch.float32) for e in [*cut.edges_in, cut.edges_out])
        else:
            masks.append((unit.lam.detach() != 0).float().cpu())
    return masks
