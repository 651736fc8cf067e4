"""MnasNet's search: shared-weight child training alternated with REINFORCE on the controller,
then the candidates: sampled from the controller, scored on held-out data, the top k by
estimated reward measured on the target, and the pick."""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from nas2deploy.checkpoint import load_module_state, module_state
from nas2deploy.device import Compute
from nas2deploy.method import SearchContext
from nas2deploy.objectives import LatencyReward, preference
from nas2deploy.train import batch_statistics

from .controller import Reinforce, Sample
from .space import Child, MnasSupernet, child_dict, child_from, netspec


def child_of(net: MnasSupernet, sample: Sample) -> Child:
    n = len(net.layout.DECISIONS)
    return tuple(net.layout.choice(i, sample.ops[i * n:(i + 1) * n])
                 for i in range(len(net.layout.blocks)))


class Rewarder(LatencyReward):
    """A child's reward from its accuracy: the accuracy itself, or the MnasNet reward on a
    latency (the latency model's estimate unless given) when there is a budget."""

    def __init__(self, net: MnasSupernet, budget_ms: float | None, latency_model: Any):
        super().__init__(lambda child: netspec(net.layout, child), budget_ms, latency_model,
                         net.cfg.reward)
        self.net = net


@dataclass
class Searched:
    """What ``search`` hands ``decide``: every scored candidate (``blocks``, ``val_acc``,
    ``predicted_ms``, ``score``; ``measured_ms`` and ``measured_score`` for the verified ones),
    the index of the pick, and what the pick was chosen against."""

    candidates: list[dict[str, Any]]
    pick: int
    seed: int
    reward: dict[str, Any]
    aim: float
    band: float
    verified: list[int] = field(default_factory=list)


@torch.no_grad()
def child_accuracy(net: MnasSupernet, child: Child, batches,
                   compute: Compute | None = None) -> float:
    """Accuracy on ``batches`` with BN on batch statistics; the supernet is not changed."""
    correct = total = 0
    amp = compute.autocast if compute is not None else contextlib.nullcontext
    with batch_statistics(net):
        for x, y in batches:
            with amp():
                out = net(x, child)
            correct += int((out.argmax(1) == y).sum())
            total += len(y)
    return correct / total if total else float("nan")


