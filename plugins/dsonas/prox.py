"""APG-NAG: accelerated proximal gradient (Nesterov form) for min f(λ) + Σ_e γ_e·|λ_e|, λ ≥ 0.

This is the update DSO-NAS (Zhang et al. 2018, optimization and training) takes from Sparse
Structure Selection (Huang & Wang, ECCV 2018). With step η and momentum μ, per element::

    z = λ − η·∇f(λ)
    s = sign(z)·max(|z| − η·γ, 0)        # prox of η·γ·|·|: soft-thresholding
    v ← s − λ + μ·v
    λ ← s + μ·v
    λ ← max(λ, 0)

The ℓ1 term never enters autograd: only ∇f is computed by backprop, and the soft-threshold makes
exact zeros, so an edge is removed when its λ is exactly 0, with no threshold to tune.

With γ = 0 and no clamp this is exactly PyTorch's SGD with Nesterov momentum (v = −η·buf).
"""

from __future__ import annotations

from typing import Sequence

import torch


def soft_threshold(z: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """sign(z)·max(|z| − t, 0), element-wise (t ≥ 0, a scalar or broadcastable tensor)."""
    return z.sign() * (z.abs() - t).clamp_min(0)


class APGNAG:
    """The λ optimiser. ``step(grads, gammas)`` takes the gradients of the smooth loss only.

    ``gammas`` gives the ℓ1 weight per parameter (a float or a tensor shaped like it);
    ``masks``, if given, holds 0 where an edge was removed for good (its λ and velocity are
    kept at 0) and 1 elsewhere. ``grad_clip`` clips each gradient element to ±grad_clip first.
    """

    def __init__(self, params: Sequence[torch.Tensor], lr: float, momentum: float = 0.9, *,
                 nonnegative: bool = True, grad_clip: float = 0.0):
        self.params = list(params)
        self.lr, self.momentum = float(lr), float(momentum)
        self.nonnegative, self.grad_clip = nonnegative, float(grad_clip)
        self.velocity = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor | None], gammas: Sequence[torch.Tensor | float] | float,
             masks: Sequence[torch.Tensor] | None = None) -> None:
        if not isinstance(gammas, (list, tuple)):
            gammas = [gammas] * len(self.params)
        if len(grads) != len(self.params) or len(gammas) != len(self.params):
            raise ValueError("APGNAG.step needs one gradient and one gamma per parameter")
        lr, mu = self.lr, self.momentum
        for i, (p, g, v, gam) in enumerate(zip(self.params, grads, self.velocity, gammas)):
            g = torch.zeros_like(p) if g is None else g
            if self.grad_clip > 0:
                g = g.clamp(-self.grad_clip, self.grad_clip)
            z = p - lr * g
            s = soft_threshold(z, lr * gam if isinstance(gam, torch.Tensor) else lr * float(gam))
            v.mul_(mu).add_(s - p)
            p.copy_(s + mu * v)
            if self.nonnegative:
                p.clamp_(min=0)
            if masks is not None:
                p.mul_(masks[i])
                v.mul_(masks[i])

    def state_dict(self) -> dict:
        return {"lr": self.lr, "momentum": self.momentum,
                "velocity": [v.clone() for v in self.velocity]}
