"""NAS-RL's search: sample a child, build it from its netspec, train it from scratch, score it on
held-out images, and update the controller by REINFORCE on the scores (Zoph & Le 2017, §3.2).

Every child is a fresh network: its initial weights come from a seed drawn from the
architecture generator (the same on every rank), and it trains on the same batch sequence as
every other child (a generator seeded from the search's seed), so children are compared on
their architectures, not on their luck with images. A child sampled again is not retrained: its
recorded reward is reused (retraining would only draw the training noise again; the paper
trains every sample, on 800 GPUs).

Data parallel: every rank trains the same child on its shard of the weight split, gradients
averaged with ``ctx.average`` before each step, and the scores averaged before they become
rewards, so every rank's controller takes the same step.
"""

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
from nas2deploy.errors import UsageError
from nas2deploy.method import SearchContext, SearchData
from nas2deploy.netspec import GraphNet, build_network
from nas2deploy.objectives import LatencyReward
from nas2deploy.train import batch_statistics
from nas2deploy_plugins.enas.controller import Reinforce

from .config import NASRLConfig
from .space import Child, ControllerNet, Layout, netspec


class Rewarder(LatencyReward):
    """A child's reward from its accuracy (raised to ``accuracy_power``, the paper's cube as an
    option): itself, or the MnasNet reward on the latency model's estimate when there is a
    budget (estimates cached per child)."""

    def __init__(self, layout: Layout, budget_ms: float | None, latency_model: Any):
        super().__init__(lambda child: netspec(layout, child), budget_ms, latency_model,
                         layout.cfg.reward)
        self.layout = layout

    def __call__(self, acc: float, child: Child, target: float | None = None) -> float:
        acc = acc ** self.layout.cfg.accuracy_power if acc > 0 else acc
        return super().__call__(acc, child, target=target)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "accuracy_power": self.layout.cfg.accuracy_power}


