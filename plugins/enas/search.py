"""ENAS's search: shared-weight child training alternated with REINFORCE on the controller, and
the derivation (sample m children, score each on held-out data, keep the best)."""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from nas2deploy.checkpoint import load_module_state, module_state
from nas2deploy.device import Compute
from nas2deploy.method import SearchContext, SearchData
from nas2deploy.objectives import LatencyReward
from nas2deploy.train import batch_statistics

from .cells import Cells, CellSupernet
from .controller import CellSample, Reinforce, Sample
from .space import Child, MacroSupernet


def child_of(net: MacroSupernet | CellSupernet, sample: Sample | CellSample) -> Child | Cells:
    """The child a controller sample names, in the supernet's space."""
    return net.child_of(sample)


class Rewarder(LatencyReward):
    """The reward of a child's accuracy: the accuracy itself, or the MnasNet reward on the
    latency model's estimate when there is a budget (estimates cached per child)."""

    def __init__(self, net: MacroSupernet, budget_ms: float | None, latency_model: Any):
        super().__init__(net.netspec, budget_ms, latency_model, net.cfg.reward)
        self.net = net


@dataclass
class Searched:
    """What ``search`` hands ``decide``: the data and reward to score the m children with, and
    the seed they are sampled from. The controller itself is in the supernet."""

    data: SearchData
    seed: int
    rewarder: Rewarder
    epochs: int


@torch.no_grad()
def child_accuracy(net: MacroSupernet, child: Child, batches,
                   compute: Compute | None = None) -> float:
    """Accuracy on ``batches`` with BN on batch statistics; the supernet is not changed. The
    forwards run under ``compute``'s autocast (none by default)."""
    correct = total = 0
    amp = compute.autocast if compute is not None else contextlib.nullcontext
    with batch_statistics(net):
        for x, y in batches:
            with amp():
                out = net(x, child)
            correct += int((out.argmax(1) == y).sum())
            total += len(y)
    return correct / total if total else float("nan")


