"""Random search with weight sharing over any space, and its fallback without it.

With a space that shares weights (``SearchSpace.share``): every batch trains one uniformly
sampled subnet, computed by its materialized net on the supernet's own tensors
(``torch.func.functional_call``), so the supernet's weights are trained the way the
"random + weight sharing" baselines of the DenseNAS and DSO-NAS papers train them; then
``samples`` fresh subnets are drawn and each is scored on the same held-out images. Without
weight sharing (a space whose method trains every child from scratch), each drawn subnet is
trained on its own for ``child_steps`` batches and then scored.

Scores use BN on each batch's own statistics: the shared running statistics mix every path the
supernet trained (ENAS scores its children the same way).
"""

from __future__ import annotations

import json
import math
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from nas2deploy.architecture import Architecture
from nas2deploy.checkpoint import load_module_state, module_state
from nas2deploy.device import Compute
from nas2deploy.materialize import materialize
from nas2deploy.method import SearchContext
from nas2deploy.objectives import preference
from nas2deploy.space import SearchSpace
from nas2deploy.train import batch_statistics

from .config import RandomConfig


@dataclass
class Candidate:
    arch: Architecture
    val_acc: float
    predicted_ms: float | None
    weights: dict[str, torch.Tensor] = field(default_factory=dict)  # a from-scratch child's

    def row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"val_acc": self.val_acc}
        if self.predicted_ms is not None:
            row["predicted_ms"] = self.predicted_ms
        return row


@dataclass
class Scored:
    """What ``search`` hands ``decide``: every scored candidate and the budget it was run at."""

    candidates: list[Candidate]
    budget_ms: float | None
    shared: bool


class Nets:
    """Materialized subnets by netspec, a few kept (a space samples the same net again often
    only when it is small)."""

    def __init__(self, device: torch.device, keep: int = 32):
        self.device, self.keep = device, keep
        self._nets: OrderedDict[str, nn.Module] = OrderedDict()

    def __call__(self, arch: Architecture) -> nn.Module:
        key = json.dumps(arch.network, sort_keys=True)
        net = self._nets.pop(key, None)
        if net is None:
            net = materialize(arch).to(self.device)
        self._nets[key] = net
        while len(self._nets) > self.keep:
            self._nets.popitem(last=False)
        return net


def _sampler(seed: int, epoch: int) -> random.Random:
    """The subnets an epoch trains, a function of (seed, epoch) alone: a resumed run draws the
    same ones without saving a generator's state."""
    return random.Random(seed * 1_000_003 + epoch)