@dataclass
class Record:
    """Every child the search trained, in order, with its accuracy, reward and estimate; which
    of them the decision takes (``best``). What ``search`` returns and ``decide`` reads."""

    seed: int
    rewarder: Rewarder
    band: float = 2.0  # NASRLConfig.decide_band
    rows: list[dict[str, Any]] = field(default_factory=list)
    index: dict[Child, int] = field(default_factory=dict)

    def child(self, i: int) -> Child:
        return Child.from_dict(self.rows[i])

    def add(self, child: Child, acc: float, images: int, reward: float, loss: float,
            epoch: int) -> dict[str, Any]:
        """Record a trained child: ``acc`` on ``images`` images of the arch split (held out from
        every child's training; "val_acc" in the row, as ENAS names its reward accuracy)."""
        row = {**child.to_dict(), "val_acc": acc, "images": images, "reward": reward,
               "train_loss": loss, "epoch": epoch}
        lat = self.rewarder.latency(child)
        if lat is not None:
            row["predicted_ms"] = lat
        self.index[child] = len(self.rows)
        self.rows.append(row)
        return row

    @property
    def best(self) -> int | None:
        """The child the decision takes (its index; None before any).

        Without a budget: the highest reward (the first on ties). With one, the budget is a
        constraint: among the children the latency model puts within it, those whose accuracy
        lies within ``band`` standard errors of the best-rewarded one's count as tied, and the
        one with the largest estimate wins (a few steps from scratch rank bigger nets low, and
        the retrain is long; a tie broken towards the smaller net would leave the budget
        unused). Under the soft MnasNet reward a budget scales every reward alike, so without
        the constraint a tighter budget would not change the choice. When no child is within,
        the highest ``ACC · T/LAT`` (the hard reward above the target)."""
        return self.pick(self.rewarder.budget_ms if self.rewarder.exps is not None else None)

    def pick(self, target: float | None) -> int | None:
        """``best`` under the budget ``target`` (ms; None: no budget)."""
        if not self.rows:
            return None
        rows = list(enumerate(self.rows))
        if target is None:
            return max(rows, key=lambda ir: (ir[1]["reward"], -ir[0]))[0]
        within = [(i, r) for i, r in rows if r["predicted_ms"] <= target]
        if not within:
            return max(rows, key=lambda ir: (ir[1]["val_acc"] * target
                                             / max(ir[1]["predicted_ms"], 1e-9), -ir[0]))[0]
        top = max(within, key=lambda ir: (ir[1]["reward"], -ir[0]))[1]
        p, n = top["val_acc"], max(int(top["images"]), 1)
        floor = p - self.band * math.sqrt(max(p * (1 - p), 0.0) / n)
        tied = [(i, r) for i, r in within if r["val_acc"] >= floor]
        return max(tied, key=lambda ir: (ir[1]["predicted_ms"], ir[1]["reward"], -ir[0]))[0]

    def state(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state(self, state: dict[str, Any]) -> None:
        self.rows = [dict(r) for r in state["rows"]]
        self.index = {Child.from_dict(r): i for i, r in enumerate(self.rows)}


def new_child(layout: Layout, child: Child, init_seed: int) -> GraphNet:
    """``child`` built from its netspec with initial weights fixed by ``init_seed`` (the global
    RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(init_seed)
        return build_network(netspec(layout, child))


def train_child(net: GraphNet, cfg: NASRLConfig, data: SearchData, seed: int,
                compute: Compute, average=None) -> float:
    """``cfg.child_steps`` SGD steps (momentum, cosine lr) on the weight split, the same batch
    sequence for every child; returns the mean training loss."""
    device = data.device
    net.to(device).train()
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.child_lr, momentum=cfg.child_momentum,
                          nesterov=cfg.child_momentum > 0, weight_decay=cfg.child_weight_decay)
    steps = cfg.child_steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    scaler = compute.scaler()
    batches = data.cycle("weights", min(cfg.child_batch, data.size("weights")),
                         torch.Generator().manual_seed(seed))
    losses = []
    for _ in range(steps):
        try:
            x, y = next(batches)
        except StopIteration:  # data parallel: fewer images than one global batch
            raise UsageError(f"nasrl: the weight split ({data.size('weights')} images) holds no "
                             f"batch of {cfg.child_batch} per rank; lower child_batch") from None
        with compute.autocast():
            loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if average is not None:  # still scaled: an fp16 overflow skips on every rank
            average([p.grad for p in params])
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        scaler.step(opt)
        scaler.update()
        sched.step()
        losses.append(loss.item())
    return sum(losses) / len(losses)


@torch.no_grad()
def accuracy(net: GraphNet, batches, compute: Compute | None = None) -> float:
    """Accuracy with BN on each batch's statistics (a few steps leave the running statistics far
    from the trained weights' own); the net is not changed."""
    correct = total = 0
    amp = compute.autocast if compute is not None else contextlib.nullcontext
    with batch_statistics(net):
        for x, y in batches:
            with amp():
                out = net(x)
            correct += int((out.argmax(1) == y).sum())
            total += len(y)
    return correct / total if total else float("nan")


def _averaged(value: float, average, device: torch.device) -> float:
    if average is None:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    average([t])
    return float(t.item())


def run_search(net: ControllerNet, ctx: SearchContext) -> Record:
    cfg, data, layout = net.cfg, ctx.data, net.layout
    device = data.device
    net.to(device)
    compute = getattr(ctx, "compute", None) or Compute(torch.device("cpu"), "off")
    average = getattr(ctx, "average", None)
    ctrl = net.controller
    rewarder = Rewarder(layout, ctx.budget_ms, ctx.latency_model)
    record = Record(ctx.seed, rewarder, cfg.decide_band)
    gen_arch = torch.Generator().manual_seed(ctx.seed + 1)
    update = Reinforce(ctrl, cfg, average=average)
    first = 0
    resumed = ctx.restore_state() if hasattr(ctx, "restore_state") else None
    if resumed is not None:
        first, state = resumed
        load_module_state(net, state["controller"])
        update.load_state(state["reinforce"])
        gen_arch.set_state(state["gen_arch"].get_state())
        record.load_state(state["record"])
        data.load_state(state["data"])
    net.record = record
    per_epoch = cfg.controller_steps * cfg.controller_samples
    bar = ctx.progress(total=ctx.epochs * per_epoch, desc="nasrl search") if ctx.progress else None
    if bar is not None and first:
        bar.update(first * per_epoch)
    ctx.log(f"nasrl: {layout.n} layers, kernels {layout.kernels}, filters {layout.filters}, "
            f"strides {layout.strides if cfg.search_strides else 'fixed'}; each child trained "
            f"{cfg.child_steps} steps of {cfg.child_batch} from scratch; {rewarder.describe()}")
    arch_images = min(cfg.reward_images, data.size("arch"))
    try:
        for epoch in range(first, ctx.epochs):
            rewards, accs, ents, skips, losses, trained, ctrl_losses = [], [], [], [], [], 0, []
            for _ in range(cfg.controller_steps):
                samples, rs = [], []
                for _ in range(cfg.controller_samples):
                    s = ctrl(gen_arch)
                    child = layout.child_of(s)
                    if child in record.index:
                        row = record.rows[record.index[child]]
                    else:
                        init_seed = int(torch.randint(2 ** 31 - 1, (1,), generator=gen_arch))
                        child_net = new_child(layout, child, init_seed)
                        loss = train_child(child_net, cfg, data, ctx.seed + 2, compute, average)
                        acc = accuracy(child_net, data.ordered("arch", 256, limit=arch_images),
                                       compute)
                        acc = _averaged(acc, average, device)
                        row = record.add(child, acc, arch_images, rewarder(acc, child), loss,
                                         epoch)
                        losses.append(loss)
                        trained += 1
                        del child_net
                    samples.append(s)
                    rs.append(row["reward"])
                    accs.append(row["val_acc"])
                    ents.append(s.entropy.item())
                    skips.append(s.skip_count)
                    if bar is not None:
                        bar.update(1)
                ctrl_losses.append(update.step(samples, rs))
                rewards.extend(rs)
            best_i = record.best
            best = record.rows[best_i] if best_i is not None else None
            pairs = layout.n * (layout.n - 1) / 2
            row = {"epoch": epoch, "phase": "search", "loss": _mean(losses),
                   "reward": _mean(rewards), "arch_acc": _mean(accs),
                   "baseline": (float("nan") if update.baseline.value is None
                                else update.baseline.value),
                   "entropy": _mean(ents), "skip_rate": _mean(skips) / pairs if pairs else 0.0,
                   "controller_loss": _mean(ctrl_losses), "children_trained": trained,
                   "children_total": len(record.rows)}
            if best is not None:
                row.update({"val_acc": best["val_acc"], "best_reward": best["reward"],
                            "best": json.dumps(Child.from_dict(best).to_dict(),
                                               separators=(",", ":"))})
                if "predicted_ms" in best:
                    row["predicted_ms"] = best["predicted_ms"]
            ctx.history.append(row)
            ctx.log(f"nasrl epoch {epoch}: {trained} children trained ({len(record.rows)} in "
                    f"all), reward {row['reward']:.3f} (baseline {row['baseline']:.3f}), best "
                    f"{row.get('best_reward', float('nan')):.3f}, entropy {row['entropy']:.2f}")
            if bar is not None:
                bar.set_postfix(reward=f"{row['reward']:.3f}",
                                best=f"{row.get('best_reward', float('nan')):.3f}")
            if hasattr(ctx, "save_state"):
                ctx.save_state(epoch + 1, {
                    "controller": module_state(net), "reinforce": update.state(),
                    "gen_arch": gen_arch, "record": record.state(), "data": data.state()})
    finally:
        if bar is not None:
            bar.close()
    return record


def _mean(v: list[float]) -> float:
    return sum(v) / len(v) if v else float("nan")