def run_search(net: MnasSupernet, ctx: SearchContext) -> Searched:
    cfg, data = net.cfg, ctx.data
    device = data.device
    net.to(device)
    compute = getattr(ctx, "compute", None) or Compute(torch.device("cpu"), "off")
    scaler = compute.scaler()
    ctrl = net.controller
    rewarder = Rewarder(net, ctx.budget_ms, ctx.latency_model)
    gen_data = torch.Generator().manual_seed(ctx.seed)
    gen_arch = torch.Generator().manual_seed(ctx.seed + 1)
    gen_reward = torch.Generator().manual_seed(ctx.seed + 2)
    params = list(net.shared_parameters())
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                          weight_decay=cfg.weight_decay)
    per_epoch = data.n_batches("weights", ctx.batch_size)
    steps = max(1, ctx.epochs * per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    average = getattr(ctx, "average", None)
    update = Reinforce(ctrl, cfg, average=average)
    arch_stream = data.cycle("arch", min(cfg.reward_batch, data.size("arch")), gen_reward)
    first = 0
    resumed = ctx.restore_state() if hasattr(ctx, "restore_state") else None
    if resumed is not None:
        first, state = resumed
        load_module_state(net, state["supernet"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        scaler.load_state_dict(state["scaler"])
        update.load_state(state["controller"])
        gen_data.set_state(state["gen_data"].get_state())
        gen_arch.set_state(state["gen_arch"].get_state())
        arch_stream.load_state(state["arch_stream"])
        data.load_state(state["data"])
    total = ctx.epochs * (per_epoch + cfg.controller_steps)
    bar = ctx.progress(total=total, desc="mnasnet search") if ctx.progress else None
    if bar is not None and first:
        bar.update(first * (per_epoch + cfg.controller_steps))
    ctx.log(f"mnasnet: {len(net.layout.blocks)} blocks, {len(net.layers)} shared layers, "
            f"{sum(p.numel() for p in params):,} shared weights; {rewarder.describe()}")
    try:
        for epoch in range(first, ctx.epochs):
            # 1. the shared weights: one sampled child per batch
            net.train()
            loss_sum = correct = seen = 0
            for x, y in data.epoch("weights", ctx.batch_size, gen_data):
                with torch.no_grad():
                    child = child_of(net, ctrl(gen_arch))
                with compute.autocast():
                    out = net(x, child)
                    loss = F.cross_entropy(out, y)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if average is not None:
                    average([p.grad for p in params if p.grad is not None])
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
            # 2. the controller: REINFORCE on the MnasNet reward of sampled children
            rewards, accs, ents, losses = [], [], [], []
            for _ in range(cfg.controller_steps):
                samples, children, step_accs = [], [], []
                for _ in range(cfg.controller_samples):
                    s = ctrl(gen_arch)
                    child = child_of(net, s)
                    step_accs.append(child_accuracy(net, child, [next(arch_stream)], compute))
                    samples.append(s)
                    children.append(child)
                    ents.append(s.entropy.item())
                step_accs = _averaged(step_accs, average, device)
                rs = [rewarder(acc, child) for acc, child in zip(step_accs, children)]
                accs.extend(step_accs)
                losses.append(update.step(samples, rs))
                rewards.extend(rs)
                if bar is not None:
                    bar.update(1)
            with torch.no_grad():
                greedy = child_of(net, ctrl(greedy=True))
            row = {"epoch": epoch, "phase": "search", "loss": loss_sum / max(seen, 1),
                   "train_acc": correct / max(seen, 1),
                   "val_acc": child_accuracy(net, greedy, data.ordered("val", 256), compute),
                   "reward": _mean(rewards), "arch_acc": _mean(accs),
                   "baseline": (float("nan") if update.baseline.value is None
                                else update.baseline.value),
                   "entropy": _mean(ents), "controller_loss": _mean(losses),
                   "greedy": json.dumps(child_dict(greedy), separators=(",", ":"))}
            lat = rewarder.latency(greedy)
            if lat is not None:
                row["predicted_ms"] = lat
            ctx.history.append(row)
            ctx.log(f"mnasnet epoch {epoch}: loss {row['loss']:.3f}, greedy child val acc "
                    f"{row['val_acc']:.3f}, reward {row['reward']:.3f} (baseline "
                    f"{row['baseline']:.3f}), entropy {row['entropy']:.2f}")
            if bar is not None:
                bar.set_postfix(loss=f"{row['loss']:.3f}", val_acc=f"{row['val_acc']:.3f}",
                                reward=f"{row['reward']:.3f}")
            if hasattr(ctx, "save_state"):
                ctx.save_state(epoch + 1, {
                    "supernet": module_state(net), "opt": opt.state_dict(),
                    "sched": sched.state_dict(), "scaler": scaler.state_dict(),
                    "controller": update.state(), "gen_data": gen_data, "gen_arch": gen_arch,
                    "arch_stream": arch_stream.state(), "data": data.state()})
    finally:
        if bar is not None:
            bar.close()
    return verify(net, ctx, rewarder, compute)


def candidates(net: MnasSupernet, ctx: SearchContext, rewarder: Rewarder,
               compute: Compute | None = None) -> list[dict[str, Any]]:
    """The controller's most likely child and ``derive_samples`` sampled ones (seeded by the
    search's seed), without repeats, each scored on the held-out split."""
    gen = torch.Generator().manual_seed(ctx.seed + 3)
    device = next(net.parameters()).device
    with torch.no_grad():
        drawn = [child_of(net, net.controller(greedy=True))]
        drawn += [child_of(net, net.controller(gen)) for _ in range(net.cfg.derive_samples)]
    rows = []
    for child in dict.fromkeys(drawn):
        acc = child_accuracy(net, child, ctx.data.ordered("val", 256, device=device), compute)
        row: dict[str, Any] = {"blocks": child_dict(child), "val_acc": acc,
                               "score": rewarder(acc, child)}
        lat = rewarder.latency(child)
        if lat is not None:
            row["predicted_ms"] = lat
        rows.append(row)
    return rows


def verify(net: MnasSupernet, ctx: SearchContext, rewarder: Rewarder,
           compute: Compute | None = None) -> Searched:
    """Score the candidates; measure the top k by estimated reward on the target where it can be
    timed (``ctx.measure``) and pick by the reward on the measured latency, else by the
    estimate. A budget's pick lands under ``ctx.aim`` x the budget (see ``preference``)."""
    cfg = net.cfg
    rows = candidates(net, ctx, rewarder, compute)
    aim = float(getattr(ctx, "aim", 0.95))
    ceiling = aim * ctx.budget_ms if ctx.budget_ms else None
    order = preference(rows, lambda r: r.get("predicted_ms"), lambda r: r["score"], ceiling,
                       cfg.landing_band)
    top = order[:cfg.top_k]
    pick = top[0]
    if ctx.measure is not None:
        for i in top:
            child = child_from(rows[i]["blocks"])
            ms = float(ctx.measure(netspec(net.layout, child), net.tensors(child)))
            rows[i]["measured_ms"] = ms
            rows[i]["measured_score"] = rewarder(rows[i]["val_acc"], lat=ms)
            ctx.log(f"mnasnet: candidate {i} measured {ms:.3f} ms (estimated "
                    f"{rows[i].get('predicted_ms', float('nan')):.3f})")
        measured = [rows[i] for i in top]
        best = preference(measured, lambda r: r["measured_ms"], lambda r: r["measured_score"],
                          ceiling, cfg.landing_band)[0]
        pick = top[best]
    return Searched(rows, pick, ctx.seed, rewarder.describe(), aim, cfg.landing_band,
                    top if ctx.measure is not None else [])


def _averaged(values: list[float], average, device: torch.device) -> list[float]:
    if average is None or not values:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    average([t])
    return t.tolist()


def _mean(v: list[float]) -> float:
    return sum(v) / len(v) if v else float("nan")
