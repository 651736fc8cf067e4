"""Parameter and MAC counts, by torch's own FLOP counter (not a hand-written one)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass on ``example`` (batch included).

    torch counts a multiply-add as 2 FLOPs; MACs are half of that. Pooling, BN and elementwise
    ops are not counted, as in the literature's MAC figures.
    """
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(example)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops() // 2)


def count_layers(model: nn.Module) -> int:
    """Convolutions and linear layers: the kernels a CPU runtime runs one after another (BN and
    activations are folded or fused into them at load)."""
    return sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
