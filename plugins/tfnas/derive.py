"""Derivation: argmax op per block, depth argmax β + 1 per stage, widths from the masks.

The network is a chain ``stem → stem_mb → s1_b1 … → tail → head`` of ``nas2deploy.ops`` nodes;
a stage keeps its first d blocks, each an ``mbconv`` at its active mid width (the residual is
the op's own, present when stride is 1 and c_in == c_out). The inherited weights are the fixed
parts' state dicts and, per kept block, the parsed op's active channels index-selected out of
its full-width tensors (``ElasticMBConv.export_state``): no masks survive.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .config import OP_NAMES
from .space import Layout, TFNASSupernet


def network_spec(layout: Layout, ops: Sequence[int], depths: Sequence[int],
                 mids: Sequence[int]) -> dict[str, Any]:
    """The netspec of one architecture (``ops``, ``mids`` per global block; ``depths`` per stage)."""
    nodes = [dict(n) for n in layout.fixed_nodes]
    prev = nodes[-1]["id"]
    i = 0
    for st, d in zip(layout.stages, depths):
        if not 1 <= d <= len(st):
            raise ValueError(f"depth {d} outside 1..{len(st)}")
        for b in st[:d]:
            nodes.append(b.node(ops[i + b.index], mids[i + b.index], [prev]))
            prev = b.name
        i += len(st)
    tail, head = (dict(n) for n in layout.tail_nodes)
    tail["inputs"] = [prev]
    nodes += [tail, head]
    return {"input": {"channels": layout.input_channels, "size": [layout.input_size] * 2},
            "num_classes": layout.num_classes, "nodes": nodes, "output": "head"}


def parsed(net: TFNASSupernet) -> tuple[list[int], list[int], list[int]]:
    """(ops, depths, mids) of the parsed architecture; mids per global block (the parsed op's)."""
    ops, depths = net.parsed_ops(), net.parsed_depths()
    mids = [b.ops[o].mid for b, o in zip(net.blocks(), ops)]
    return ops, depths, mids


def decisions(net: TFNASSupernet, ops: Sequence[int], depths: Sequence[int],
              mids: Sequence[int]) -> dict[str, Any]:
    with torch.no_grad():
        # α are log-probabilities, β logits (as in the TF-NAS authors' code)
        probs = torch.exp(net.alpha).tolist()
        depth_probs = [torch.softmax(b, 0).tolist() for b in net.betas]
    blocks = []
    i = 0
    for s, (st, d) in enumerate(zip(net.layout.stages, depths)):
        for b in st:
            j = i + b.index
            op = net.blocks()[j].ops[ops[j]]
            blocks.append({"id": b.name, "stage": s + 1, "kept": b.index < d, "op": OP_NAMES[ops[j]],
                           "mid": int(mids[j]), "mid_range": [op.mid_min, op.mid_max],
                           "op_probs": [round(p, 6) for p in probs[j]]})
        i += len(st)
    return {"ops": list(OP_NAMES), "depths": list(depths),
            "depth_probs": [[round(p, 6) for p in dp] for dp in depth_probs], "blocks": blocks}


def inherited(net: TFNASSupernet, spec: dict[str, Any], ops: Sequence[int], *,
              live: bool = False) -> dict[str, torch.Tensor]:
    """Supernet weights for the network ``spec`` (whose blocks use ``ops``, per global block),
    keyed by the ``GraphNet`` state_dict names ``nodes.<id>.<...>``: CPU copies, or with
    ``live`` the supernet's own tensors (slices of them for elastic widths), where they are.
    A block's width other than its op's current one takes the channels ``set_width`` would."""
    out: dict[str, torch.Tensor] = {}
    for name, mod in net.fixed_modules().items():
        for key, t in mod.state_dict(keep_vars=live).items():
            out[f"nodes.{name}.{key}"] = t if live else t.detach().cpu().clone()
    by_name = {b.name: (j, blk) for j, (b, blk) in enumerate(zip(net.layout.blocks, net.blocks()))}
    for node in spec["nodes"]:
        if node["id"] not in by_name:
            continue
        j, blk = by_name[node["id"]]
        op = blk.ops[ops[j]]
        for key, t in op.export_state(node["mid"], live=live).items():
            out[f"nodes.{node['id']}.{key}"] = t if live else t.cpu()
    return out