def train_shared(supernet: nn.Module, space: SearchSpace, cfg: RandomConfig,
                 ctx: SearchContext) -> None:
    data, compute = ctx.data, ctx.compute or Compute(torch.device("cpu"), "off")
    device = data.device
    nets = Nets(device)
    params = [p for p in supernet.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                          weight_decay=cfg.weight_decay)
    per_epoch = data.n_batches("weights", ctx.batch_size)
    steps = max(1, ctx.epochs * per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    scaler = compute.scaler()
    gen_data = torch.Generator().manual_seed(ctx.seed)
    first = 0
    resumed = ctx.restore_state()
    if resumed is not None:
        first, state = resumed
        load_module_state(supernet, state["supernet"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        scaler.load_state_dict(state["scaler"])
        gen_data.set_state(state["gen_data"].get_state())
        data.load_state(state["data"])
    bar = ctx.progress(total=ctx.epochs * per_epoch, desc="random search") if ctx.progress else None
    if bar is not None and first:
        bar.update(first * per_epoch)
    try:
        for epoch in range(first, ctx.epochs):
            rng = _sampler(ctx.seed, epoch)
            loss_sum = correct = seen = 0
            for x, y in data.epoch("weights", ctx.batch_size, gen_data):
                arch = space.draw(rng, ctx.channel_multiple)
                net = nets(arch)
                net.train()
                with compute.autocast():
                    out = functional_call(net, space.shared(arch), (x,))
                    loss = F.cross_entropy(out, y)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                grads = [p.grad for p in params if p.grad is not None]
                # every rank drew the same subnet: the same tensors hold gradients everywhere
                ctx.average(grads)
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                scaler.step(opt)
                scaler.update()
                sched.step()
                loss_sum += loss.item() * len(y)
                correct += int((out.argmax(1) == y).sum())
                seen += len(y)
                if bar is not None:
                    bar.update(1)
            row = {"epoch": epoch, "phase": "search", "loss": loss_sum / max(seen, 1),
                   "train_acc": correct / max(seen, 1)}
            ctx.history.append(row)
            ctx.log(f"random epoch {epoch}: loss {row['loss']:.3f}, train acc "
                    f"{row['train_acc']:.3f} (uniformly sampled paths)")
            if bar is not None:
                bar.set_postfix(loss=f"{row['loss']:.3f}")
            ctx.save_state(epoch + 1, {"supernet": module_state(supernet), "opt": opt.state_dict(),
                                       "sched": sched.state_dict(), "scaler": scaler.state_dict(),
                                       "gen_data": gen_data, "data": data.state()})
    finally:
        if bar is not None:
            bar.close()


@torch.no_grad()
def accuracy(net: nn.Module, batches, compute: Compute, ctx: SearchContext,
             tensors: dict[str, torch.Tensor] | None = None) -> float:
    """Top-1 on ``batches`` with BN on batch statistics, counted over every rank's shard."""
    correct = total = 0
    with batch_statistics(net):
        for x, y in batches:
            with compute.autocast():
                out = net(x) if tensors is None else functional_call(net, tensors, (x,))
            correct += int((out.argmax(1) == y).sum())
            total += len(y)
    counts = torch.tensor([float(correct), float(total)], dtype=torch.float64,
                          device=ctx.data.device)
    ctx.average([counts])  # the ratio of the averages is the ratio of the sums
    return float(counts[0] / counts[1]) if counts[1] > 0 else float("nan")


def train_child(arch: Architecture, cfg: RandomConfig, ctx: SearchContext, compute: Compute,
                stream) -> nn.Module:
    """One candidate trained on its own from its initialisation for ``child_steps`` batches of
    ``stream`` (one ``Cycle`` for all candidates: a streamed split starts its loader once)."""
    net = materialize(arch).to(ctx.data.device)
    params = list(net.parameters())
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                          weight_decay=cfg.weight_decay)
    net.train()
    for _ in range(cfg.child_steps):
        x, y = next(stream)
        with compute.autocast():
            loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.average([p.grad for p in params if p.grad is not None])
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
    return net


def score(space: SearchSpace, cfg: RandomConfig, ctx: SearchContext, shared: bool) -> Scored:
    """Draw ``samples`` subnets (seeded, distinct netspecs), estimate each one's latency and
    score each on the same held-out images."""
    compute = ctx.compute or Compute(torch.device("cpu"), "off")
    rng = random.Random(ctx.seed + 7919)
    stream = None if shared else ctx.data.cycle("weights", ctx.batch_size,
                                                 torch.Generator().manual_seed(ctx.seed + 1))
    held_out = list(ctx.data.ordered("val", 256, limit=cfg.score_images))
    nets = Nets(ctx.data.device, keep=1)
    seen: set[str] = set()
    out: list[Candidate] = []
    tries = 0
    bar = ctx.progress(total=cfg.samples, desc="random candidates") if ctx.progress else None
    try:
        while len(out) < cfg.samples and tries < 20 * cfg.samples:
            tries += 1
            arch = space.draw(rng, ctx.channel_multiple)
            key = json.dumps(arch.network, sort_keys=True)
            if key in seen:
                continue
            seen.add(key)
            ms = (float(ctx.latency_model.predict(arch.network))
                  if ctx.latency_model is not None else None)
            if shared:
                acc = accuracy(nets(arch), held_out, compute, ctx, space.shared(arch))
                out.append(Candidate(arch, acc, ms))
            else:
                net = train_child(arch, cfg, ctx, compute, stream)
                acc = accuracy(net, held_out, compute, ctx)
                out.append(Candidate(arch, acc, ms, {k: v.detach().cpu().clone()
                                                     for k, v in net.state_dict().items()}))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if len(out) < cfg.samples:
        ctx.log(f"random: the space holds only {len(out)} distinct subnets; all were scored")
    return Scored(out, ctx.budget_ms, shared)


def best_under(candidates: list[Candidate], limit_ms: float | None) -> Candidate | None:
    """The most accurate candidate whose estimate is within ``limit_ms`` (the faster one on a
    tie); with no limit or no estimates, the most accurate. None: none fits."""
    if limit_ms is None or any(c.predicted_ms is None for c in candidates):
        fits = list(candidates)
    else:
        fits = [c for c in candidates if c.predicted_ms <= limit_ms]
    if not fits:
        return None
    return max(fits, key=lambda c: (c.val_acc, -(c.predicted_ms or 0.0)))


# A re-picked candidate lands in this band under the asked latency: the closed loop asks for a
# point (its aim), and the most accurate candidate far under it would leave the budget unused.
NEAR_BAND = 0.9


def near(candidates: list[Candidate], current: Candidate, target_ms: float) -> Candidate | None:
    """Another candidate for ``target_ms``: the most accurate whose estimate lies in
    [NEAR_BAND, 1] x ``target_ms``, else the one whose estimate is closest under it
    (``nas2deploy.objectives.preference``); where none lies under it, the fastest if faster than
    ``current`` (the closed loop asks for less than the fastest when even the narrowest width of
    a decision is over its budget). None where there is none of these."""
    others = [c for c in candidates if c is not current and c.predicted_ms is not None]
    order = preference(others, lambda c: c.predicted_ms, lambda c: c.val_acc, target_ms,
                       NEAR_BAND)
    if not order:
        return None
    pick = others[order[0]]
    if pick.predicted_ms > target_ms and not (current.predicted_ms is not None
                                              and pick.predicted_ms < current.predicted_ms):
        return None
    return pick
