"""Architecture -> a plain, physically smaller nn.Module; and width scaling by channel surgery.

Decision and surgery are separate: a method (or the budget loop) decides *how much* to keep;
torch-pruning's dependency graph decides *which* coupled channels go together (residual adds,
sums of DAG edges, depthwise groups) and removes them, keeping the most important by L2 norm.
The spec is then read back from the pruned modules, so the architecture JSON always describes
exactly the tensors that were saved.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from .architecture import Architecture
from .errors import Nas2DeployError
from .netspec import GraphNet, build_network
from .ops import Head


def materialize(arch: Architecture, weights: dict[str, torch.Tensor] | None = None) -> GraphNet:
    """Build the subnet an architecture describes; copy ``weights`` in where names match."""
    net = build_network(arch.network)
    if weights:
        own = net.state_dict()
        for name, tensor in weights.items():
            if name not in own:
                raise Nas2DeployError(f"inherited weight {name!r} has no place in the subnet")
            if own[name].shape != tensor.shape:
                raise Nas2DeployError(f"inherited weight {name!r} has shape {tuple(tensor.shape)}, "
                                      f"subnet expects {tuple(own[name].shape)}")
            own[name] = tensor.detach().clone()
        net.load_state_dict(own)
    return net


def scale_width(net: GraphNet, multiplier: float, *, round_to: int = 1) -> GraphNet:
    """A copy of ``net`` with every prunable channel group kept at ``multiplier`` of its width.

    The input and the classifier's outputs are never pruned. Channels are chosen by L2 magnitude,
    so weights a net inherited (or was trained to) survive where they matter most.
    """
    if not 0 < multiplier <= 1:
        raise ValueError(f"width multiplier must be in (0, 1], not {multiplier}")
    net = copy.deepcopy(net).eval()
    if multiplier >= 0.999:
        return net
    heads = [m.fc for m in net.modules() if isinstance(m, Head)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.BasePruner(
            net, net.example_input(1), importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=1.0 - multiplier, ignored_layers=heads, round_to=round_to or None,
            global_pruning=False)
        pruner.step()
    return GraphNet(net.spec()).load_state_dict_from(net)


def _load_from(self: GraphNet, other: nn.Module) -> GraphNet:
    self.load_state_dict(other.state_dict())
    return self


GraphNet.load_state_dict_from = _load_from  # type: ignore[attr-defined]


def spec_width(spec: dict[str, Any]) -> int:
    """Total output channels over conv-like nodes: a quick size summary for logs."""
    return sum(int(n.get("c_out", n.get("c", 0))) for n in spec["nodes"] if n["op"] != "head")
