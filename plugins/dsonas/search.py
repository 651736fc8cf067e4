"""The DSO-NAS search loop: pre-train W with λ ≡ 1, then alternate W (NAG) and λ (APG-NAG) steps.

Each step touches only its own parameter set and its own data split (DSO-NAS, Zhang et al. 2018,
optimization and training; the authors' code pre-trains on the W split alone): a weight step takes
gradients for ``weight_parameters()`` only, on a batch of the W split; a λ step takes gradients for
``arch_parameters()`` only, on a batch of the λ split, and applies the proximal ℓ1 step.
Pre-training uses the W split only.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
import torch.nn.functional as F

from nas2deploy.checkpoint import load_module_state, module_state
from nas2deploy.device import Compute, LossScale
from nas2deploy.train import accuracy, recalibrate_bn, split_epochs

from .config import DSONASConfig
from .derive import alive_masks, zero_dead_edges
from .prox import APGNAG
from .space import DSONASSupernet, NormalBlock, edge_costs


class Searcher:
    """Optimiser state and the two kinds of step, on one supernet."""

    def __init__(self, supernet: DSONASSupernet, cfg: DSONASConfig, compute: Compute | None = None,
                 average: Callable[[list], None] | None = None):
        self.net, self.cfg = supernet, cfg
        # data-parallel: gradients averaged across ranks before every step (None: one process)
        self.average = average
        # where and in what precision the steps run (the supernet is already on that device)
        self.compute = compute if compute is not None else Compute(torch.device("cpu"), "off")
        self.w_params = supernet.weight_parameters()
        self.a_params = supernet.arch_parameters()
        self.w_opt = torch.optim.SGD(self.w_params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                                     weight_decay=cfg.weight_decay)
        self.a_opt = APGNAG(self.a_params, cfg.arch_lr, cfg.arch_momentum, grad_clip=cfg.grad_clip)
        costs = edge_costs(supernet) if cfg.adaptive_cost != "none" else None
        # MACs per edge on the CPU (read as Python floats against the CPU alive masks) and on
        # λ's device (the γ tensors of the proximal step); one list on a CPU search.
        self.costs_cpu = costs
        device = self.a_params[0].device if self.a_params else torch.device("cpu")
        self.costs = None if costs is None else [c.to(device) for c in costs]
        # fp16 loss scaling, one per parameter group (disabled, plain autograd.grad, otherwise)
        self.w_scale = LossScale(self.compute)
        self.a_scale = LossScale(self.compute)
        # 0 where an edge was removed for good at a rebuild; it then stays at exactly 0.
        self.masks = [torch.ones_like(p) for p in self.a_params]
        # γ's multiplier from the budget (``budget_pressure``), set by the loop every epoch
        self.pressure = 1.0
        self.w_steps = 0
        self.arch_steps = 0

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.net.train()
        return F.cross_entropy(self.net(x), y)

    def weight_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One NAG step on W (W split batch); λ is read, never written. (The authors' code also
        clamps λ ≥ 0 after weight-only iterations; λ is already ≥ 0 there, so that is a no-op and
        is left out, which keeps λ bit-identical across a W step.)"""
        with self.compute.autocast():
            loss = self._loss(x, y)
        grads = self.w_scale.grads(loss, self.w_params, average=self.average)
        if grads is None:  # fp16 overflow: the scale was lowered, this step is skipped
            self.w_steps += 1
            return float(loss.detach())
        clip = self.cfg.grad_clip
        for p, g in zip(self.w_params, grads):
            g = torch.zeros_like(p) if g is None else g
            p.grad = g.clamp(-clip, clip) if clip > 0 else g
        self.w_opt.step()
        for p in self.w_params:
            p.grad = None
        self.w_steps += 1
        return float(loss.detach())

    def gammas(self) -> list[torch.Tensor] | float:
        """ℓ1 weight per edge (times ``pressure``), recomputed at every λ step from what is
        alive after the dead-op closure. "flops" (DSO-NAS, Zhang et al. 2018, budget-aware
        γ: adaptive FLOPs): every edge of a block gets γ·FLOPs_b^t / FLOPs_b, so pruning a
        block's costly parts lowers the pressure on what survives there. "mac": γ·MACs_e / the
        costliest alive edge's MACs. "none": γ for all."""
        gamma = self.cfg.gamma * self.pressure
        if self.costs is None:
            return gamma
        alive = alive_masks(self.net)  # on the CPU
        if self.cfg.adaptive_cost == "flops":
            return [torch.full_like(c, gamma * share) for c, share in
                    zip(self.costs, block_shares(self.net, self.costs_cpu, alive))]
        top = max(float((c * a).max()) for c, a in zip(self.costs_cpu, alive))
        if top <= 0:
            top = max(float(c.max()) for c in self.costs_cpu)
        return [gamma * c / top for c in self.costs]

    def arch_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One APG-NAG step on λ (λ split batch); W is read, never written. The forward runs
        under the run's autocast; λ, their (unscaled, float32) gradients and the proximal step
        stay in float32."""
        with self.compute.autocast():
            loss = self._loss(x, y)
        grads = self.a_scale.grads(loss, self.a_params, average=self.average)
        if grads is None:  # fp16 overflow: the scale was lowered, this step is skipped
            self.arch_steps += 1
            return float(loss.detach())
        self.a_opt.step(grads, self.gammas(), self.masks)
        self.arch_steps += 1
        return float(loss.detach())

    def state(self) -> dict[str, Any]:
        """What a checkpoint needs beside the supernet's own tensors."""
        return {"w_opt": self.w_opt.state_dict(), "velocity": self.a_opt.velocity,
                "masks": self.masks, "steps": [self.w_steps, self.arch_steps],
                "scales": [self.w_scale.state_dict(), self.a_scale.state_dict()]}

    @torch.no_grad()
    def load_state(self, state: dict[str, Any]) -> None:
        self.w_opt.load_state_dict(state["w_opt"])
        for v, saved in zip(self.a_opt.velocity, state["velocity"]):
            v.copy_(saved)
        self.masks = [m.to(p.device) for m, p in zip(state["masks"], self.a_params)]
        self.w_steps, self.arch_steps = state["steps"]
        self.w_scale.load_state_dict(state["scales"][0])
        self.a_scale.load_state_dict(state["scales"][1])

    @torch.no_grad()
    def rebuild(self) -> int:
        """The paper's periodic rebuild of the pruned supernet, done with masks: dead edges'
        λ are zeroed and every zero λ stays 0 from now on. Returns the edges zeroed by closure."""
        n = zero_dead_edges(self.net)
        self.masks = [(p != 0).to(p.dtype) for p in self.a_params]
        for v, m in zip(self.a_opt.velocity, self.masks):
            v.mul_(m)
        return n


