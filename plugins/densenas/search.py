"""The DenseNAS search: sampled weight steps, two-op arch steps with the rescale, the chained
latency term, and the selection of the best validation epochs (DenseNAS, Fang et al., CVPR 2020:
relaxation of the search space, chained cost estimation, search procedure).

Phases, as fractions of ``ctx.epochs`` (paper: 150 epochs, 50 of warm-up, selection from 120):

* warm-up: weight passes over the weight split only, one candidate per mixed op drawn uniformly;
* search: per epoch a full *arch* pass over the arch split, then a full *weight* pass over the
  weight split (candidates now drawn from softmax(α)). Each step touches only its own
  parameters: weight steps read β and α, arch steps read the weights.

Every epoch the supernet (every candidate, weighted by softmax(α), batch-statistics BN) is
validated on the held-out split; from ``select_from`` on, the architecture derived at that epoch
is kept if it is among the ``top_k`` best by that accuracy, and the best one is the decision.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from nas2deploy.checkpoint import load_module_state, module_state
from nas2deploy.device import Compute, LossScale

from .config import PAPER_ARCH_LR, PAPER_ARCH_STEPS, PAPER_BATCH, PAPER_LR, DenseNASConfig
from .derive import Choice, build_spec, choice_cost, expected_cost, viterbi_choice
from .space import CostTable, DenseNASSupernet, Layout, macs


# ------------------------------------------------------------------------------------------
# sampling and the architecture optimiser


def sample_ops(alpha: torch.Tensor, n: int, gen: torch.Generator | None = None,
               uniform: bool = False) -> torch.Tensor:
    """``n`` distinct candidates per row (rows × n indices), from softmax(α) or uniformly.
    Drawn on the CPU with ``gen`` (a CPU generator: a seed fixes the draws on any device); the
    indices are CPU tensors."""
    n = min(n, alpha.shape[1])
    a = alpha.detach().float().cpu()
    probs = torch.ones_like(a) if uniform else torch.softmax(a, 1)
    return torch.multinomial(probs, n, replacement=False, generator=gen)


def sample_mask(alpha: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Boolean rows × candidates, True at ``idx``, on α's device."""
    mask = torch.zeros_like(alpha, dtype=torch.bool)
    mask.scatter_(1, idx.to(mask.device), True)
    return mask