def run_search(net: MacroSupernet, ctx: SearchContext) -> Searched:
    cfg, data = net.cfg, ctx.data
    device = data.device
    net.to(device)
    # The controller (sampling, log-probabilities, REINFORCE) runs outside autocast, in float32;
    # the shared weights' forwards under it, their gradients loss-scaled under fp16.
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
    # data-parallel: every gradient averaged across ranks before its step, and the arch-split
    # accuracies (each rank scores its shard of a reward batch) before they become rewards, so
    # every rank's controller takes the same step (None, or a world of one: unchanged)
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
        arch_stream.load_state(state["arch_stream"])  # gen_reward with it
        data.load_state(state["data"])
    total = ctx.epochs * (per_epoch + cfg.controller_steps)
    bar = ctx.progress(total=total, desc="enas search") if ctx.progress else None
    if bar is not None and first:
        bar.update(first * (per_epoch + cfg.controller_steps))
    ctx.log(f"enas ({net.space_name}): {net.layout.summary()}, "
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
                if average is not None:  # still scaled: an fp16 overflow skips on every rank
                    average([p.grad for p in params])
                scaler.unscale_(opt)  # clip the true gradients
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                scaler.step(opt)  # skipped on an fp16 overflow
                scaler.update()
                sched.step()
                loss_sum += loss.item() * len(y)
                correct += int((out.argmax(1) == y).sum())
                seen += len(y)
                if bar is not None:
                    bar.update(1)
            # 2. the controller: REINFORCE on rewards of sampled children on the arch split
            rewards, accs, ents, skips, losses = [], [], [], [], []
            for _ in range(cfg.controller_steps):
                samples, children, step_accs = [], [], []
                for _ in range(cfg.controller_samples):
                    s = ctrl(gen_arch)
                    child = child_of(net, s)
                    step_accs.append(child_accuracy(net, child, [next(arch_stream)], compute))
                    samples.append(s)
                    children.append(child)
                    ents.append(s.entropy.item())
                    skips.append(s.skip_count)
                step_accs = _averaged(step_accs, average, device)
                rs = [rewarder(acc, child) for acc, child in zip(step_accs, children)]
                accs.extend(step_accs)
                losses.append(update.step(samples, rs))
                rewards.extend(rs)
                if bar is not None:
                    bar.update(1)
            row = epoch_row(net, data, rewarder, epoch, loss_sum / max(seen, 1),
                            correct / max(seen, 1), rewards, accs, ents, skips,
                            update.baseline.value, compute)
            row["controller_loss"] = _mean(losses)
            ctx.history.append(row)
            ctx.log(f"enas epoch {epoch}: loss {row['loss']:.3f}, greedy child val acc "
                    f"{row['val_acc']:.3f}, reward {row['reward']:.3f} (baseline "
                    f"{row['baseline']:.3f}), entropy {row['entropy']:.2f}"
                    + (f", skips {row['skip_rate']:.2f}" if "skip_rate" in row else ""))
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
    return Searched(data, ctx.seed, rewarder, ctx.epochs)


def _averaged(values: list[float], average, device: torch.device) -> list[float]:
    """``values`` averaged across ranks (one all-reduce, on the data's device for NCCL); the
    same floats, untouched, without ``average`` or in a world of one."""
    if average is None or not values:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    average([t])
    return t.tolist()


def _mean(v: list[float]) -> float:
    return sum(v) / len(v) if v else float("nan")


def epoch_row(net, data, rewarder, epoch, loss, train_acc, rewards, accs, ents, skips,
              baseline, compute: Compute | None = None) -> dict[str, Any]:
    with torch.no_grad():
        greedy = child_of(net, net.controller(greedy=True))
    row = {"epoch": epoch, "phase": "search", "loss": loss, "train_acc": train_acc,
           "val_acc": child_accuracy(net, greedy, data.ordered("val", 256), compute),
           "reward": _mean(rewards), "arch_acc": _mean(accs),
           "baseline": float("nan") if baseline is None else baseline,
           "entropy": _mean(ents),
           "greedy": json.dumps(greedy.to_dict(), separators=(",", ":"))}
    if net.space_name == "macro":
        pairs = net.layout.n * (net.layout.n - 1) / 2
        row["skip_rate"] = _mean(skips) / pairs if pairs else 0.0
    lat = rewarder.latency(greedy)
    if lat is not None:
        row["predicted_ms"] = lat
    return row


EXTRA_DRAWS = 4


def derive(net: MacroSupernet, searched: Searched, m: int) -> tuple[Child, list[dict[str, Any]]]:
    """Sample ``m`` children from the controller (seeded by the search's seed), score each on
    the held-out split with the search's reward, keep the best (the first on ties). Under a
    budget the budget is a constraint here too: the best child whose estimate is within it wins
    over any child above it (the best above it only when none is within). The reward alone lets
    an over-budget child win on a higher accuracy of one held-out split, which on a young
    supernet is mostly noise (the pipeline would then narrow it to fit), and the soft reward
    (alpha = beta) ranks children the same under every budget: T only scales every reward. Reads the
    supernet, changes nothing. Runs where the supernet is (after a search on a GPU, the pipeline
    has moved it back to the CPU): the held-out batches are read onto its device."""
    gen = torch.Generator().manual_seed(searched.seed + 3)
    device = next(net.parameters()).device
    scored: list[dict[str, Any]] = []
    best, best_key = None, (False, -math.inf)
    timed = searched.rewarder.exps is not None
    seen: dict[Child, float] = {}
    for i in range(EXTRA_DRAWS * m):
        # a budget none of the m children fits: up to (EXTRA_DRAWS - 1) x m more draws for one
        # that does (a young controller under a tight budget samples mostly heavier children
        # than the space's lightest)
        if i >= m and (not timed or best_key[0]):
            break
        with torch.no_grad():
            child = child_of(net, net.controller(gen))
        if child not in seen:
            acc = child_accuracy(net, child, searched.data.ordered("val", 256, device=device))
            seen[child] = acc
        acc = seen[child]
        score = searched.rewarder(acc, child)
        row = {**child.to_dict(), "val_acc": acc, "score": score}
        lat = searched.rewarder.latency(child)
        if lat is not None:
            row["predicted_ms"] = lat
        fits = True
        if timed:
            fits = row["within_budget"] = lat <= searched.rewarder.budget_ms
        scored.append(row)
        if best is None or (fits, score) > best_key:
            best, best_key = child, (fits, score)
    return best, scored