def block_shares(net: DSONASSupernet, costs: list[torch.Tensor],
                 alive: list[torch.Tensor]) -> list[float]:
    """Per λ tensor (``arch_parameters()`` order): the share of its unit's FLOPs still alive,
    FLOPs_b^t / FLOPs_b. A normal block's FLOPs are its ops (each once, alive while any of its
    input edges is) and its output 1×1 convs; a reduction's, its two branches. ``costs`` from
    ``edge_costs``, ``alive`` from ``alive_masks``."""
    shares: list[float] = []
    k = 0
    for unit in net.units:
        n = len(unit.arch_parameters())
        c, a = costs[k:k + n], alive[k:k + n]
        if isinstance(unit, NormalBlock):
            full = sum(float(ci[:, 0].sum()) for ci in c[:-1]) + float(c[-1].sum())
            now = (sum(float((ci[:, 0] * (ai.sum(1) > 0)).sum()) for ci, ai in zip(c[:-1], a[:-1]))
                   + float((c[-1] * a[-1]).sum()))
        else:
            full, now = float(c[0].sum()), float((c[0] * a[0]).sum())
        shares += [now / full if full > 0 else 1.0] * n
        k += n
    return shares


def run_search(method, supernet: DSONASSupernet, ctx) -> Searcher:
    """Pre-train, then search, for ``ctx.epochs`` epochs in all; one history row per epoch."""
    cfg: DSONASConfig = method.config
    torch.manual_seed(ctx.seed)
    supernet.seed = ctx.seed
    data = ctx.data
    bs = int(ctx.batch_size)
    gen_w = torch.Generator().manual_seed(ctx.seed)
    gen_a = torch.Generator().manual_seed(ctx.seed + 1)
    compute = getattr(ctx, "compute", None) or Compute(torch.device("cpu"), "off")
    searcher = Searcher(supernet, cfg, compute, average=getattr(ctx, "average", None))
    n_pre, n_search = split_epochs(int(ctx.epochs), cfg.pretrain_fraction)
    total_edges = sum(p.numel() for p in searcher.a_params)
    a_batches = data.cycle("arch", bs, gen_a)
    search_w_steps = 0  # W steps since the search phase began: every k-th is followed by a λ step
    ctx.log(f"dsonas: {n_pre} pre-train + {n_search} search epochs, {total_edges} edges, "
            f"gamma {cfg.gamma:g} ({cfg.adaptive_cost})")
    first = 0
    resumed = ctx.restore_state() if hasattr(ctx, "restore_state") else None
    if resumed is not None:
        first, state = resumed
        load_module_state(supernet, state["supernet"])
        searcher.load_state(state["searcher"])
        gen_w.set_state(state["gen_w"].get_state())
        a_batches.load_state(state["arch_batches"])
        data.load_state(state["data"])
        search_w_steps = state["search_w_steps"]

    aim_ms = (float(getattr(ctx, "aim", 0.95)) * ctx.budget_ms
              if cfg.budget_pressure and ctx.budget_ms and ctx.latency_model is not None else None)
    for epoch in range(first, n_pre + n_search):
        phase = "pretrain" if epoch < n_pre else "search"
        if phase == "search" and aim_ms is not None:
            # from the supernet as it stands (a resumed search computes the same)
            est = float(ctx.latency_model.predict(method.decided(supernet).network))
            searcher.pressure = min(4.0, max(0.25, est / aim_ms))
        batches = data.epoch("weights", bs, gen_w)
        bar = ctx.progress(total=data.n_batches("weights", bs),
                           desc=f"dsonas {phase} {epoch + 1}/{n_pre + n_search}") \
            if ctx.progress is not None else None
        t0 = time.perf_counter()
        w_losses: list[float] = []
        a_losses: list[float] = []
        w0, a0 = searcher.w_steps, searcher.arch_steps
        try:
            for xw, yw in batches:
                w_losses.append(searcher.weight_step(xw, yw))
                if phase == "search":
                    search_w_steps += 1
                if phase == "search" and search_w_steps % cfg.w_steps_per_arch_step == 0:
                    a_losses.append(searcher.arch_step(*next(a_batches)))
                if bar is not None:
                    bar.update(1)
            zeroed = 0
            if phase == "search" and cfg.prune_every and (epoch + 1 - n_pre) % cfg.prune_every == 0:
                zeroed = searcher.rebuild()
            train_seconds = time.perf_counter() - t0
            with compute.autocast():
                # λ move every step, and with them the scale of what each BN sees (by design: λ
                # sits before conv+BN): the running averages lag, and the inherited buffers
                # and the reported accuracy need statistics that match the current λ
                recalibrate_bn(supernet, data.ordered("weights", bs, limit=256, spread=True))
                val_acc = accuracy(supernet, data.ordered("val"))
            arch = method.decided(supernet)
            row: dict[str, Any] = {
                "epoch": epoch + 1, "phase": phase,
                "loss": sum(w_losses) / max(len(w_losses), 1),
                "val_acc": val_acc,
                "alive_edges": arch.decisions["alive_edges"], "total_edges": total_edges,
                "nonzero_lambda": int(sum(int((p != 0).sum()) for p in searcher.a_params)),
                "w_steps": searcher.w_steps - w0, "arch_steps": searcher.arch_steps - a0,
                "train_seconds": train_seconds,
            }
            if a_losses:
                row["arch_loss"] = sum(a_losses) / len(a_losses)
                row["gamma_scale"] = searcher.pressure
            if zeroed:
                row["dead_zeroed"] = zeroed
            if ctx.latency_model is not None:
                row["predicted_ms"] = float(ctx.latency_model.predict(arch.network))
            row["seconds"] = seconds = time.perf_counter() - t0  # the whole epoch, evaluation included
            ctx.history.append(row)
            if bar is not None:
                bar.set_postfix(loss=f"{row['loss']:.3f}", val_acc=f"{row['val_acc']:.3f}",
                                edges=f"{row['alive_edges']}/{total_edges}")
        finally:
            if bar is not None:
                bar.close()
        ctx.log(f"dsonas {phase} epoch {epoch + 1}: loss {row['loss']:.3f} val_acc {row['val_acc']:.3f} "
                f"edges {row['alive_edges']}/{total_edges} ({seconds:.1f} s)")
        if hasattr(ctx, "save_state"):
            ctx.save_state(epoch + 1, {
                "supernet": module_state(supernet), "searcher": searcher.state(), "gen_w": gen_w,
                "arch_batches": a_batches.state(), "data": data.state(),
                "search_w_steps": search_w_steps})
    supernet.eval()
    return searcher