def renormalised(alpha: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax over each row's sampled candidates only (0 elsewhere), differentiable in α."""
    return torch.softmax(alpha.masked_fill(~mask, float("-inf")), 1)


class ArchOptimizer:
    """Adam on β and α (paper: betas (0.5, 0.999), weight decay 1e-3), then the rescale of the
    sampled α (the ProxylessNAS trick, Cai et al., ICLR 2019, as DenseNAS uses it): entries not
    sampled in this step are put back to their old values, and the sampled ones are shifted together
    by log(Σ_S exp α_old) − log(Σ_S exp α_new). The pair keeps its total mass, so every unsampled
    candidate keeps its probability exactly (Adam's momentum and weight decay would otherwise move
    them too)."""

    def __init__(self, beta: torch.Tensor, alphas: list[torch.Tensor], lr: float, weight_decay: float):
        self.beta, self.alphas = beta, list(alphas)
        self.opt = torch.optim.Adam([beta, *self.alphas], lr=lr, betas=(0.5, 0.999),
                                    weight_decay=weight_decay)

    def step(self, grads: list[torch.Tensor | None], masks: list[torch.Tensor]) -> None:
        old = [a.detach().clone() for a in self.alphas]
        for param, g in zip([self.beta, *self.alphas], grads):
            param.grad = torch.zeros_like(param) if g is None else g.detach()
        self.opt.step()
        with torch.no_grad():
            for a, o, m in zip(self.alphas, old, masks):
                lse_old = torch.logsumexp(o.masked_fill(~m, float("-inf")), 1, keepdim=True)
                lse_new = torch.logsumexp(a.masked_fill(~m, float("-inf")), 1, keepdim=True)
                a.copy_(torch.where(m, a + (lse_old - lse_new), o))
        for param in [self.beta, *self.alphas]:
            param.grad = None


# ------------------------------------------------------------------------------------------
# costs


def cost_table(layout: Layout, latency_model, skip_fraction: float, log=lambda m: None) -> tuple[CostTable, str]:
    """Per-candidate costs from the target's latency model by op signature, or (no model, or a
    model without per-op costs) MACs in millions as a proportional stand-in."""
    if latency_model is not None:
        try:
            table = CostTable.build(layout, latency_model.op_cost, float(latency_model.base_ms),
                                    skip_fraction)
            return table, "ms"
        except NotImplementedError as exc:
            log(f"densenas: {exc}; using MACs-proportional costs")
    return CostTable.build(layout, lambda s: macs(s) / 1e6, 0.0, skip_fraction), "mmacs"


def latency_penalty(cost: torch.Tensor, cfg: DenseNASConfig, budget: float | None,
                    aim: float = 0.95) -> torch.Tensor:
    """The arch loss's latency term (``cfg.penalty``): "paper" λ·log_τ(C) (DenseNAS, Fang et
    al., CVPR 2020, chained cost estimation); "target" λ·|log_τ(C / (aim·budget))|; "hinge"
    λ·log_τ(max(C, budget)). Without a budget, the paper's."""
    scale = cfg.latency_lambda / math.log(cfg.latency_tau)
    if budget is None or cfg.penalty == "paper":
        return scale * torch.log(cost)
    if cfg.penalty == "hinge":
        return scale * torch.log(torch.clamp(cost, min=float(budget)))
    return scale * torch.abs(torch.log(cost) - math.log(aim * float(budget)))


# ------------------------------------------------------------------------------------------
# the loop


def _cl(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def split_epochs(total: int, warmup_fraction: float) -> int:
    """Warm-up epochs of a budget of ``total``: at least one search epoch when total >= 1."""
    if total <= 1:
        return 0
    return min(int(math.floor(warmup_fraction * total + 0.5)), total - 1)


@torch.no_grad()
def validate(net: DenseNASSupernet, batches, compute: Compute | None = None) -> float:
    """Top-1 of the whole supernet (every candidate, softmax(α)-weighted) on ``(x, y)`` batches
    with batch-statistics BN, as the paper validates it. BN momentum is set to 0 meanwhile, so
    running statistics (which the derived net inherits) are not touched by the validation
    data. The forwards run under ``compute``'s autocast (softmax(α) and p stay float32)."""
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [m.momentum for m in bns]
    was = net.training
    try:
        for m in bns:
            m.momentum = 0.0
        net.train()
        heads, stacks = net.full_selection()
        p = net.transition_probs()
        correct = total = 0
        last = None  # the previous batch's last image
        for xb, yb in batches:
            xb = _cl(xb)
            with _autocast(compute):
                if len(xb) < 2 and last is not None:
                    # train-mode BN needs two images: borrow the previous one, score only this
                    out = net(torch.cat([last, xb]), heads, stacks, p)[-len(xb):]
                else:
                    out = net(xb, heads, stacks, p)
            correct += int((out.argmax(1) == yb).sum())
            total += len(yb)
            last = xb[-1:]
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom
        net.train(was)
    return correct / total if total else float("nan")


def _cpu() -> Compute:
    return Compute(torch.device("cpu"), "off")


def _autocast(compute: Compute | None):
    return (compute or _cpu()).autocast()


def table_on(table: CostTable, device: torch.device) -> CostTable:
    """``table`` with its tensors on ``device`` (the same table where they are there already)."""
    if table.head.device == device:
        return table
    return CostTable(table.head.to(device), table.stack.to(device), table.out.to(device),
                     table.stem, table.classifier, table.base)


class Searcher:
    def __init__(self, net: DenseNASSupernet, cfg: DenseNASConfig, table: CostTable,
                 budget: float | None, total_w_steps: int, total_a_steps: int, seed: int,
                 batch_size: int = 64, compute: Compute | None = None,
                 average: Callable[[list], None] | None = None, aim: float = 0.95):
        self.net, self.cfg, self.budget, self.aim = net, cfg, budget, aim
        # data-parallel: gradients averaged across ranks before every step (None: one process)
        self.average = average
        self.compute = compute if compute is not None else _cpu()
        # the cost table on the architecture parameters' device (it meets softmax(α) there)
        self.table = table_on(table, net.beta.device)
        self.w_scaler = self.compute.scaler()  # fp16 loss scaling (a pass-through otherwise)
        self.a_scale = LossScale(self.compute)
        self.layout = net.layout
        self.w_params = net.weight_parameters()
        self.lr = cfg.lr if cfg.lr is not None else PAPER_LR * batch_size / PAPER_BATCH
        self.w_opt = torch.optim.SGD(self.w_params, lr=self.lr, momentum=cfg.momentum,
                                     weight_decay=cfg.weight_decay)
        self.total_w_steps = max(1, total_w_steps)
        self.arch_lr = cfg.arch_lr if cfg.arch_lr is not None else auto_arch_lr(total_a_steps)
        self.a_opt = ArchOptimizer(net.beta, [net.alpha_head, net.alpha_stack], self.arch_lr,
                                   cfg.arch_weight_decay)
        self.gen = torch.Generator().manual_seed(seed + 7)
        self.w_steps = 0
        self.a_steps = 0

    def _lr(self) -> float:
        lo = self.lr * self.cfg.lr_min_ratio
        t = min(self.w_steps / self.total_w_steps, 1.0)
        return lo + (self.lr - lo) * 0.5 * (1 + math.cos(math.pi * t))

    def weight_step(self, x: torch.Tensor, y: torch.Tensor, uniform: bool) -> float:
        """One candidate per mixed op (uniform in warm-up, else from softmax(α)), weight 1;
        every dense edge runs, head sums weighted by the (fixed) transition probabilities."""
        net = self.net
        ih = sample_ops(net.alpha_head, 1, self.gen, uniform)
        is_ = sample_ops(net.alpha_stack, 1, self.gen, uniform)
        heads = [([int(r[0])], None) for r in ih]
        stacks = [([int(r[0])], None) for r in is_]
        with torch.no_grad():
            p = net.transition_probs()
        net.train()
        with self.compute.autocast():
            loss = F.cross_entropy(net(x, heads, stacks, p), y)
        for g in self.w_opt.param_groups:
            g["lr"] = self._lr()
        self.w_opt.zero_grad(set_to_none=True)
        self.w_scaler.scale(loss).backward()
        if self.average is not None:  # still scaled: an fp16 overflow is skipped on every rank
            self.average([p.grad for p in self.w_params])
        self.w_scaler.step(self.w_opt)  # skipped on an fp16 overflow
        self.w_scaler.update()
        self.w_opt.zero_grad(set_to_none=True)
        self.w_steps += 1
        return float(loss.detach())

    def arch_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """Two candidates per mixed op from softmax(α), re-softmaxed over the pair; CE on the arch
        split plus λ·log_τ of the chained expected latency under the same weights; Adam on β and
        α, then the rescale. Weights are read, never written."""
        net = self.net
        ih = sample_ops(net.alpha_head, 2, self.gen)  # CPU indices
        is_ = sample_ops(net.alpha_stack, 2, self.gen)
        mh, ms = sample_mask(net.alpha_head, ih), sample_mask(net.alpha_stack, is_)
        # softmax over the pairs, p and the expected cost: float32/64, outside autocast
        wh = renormalised(net.alpha_head, mh)
        ws = renormalised(net.alpha_stack, ms)
        # each row's sampled candidates in ascending order (what the mask's nonzero gives), read
        # off the CPU indices
        heads = [(sorted(r.tolist()), None) for r in ih]
        heads = [(ops, wh[r, ops]) for r, (ops, _) in enumerate(heads)]
        stacks = [(sorted(r.tolist()), None) for r in is_]
        stacks = [(ops, ws[r, ops]) for r, (ops, _) in enumerate(stacks)]
        p = net.transition_probs()
        net.train()
        with self.compute.autocast():
            ce = F.cross_entropy(net(x, heads, stacks, p), y)
        cost = expected_cost(self.layout, self.table, p, wh, ws)
        loss = ce + latency_penalty(cost, self.cfg, self.budget, self.aim).to(ce.dtype)
        grads = self.a_scale.grads(loss, net.arch_parameters(), average=self.average)
        if grads is None:  # fp16 overflow: the scale was lowered, this step is skipped
            self.a_steps += 1
            return float(loss.detach()), float(cost.detach())
        self.a_opt.step(list(grads), [mh, ms])
        self.a_steps += 1
        return float(loss.detach()), float(cost.detach())

    def state(self) -> dict[str, Any]:
        """What the searcher carries across epochs besides the supernet (for a checkpoint)."""
        return {"w_opt": self.w_opt.state_dict(), "a_opt": self.a_opt.opt.state_dict(),
                "w_scaler": self.w_scaler.state_dict(), "a_scale": self.a_scale.state_dict(),
                "gen": self.gen, "w_steps": self.w_steps, "a_steps": self.a_steps}

    def load_state(self, state: dict[str, Any]) -> None:
        self.w_opt.load_state_dict(state["w_opt"])
        self.a_opt.opt.load_state_dict(state["a_opt"])
        self.w_scaler.load_state_dict(state["w_scaler"])
        self.a_scale.load_state_dict(state["a_scale"])
        self.gen.set_state(state["gen"].get_state())
        self.w_steps, self.a_steps = int(state["w_steps"]), int(state["a_steps"])

    @torch.no_grad()
    def expected_ms(self) -> float:
        net = self.net
        return float(expected_cost(self.layout, self.table, net.transition_probs(),
                                   torch.softmax(net.alpha_head, 1), torch.softmax(net.alpha_stack, 1)))


def auto_arch_lr(total_arch_steps: int) -> float:
    """The paper's 3e-4 scaled by its ≈7,400 arch steps over this run's, in [3e-4, 0.05]."""
    if total_arch_steps <= 0:
        return PAPER_ARCH_LR
    return float(min(0.05, max(PAPER_ARCH_LR, PAPER_ARCH_LR * PAPER_ARCH_STEPS / total_arch_steps)))


def choice_record(layout: Layout, choice: Choice, table: CostTable, unit: str) -> dict[str, Any]:
    _, _, blocks = build_spec(layout, choice)
    return {"path": list(choice.path), "path_probability": choice.probability,
            "head_ops": sorted([int(e), int(o)] for e, o in choice.head_ops.items()),
            "layer_ops": sorted([int(r), int(o)] for r, o in choice.layer_ops.items()),
            "blocks": blocks, f"derived_{unit}": choice_cost(layout, table, choice)}


def record_to_choice(rec: dict[str, Any]) -> Choice:
    return Choice(list(rec["path"]), {int(e): int(o) for e, o in rec["head_ops"]},
                  {int(r): int(o) for r, o in rec["layer_ops"]}, rec.get("path_probability"))


@dataclass
class Searched:
    """What the search hands ``decide``: the top-k epochs' records (best first) and the cost
    table it searched with (``unit`` "ms" of the latency model, or "mmacs")."""

    kept: list[dict[str, Any]]
    table: CostTable
    unit: str


def run_search(net: DenseNASSupernet, cfg: DenseNASConfig, ctx) -> Searched:
    torch.manual_seed(ctx.seed)
    net.seed = ctx.seed
    data, layout = ctx.data, net.layout
    bs = int(ctx.batch_size)
    table, unit = cost_table(layout, ctx.latency_model, cfg.skip_cost_fraction, ctx.log)
    budget = ctx.budget_ms if unit == "ms" else None
    epochs = int(ctx.epochs)
    n_warm = split_epochs(epochs, cfg.warmup_fraction)
    select_start = min(epochs - 1, max(n_warm, int(math.floor(cfg.select_from * epochs))))
    nw, na = data.n_batches("weights", bs), data.n_batches("arch", bs)
    compute = getattr(ctx, "compute", None) or _cpu()
    searcher = Searcher(net, cfg, table, budget, epochs * nw, (epochs - n_warm) * na, ctx.seed, bs,
                        compute, average=getattr(ctx, "average", None),
                        aim=float(getattr(ctx, "aim", 0.95)))
    gen_w = torch.Generator().manual_seed(ctx.seed)
    gen_a = torch.Generator().manual_seed(ctx.seed + 1)
    kept: list[dict[str, Any]] = []
    first = 0
    resumed = ctx.restore_state() if hasattr(ctx, "restore_state") else None
    if resumed is not None:
        first, state = resumed
        load_module_state(net, state["supernet"])
        searcher.load_state(state["searcher"])
        gen_w.set_state(state["gen_w"].get_state())
        gen_a.set_state(state["gen_a"].get_state())
        data.load_state(state["data"])
        kept = [dict(k) for k in state["kept"]]
    g = layout.graph
    ctx.log(f"densenas: {n_warm} warm-up + {epochs - n_warm} search epochs; {len(g.edges)} edges, "
            f"{g.count_paths()} paths, {len(layout.head_row)} heads, {layout.n_layer_rows} stacked "
            f"layers; costs in {unit}" + (f", budget {budget:.4f} ms" if budget is not None else "")
            + f"; lr {searcher.lr:.3g}, arch lr {searcher.arch_lr:.3g}")
    total = epochs * nw + (epochs - n_warm) * na
    # Channels-last runs the depthwise convolutions about twice as fast on CPU; the net is put
    # back to the default layout at the end (the derived net inherits plain tensors).
    net.to(memory_format=torch.channels_last)
    bar = ctx.progress(total=total, desc="densenas search") if ctx.progress is not None else None
    if bar is not None and first:
        bar.update(first * nw + max(0, first - n_warm) * na)
    try:
        for epoch in range(first, epochs):
            phase = "warmup" if epoch < n_warm else "search"
            t0 = time.perf_counter()
            a_losses, a_costs = [], []
            if phase == "search":
                for xa, ya in data.epoch("arch", bs, gen_a):
                    loss, c = searcher.arch_step(_cl(xa), ya)
                    a_losses.append(loss)
                    a_costs.append(c)
                    if bar is not None:
                        bar.update(1)
            w_losses = []
            for xw, yw in data.epoch("weights", bs, gen_w):
                w_losses.append(searcher.weight_step(_cl(xw), yw, uniform=phase == "warmup"))
                if bar is not None:
                    bar.update(1)
            val = validate(net, data.ordered("val"), compute)
            with torch.no_grad():
                choice = viterbi_choice(layout, net.transition_probs(), net.alpha_head, net.alpha_stack)
            rec = choice_record(layout, choice, table, unit)
            row: dict[str, Any] = {"epoch": epoch + 1, "phase": phase,
                                   "loss": sum(w_losses) / max(1, len(w_losses)), "val_acc": val}
            if a_losses:
                row["arch_loss"] = sum(a_losses) / len(a_losses)
            row["predicted_ms" if unit == "ms" else "expected_mmacs"] = searcher.expected_ms()
            row[f"derived_{unit}"] = rec[f"derived_{unit}"]
            row["path"] = rec["path"]
            row["path_probability"] = rec["path_probability"]
            row["seconds"] = time.perf_counter() - t0
            ctx.history.append(row)
            if epoch >= select_start:
                # the parameters behind this epoch's path: the resize lever re-decodes them
                params = {"beta": net.beta.detach().cpu().tolist(),
                          "alpha_head": net.alpha_head.detach().cpu().tolist(),
                          "alpha_stack": net.alpha_stack.detach().cpu().tolist()}
                kept.append({"epoch": epoch + 1, "val_acc": val, **rec, "params": params})
                kept.sort(key=lambda k: (-k["val_acc"], -k["epoch"]))
                del kept[cfg.top_k:]
            if bar is not None:
                bar.set_postfix(epoch=f"{epoch + 1}/{epochs}", loss=f"{row['loss']:.3f}",
                                val_acc=f"{val:.3f}")
            ctx.log(f"densenas {phase} epoch {epoch + 1}/{epochs}: loss {row['loss']:.3f} val_acc "
                    f"{val:.3f} expected {row.get('predicted_ms', row.get('expected_mmacs')):.4f} "
                    f"derived {rec[f'derived_{unit}']:.4f} {unit} path {rec['path']} "
                    f"({row['seconds']:.1f} s)")
            if hasattr(ctx, "save_state"):
                ctx.save_state(epoch + 1, {
                    "supernet": module_state(net), "searcher": searcher.state(), "gen_w": gen_w,
                    "gen_a": gen_a, "data": data.state(), "kept": kept})
    finally:
        if bar is not None:
            bar.close()
        net.to(memory_format=torch.contiguous_format)
    net.eval()
    # the latency model may have been refitted on measurements meanwhile: the decision's levers
    # estimate with its latest costs
    table, unit = cost_table(layout, ctx.latency_model, cfg.skip_cost_fraction)
    return Searched(kept, table, unit)
