"""The TF-NAS search loop (Hu et al., ECCV 2020: bi-sampling, sink-connecting, elasticity-scaling).

* **Weight step (bi-sampling)** on a batch of the weight split: per block the *Gumbel path* takes
  argmax(α + g) (g standard Gumbel noise) and the *random path* an op drawn uniformly from the
  *other seven*; both paths are run forward on the same batch with the depth mixture softmax(β)
  frozen, CE₁ + CE₂ is backpropagated once, and one SGD step is taken. During warm-up only the
  Gumbel path runs. Weights of masked channels are restored after the step (and their momentum
  zeroed), so they are kept, untrained, for when they come back.
* **Arch step** after every ``w_steps_per_arch_step`` weight steps, on a batch of the arch split:
  every block runs all 8 ops mixed with soft Gumbel weights softmax((α + g)/τ), the stages'
  outputs are the sink-weighted sums, and the loss is CE + λ·|LAT/T − 1| with LAT the expected
  latency under the same weights (``CostTable.expected``). Adam on α and β; α is renormalised to
  log-probabilities (log-softmax) after every step.
* **After every post-warm-up epoch**: the temperature decays geometrically and elasticity
  scaling sets the parsed ops' widths so the parsed latency lands just under T.
* **Measured landing** (nas2deploy's addition, where the target can be timed here): the parsed
  architecture is then measured on the target runtime and T, in the cost table's units, becomes
  T × predicted / measured for the next epoch's arch steps and elastic step. After the last epoch
  a few more elastic steps re-aim until the measured latency is within a tolerance of T. The
  paper's table was measured on its device and its per-op sum is close to the whole net there;
  a FLOPs proxy or a table of ops timed alone is biased on a compiled runtime, and elasticity
  would land that bias exactly on T.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from nas2deploy.checkpoint import load_module_state, module_state
from nas2deploy.device import Compute, LossScale
from nas2deploy.latency import secant
from nas2deploy.train import split_epochs

from .config import TFNASConfig
from .cost import CostTable
from .derive import inherited, network_spec, parsed
from .elastic import elastic_scale
from .space import TFNASSupernet

# --------------------------------------------------------------------------------------------
# sampling


def gumbel_like(x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """Standard Gumbel noise shaped like ``x``, float32 on ``x``'s device, drawn (and computed)
    on the CPU with ``gen`` (a CPU generator: a seed fixes the noise on any device)."""
    u = torch.rand(x.shape, generator=gen).clamp_(1e-10, 1.0 - 1e-7)
    return (-torch.log(-torch.log(u))).to(x.device)


def gumbel_argmax(alpha: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """The Gumbel path: per row, argmax of a Gumbel sample of α (the temperature does not change
    the argmax). Rows are drawn with probabilities softmax(α). Computed on the CPU: the op
    indices are CPU tensors (read as Python ints per block)."""
    a = alpha.detach().float().cpu()
    return (a + gumbel_like(a, gen)).argmax(-1)


def random_other(chosen: torch.Tensor, n_ops: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """The random path: per row an op drawn uniformly from the n_ops − 1 ops other than ``chosen``."""
    r = torch.randint(0, n_ops - 1, chosen.shape, generator=gen)
    return r + (r >= chosen).long()


def soft_gumbel(alpha: torch.Tensor, tau: float, gen: torch.Generator | None = None) -> torch.Tensor:
    """Soft Gumbel weights softmax((α + g)/τ) per row (differentiable in α)."""
    return torch.softmax((alpha + gumbel_like(alpha, gen)) / tau, -1)


# --------------------------------------------------------------------------------------------
# schedule


def aim_of(cfg: TFNASConfig, ctx: Any) -> tuple[float, float]:
    """(fraction of the budget T aims at, the measured landing's window): the pipeline's own aim
    and re-size band from ``ctx`` for an option left at its default, the option where it is set."""
    fields = TFNASConfig.__dataclass_fields__
    fraction, tolerance = cfg.target_fraction, cfg.landing_tolerance
    if fraction == fields["target_fraction"].default:
        fraction = float(getattr(ctx, "aim", fraction))
    if tolerance == fields["landing_tolerance"].default:
        tolerance = float(getattr(ctx, "resize_band", tolerance))
    return fraction, tolerance


def temperature(cfg: TFNASConfig, search_epoch: int, n_search: int) -> float:
    """τ of post-warm-up epoch ``search_epoch`` (0-based): tau_start → tau_end geometrically."""
    if n_search <= 1 or search_epoch <= 0:
        return cfg.tau_start
    decay = (cfg.tau_end / cfg.tau_start) ** (1.0 / (n_search - 1))
    return cfg.tau_start * decay ** min(search_epoch, n_search - 1)


# --------------------------------------------------------------------------------------------
# elasticity scaling on the supernet


def parsed_width_problem(net: TFNASSupernet, table: CostTable):
    """(blocks, ops, depths, mids, lo, hi, stage_of, latency_fn) of the parsed architecture."""
    ops, depths = net.parsed_ops(), net.parsed_depths()
    blocks = table.active_blocks(depths)
    all_blocks = net.blocks()
    mods = [all_blocks[j].ops[ops[j]] for j in blocks]
    mids = [m.mid for m in mods]
    lo = [m.mid_min for m in mods]
    hi = [m.mid_max for m in mods]
    stage_of = [table.stage_of[j] for j in blocks]

    def latency(ms) -> float:
        return table.fixed_ms + sum(table.cost(j, ops[j], m) for j, m in zip(blocks, ms))

    return blocks, ops, depths, mids, lo, hi, stage_of, latency


def apply_widths(net: TFNASSupernet, blocks: list[int], ops: list[int], mids: list[int]) -> None:
    """Set the parsed ops' widths; their active channels become the top-k depthwise L1 filters."""
    all_blocks = net.blocks()
    for j, m in zip(blocks, mids):
        all_blocks[j].ops[ops[j]].set_width(m)


def width_step(lo: int, hi: int, multiple: int) -> int:
    """The step a block's width moves in within [lo, hi]: ``multiple`` where the range holds a
    multiple of it, else single channels."""
    return multiple if multiple > 1 and -(-lo // multiple) * multiple <= hi else 1


def elastic_step(net: TFNASSupernet, table: CostTable, target: float,
                 refine: bool = True, multiple: int = 1) -> dict[str, Any]:
    """Elasticity scaling of the parsed architecture. ``multiple`` > 1: widths move in whole
    multiples of it (each block's range rounded inward to multiples; a block whose range holds
    none keeps channel steps), as the target runs such channel counts best: on onnxruntime's
    blocked conv layout (16 channels with AVX-512) a parsed TF-NAS net with mid widths such as
    59, 86, 181 measured 0.55 ms against an estimate of 0.12 ms, where its neighbours in the
    same search, at multiples of 16, measured 0.8-1.3x their estimates."""
    blocks, ops, depths, mids, lo, hi, stage_of, latency = parsed_width_problem(net, table)
    unit = [width_step(l, h, multiple) for l, h in zip(lo, hi)]
    lo_u = [-(-l // u) for l, u in zip(lo, unit)]
    hi_u = [h // u for h, u in zip(hi, unit)]
    start = [min(max(m // u, a), b) for m, u, a, b in zip(mids, unit, lo_u, hi_u)]

    def in_units(ms) -> float:
        return latency([m * u for m, u in zip(ms, unit)])

    new_u, trace = elastic_scale(start, lo_u, hi_u, stage_of, in_units, target, fill=refine)
    new = [m * u for m, u in zip(new_u, unit)]
    apply_widths(net, blocks, ops, new)
    return {"latency": latency(new), "before": latency(mids), "trace": trace}


class Landing:
    """T in the cost table's units, corrected by what the target runtime measured.

    ``aim`` is the table-unit latency that the last measurement says is T on the target:
    T × predicted / measured of the parsed architecture, a local (multiplicative) correction of
    the estimate around the architecture the search is at.
    """

    def __init__(self, net: TFNASSupernet, table: CostTable, target_ms: float, measure,
                 multiple: int = 1):
        self.net, self.table, self.target, self._measure = net, table, target_ms, measure
        self.multiple = multiple
        self.correction = 1.0
        self.last_ms: float | None = None
        self.last_predicted = 0.0  # the estimate (table units) of the last measured net

    @property
    def aim(self) -> float:
        return self.target / self.correction

    def measure(self) -> float:
        ops, depths, mids = parsed(self.net)
        spec = network_spec(self.net.layout, ops, depths, mids)
        ms = float(self._measure(spec, inherited(self.net, spec, ops)))  # CPU weights
        # after the measurement: a FLOPs proxy has refitted on it (the table follows)
        predicted = self.table.parsed(ops, depths, mids)
        if predicted > 0 and ms > 0:
            self.correction = ms / predicted
        self.last_ms, self.last_predicted = ms, predicted
        return ms

    def land(self, rounds: int, tolerance: float, refine: bool, log) -> None:
        """Re-aim the elastic step until the measured parsed latency is within ``tolerance`` of
        T; keep the architecture of the best measurement (the highest within T × (1 + tolerance)).

        The next aim is the secant, in estimate against measurement, through the nearest
        measurements either side of T once there are both, else the last estimate scaled by
        T / measured. A multiplicative correction alone oscillates when the estimate's slope in
        width is off: on OpenVINO one landing went 0.84 T → 1.25 T → 0.81 T → 1.43 T. When even
        the parsed ops' max widths cannot reach T, widths alone cannot land it (their range is
        [max/2, max]); the parsed depth then grows first (``grow_depth``)."""
        ms = self.last_ms if self.last_ms is not None else self.measure()
        best = (ms, self._state()) if ms <= self.target * (1 + tolerance) else None
        points = [(self.last_predicted, ms)]
        for _ in range(rounds):
            if abs(ms / self.target - 1) <= tolerance:
                break
            before = self._state()
            grown = 0
            while (ms < self.target and max_width_latency(self.net, self.table) < self.aim
                   and grow_depth(self.net)):
                grown += 1
            if grown:
                points = []  # another architecture: its aim-to-latency curve starts afresh
            aim = _next_aim(points, self.target) if points else self.aim
            self.step(aim, refine)
            if self._state() == before:
                break
            ms = self.measure()
            points.append((self.last_predicted, ms))
            log(f"tfnas landing: measured {ms:.4f} ms (T {self.target:.4f}, x"
                f"{self.correction:.3f} of the estimate)"
                + (f", {grown} block(s) deeper" if grown else ""))
            if ms <= self.target * (1 + tolerance) and (best is None or ms > best[0]):
                best = (ms, self._state())
        if best is not None and best[1] != self._state():
            self._restore(best[1])
            self.measure()  # the architecture kept is re-timed, so the last record describes it

    def state(self) -> dict[str, Any]:
        return {"correction": self.correction, "last_ms": self.last_ms,
                "last_predicted": self.last_predicted}

    def load_state(self, state: dict[str, Any]) -> None:
        self.correction, self.last_ms = state["correction"], state["last_ms"]
        self.last_predicted = state["last_predicted"]

    def step(self, aim: float, refine: bool) -> dict[str, Any]:
        """The elastic step aimed at ``aim`` (table units)."""
        return elastic_step(self.net, self.table, aim, refine, self.multiple)

    def _state(self):
        return self.net.mids(), self.net.parsed_depths()

    def _restore(self, state) -> None:
        mids, depths = state
        set_all_widths(self.net, mids)
        set_depths(self.net, depths)


def max_width_latency(net: TFNASSupernet, table: CostTable) -> float:
    """The parsed architecture's estimate with every parsed op at its max width."""
    return _bound_latency(net, table, "mid_max")


def min_width_latency(net: TFNASSupernet, table: CostTable) -> float:
    """The parsed architecture's estimate with every parsed op at its min width."""
    return _bound_latency(net, table, "mid_min")


def _bound_latency(net: TFNASSupernet, table: CostTable, bound: str) -> float:
    ops, depths = net.parsed_ops(), net.parsed_depths()
    return table.parsed(ops, depths, [getattr(b.ops[o], bound) for b, o in zip(net.blocks(), ops)])


def grow_depth(net: TFNASSupernet) -> bool:
    """One block more in the stage whose β gives the next depth the highest probability (the
    exit the search most nearly chose); False when every stage is at full depth. This is
    nas2deploy's addition: after a short search the parsed (argmax) architecture can sit far from
    the expectation the latency term steered, and no width reaches T."""
    return _step_depth(net, +1)


def shrink_depth(net: TFNASSupernet) -> bool:
    """One block fewer in the stage whose β gives the shallower exit the highest probability;
    False when every stage is at depth 1. The mirror of ``grow_depth``."""
    return _step_depth(net, -1)


def _step_depth(net: TFNASSupernet, step: int) -> bool:
    depths = net.parsed_depths()
    best, best_p = None, -1.0
    with torch.no_grad():
        for s, (beta, d) in enumerate(zip(net.betas, depths)):
            if 1 <= d + step <= len(beta):
                p = float(torch.softmax(beta, 0)[d + step - 1])
                if p > best_p:
                    best, best_p = s, p
    if best is None:
        return False
    set_depths(net, [d + step * (s == best) for s, d in enumerate(depths)])
    return True


def upgrade_op(net: TFNASSupernet, table: CostTable) -> bool:
    """Past full depth and max widths: one parsed block switches to a costlier op, the one the
    search gave the highest probability among the ops costlier than the current at max width,
    at its max width; False when no block has one. Ops are what elastic width and depth cannot
    change: a network at 0.86 of its budget with every stage full and every width at its max
    stays there without this."""
    ops, depths = net.parsed_ops(), net.parsed_depths()
    blocks, best, best_p = net.blocks(), None, -math.inf
    with torch.no_grad():
        for j in table.active_blocks(depths):
            now = table.cost(j, ops[j], blocks[j].ops[ops[j]].mid_max)
            for o, op in enumerate(blocks[j].ops):
                if o != ops[j] and table.cost(j, o, op.mid_max) > now and net.alpha[j, o] > best_p:
                    best, best_p = (j, o), float(net.alpha[j, o])
    if best is None:
        return False
    j, o = best
    set_ops(net, [o if i == j else op for i, op in enumerate(ops)])
    blocks[j].ops[o].set_width(blocks[j].ops[o].mid_max)
    return True


def set_ops(net: TFNASSupernet, ops: list[int]) -> None:
    """Make ``ops`` the parsed ops: each block's α gets its argmax at the op, raised just above
    the others (α stay log-probabilities: the row is renormalised)."""
    with torch.no_grad():
        for row, o in zip(net.alpha, ops):
            if int(row.argmax()) != o:
                row[o] = row.max() + 0.1
                row.sub_(torch.logsumexp(row, 0))


def resize(net: TFNASSupernet, table: CostTable, factor: float, refine: bool = True,
           multiple: int = 1) -> bool:
    """Re-land the parsed architecture at ``factor`` × its estimated latency: the elastic step
    aimed there, after growing the depth (then upgrading ops, ``upgrade_op``) while even the max
    widths fall short, or shrinking the depth while even the min widths are too slow. What the
    pipeline asks for when the measured latency of the decided network (or its bundle) misses
    the aim: widths move block by block, in the target's channel multiple, where a uniform width
    multiplier on onnxruntime moves every layer by a whole 16-channel block at once (one TF-NAS
    net: 1.53M MACs at x1.0, 1.13M at x0.99). True when the architecture changed."""
    ops, depths = net.parsed_ops(), net.parsed_depths()
    mids = [b.ops[o].mid for b, o in zip(net.blocks(), ops)]
    aim = factor * table.parsed(ops, depths, mids)
    before = (net.mids(), depths, ops)
    while factor > 1 and max_width_latency(net, table) < aim and (grow_depth(net)
                                                                  or upgrade_op(net, table)):
        pass
    while factor < 1 and min_width_latency(net, table) > aim and shrink_depth(net):
        pass
    elastic_step(net, table, aim, refine, multiple)
    return (net.mids(), net.parsed_depths(), net.parsed_ops()) != before


def _next_aim(points: list[tuple[float, float]], target: float) -> float:
    """The aim (table units) whose measured latency should be ``target``, from (estimate, ms)
    points of one architecture's measured widths: the secant through the nearest points below
    and above the target when both exist, else the last estimate scaled by target / measured."""
    between = secant(points, target)
    if between is not None:
        return between
    a, m = points[-1]
    return a * target / m


def set_depths(net: TFNASSupernet, depths: list[int]) -> None:
    """Make ``depths`` the parsed depths: each stage's β gets its argmax at depth d, raised just
    above the others, the rest of the distribution untouched."""
    with torch.no_grad():
        for beta, d in zip(net.betas, depths):
            if int(beta.argmax()) != d - 1:
                beta[d - 1] = beta.max() + 0.1


def set_all_widths(net: TFNASSupernet, mids: list[list[int]]) -> None:
    for block, row in zip(net.blocks(), mids):
        for op, m in zip(block.ops, row):
            op.set_width(m)


# --------------------------------------------------------------------------------------------
# the steps


class Searcher:
    """Optimisers and the two kinds of step on one supernet."""

    def __init__(self, net: TFNASSupernet, cfg: TFNASConfig, table: CostTable | None,
                 target_ms: float | None, total_w_steps: int, seed: int,
                 compute: Compute | None = None, average: Callable[[list], None] | None = None):
        self.net, self.cfg, self.table, self.target = net, cfg, table, target_ms
        # data-parallel: gradients averaged across ranks before every step (None: one process)
        self.average = average
        self.compute = compute if compute is not None else Compute(torch.device("cpu"), "off")
        self.w_scaler = self.compute.scaler()  # fp16 loss scaling (a pass-through otherwise)
        self.a_scale = LossScale(self.compute)
        self.w_params = net.weight_parameters()
        self.a_params = net.arch_parameters()
        self.w_opt = torch.optim.SGD(self.w_params, lr=cfg.lr, momentum=cfg.momentum,
                                     weight_decay=cfg.weight_decay)
        steps = max(total_w_steps, 1)
        self.w_sched = torch.optim.lr_scheduler.LambdaLR(
            self.w_opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
        self.a_opt = torch.optim.Adam(self.a_params, lr=cfg.arch_lr, betas=tuple(cfg.arch_betas),
                                      weight_decay=cfg.arch_weight_decay)
        self.gen = torch.Generator().manual_seed(seed + 2)
        self.w_steps = 0
        self.arch_steps = 0

    def state(self) -> dict[str, Any]:
        """What a checkpoint needs beside the supernet's own tensors."""
        return {"w_opt": self.w_opt.state_dict(), "w_sched": self.w_sched.state_dict(),
                "a_opt": self.a_opt.state_dict(), "w_scaler": self.w_scaler.state_dict(),
                "a_scale": self.a_scale.state_dict(), "gen": self.gen,
                "steps": [self.w_steps, self.arch_steps], "target": self.target}

    def load_state(self, state: dict[str, Any]) -> None:
        self.w_opt.load_state_dict(state["w_opt"])
        self.w_sched.load_state_dict(state["w_sched"])
        self.a_opt.load_state_dict(state["a_opt"])
        if state["w_scaler"]:
            self.w_scaler.load_state_dict(state["w_scaler"])
        self.a_scale.load_state_dict(state["a_scale"])
        self.gen.set_state(state["gen"].get_state())
        self.w_steps, self.arch_steps = state["steps"]
        self.target = state["target"]

    def _restore_masked(self, snapshots) -> None:
        with torch.no_grad():
            for t, dim, idx, vals in snapshots:
                t.index_copy_(dim, idx, vals)
                buf = self.w_opt.state.get(t, {}).get("momentum_buffer")
                if buf is not None:
                    buf.index_fill_(dim, idx, 0.0)

    def weight_step(self, x: torch.Tensor, y: torch.Tensor, bisample: bool) -> float:
        net = self.net
        net.train()
        depth = [torch.softmax(b.detach(), 0) for b in net.betas]
        g_ops = gumbel_argmax(net.alpha, self.gen)
        paths = [g_ops]
        if bisample:
            paths.append(random_other(g_ops, net.alpha.shape[1], self.gen))
        with self.compute.autocast():
            loss = sum(F.cross_entropy(net(x, ops=[int(o) for o in p], depth_probs=depth), y)
                       for p in paths)
        self.w_opt.zero_grad(set_to_none=True)
        self.w_scaler.scale(loss).backward()
        if self.average is not None:
            self.average([p.grad for p in self.w_params])
        # masked channels of the ops that ran: keep their stored values through the step
        snapshots = []
        blocks = net.blocks()
        for p in paths:
            for j, o in enumerate(p.tolist()):
                op = blocks[j].ops[o]
                if op.mid < op.mid_max:
                    idx = op.inactive()
                    snapshots += [(t, d, idx, t.detach().index_select(d, idx).clone())
                                  for t, d in op.mid_tensors()]
        if self.cfg.grad_clip > 0:
            self.w_scaler.unscale_(self.w_opt)  # clip the true gradients
            torch.nn.utils.clip_grad_norm_([p for p in self.w_params if p.grad is not None],
                                           self.cfg.grad_clip)
        self.w_scaler.step(self.w_opt)  # skipped on an fp16 overflow
        self.w_scaler.update()
        self.w_sched.step()
        self._restore_masked(snapshots)
        self.w_opt.zero_grad(set_to_none=True)
        self.w_steps += 1
        return float(loss.detach()) / len(paths)

    def arch_step(self, x: torch.Tensor, y: torch.Tensor, tau: float,
                  costs: torch.Tensor | None) -> dict[str, float]:
        net = self.net
        net.train()
        # the soft op weights and depth probabilities (and the latency term): float32, outside
        # autocast; the supernet's forward under it
        w = soft_gumbel(net.alpha, tau, self.gen)
        depth = [torch.softmax(b, 0) for b in net.betas]
        with self.compute.autocast():
            ce = F.cross_entropy(net(x, weights=w, depth_probs=depth), y)
        loss = ce
        out = {"ce": float(ce.detach())}
        if self.table is not None and self.target and costs is not None and self.cfg.lam > 0:
            lat = self.table.expected(w, depth, costs)
            loss = loss + self.cfg.lam * torch.abs(lat / self.target - 1.0)
            out["expected_ms"] = float(lat.detach())
        grads = self.a_scale.grads(loss, self.a_params, average=self.average)
        if grads is None:  # fp16 overflow: the scale was lowered, this step is skipped
            self.arch_steps += 1
            out["loss"] = float(loss.detach())
            return out
        for p, g in zip(self.a_params, grads):
            p.grad = torch.zeros_like(p) if g is None else g
        if self.cfg.arch_grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.a_params, self.cfg.arch_grad_clip)
        self.a_opt.step()
        self.a_opt.zero_grad(set_to_none=True)
        with torch.no_grad():  # α back to log-probabilities
            net.alpha.copy_(torch.log_softmax(net.alpha, -1))
        self.arch_steps += 1
        out["loss"] = float(loss.detach())
        return out


@torch.no_grad()
def accuracy(net: torch.nn.Module, batches, compute: Compute | None = None) -> float:
    """Top-1 of the parsed architecture with the supernet's weights on ``(x, y)`` batches, BN on
    batch statistics.

    A shared op's running statistics mix the inputs of every path that ran through it, so they
    do not describe the parsed path (the usual one-shot caveat); batch statistics do. Running
    statistics are left untouched (momentum 0 for the duration). The forwards run under
    ``compute``'s autocast.
    """
    was = net.training
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in bns]
    net.train()
    for m in bns:
        m.momentum = 0.0
    correct = total = 0
    try:
        for x, y in batches:
            with (compute or Compute(torch.device("cpu"), "off")).autocast():
                out = net(x)
            correct += int((out.argmax(1) == y).sum())
            total += len(y)
    finally:
        for m, (mom, nbt) in zip(bns, saved):
            m.momentum = mom
            m.num_batches_tracked.copy_(nbt)
        net.train(was)
    return correct / total if total else float("nan")


@dataclass
class Searched:
    """What a TF-NAS search hands its ``decide`` besides α, β and the widths: the cost table it
    searched with, its target T, the target's channel multiple and, after a measured landing,
    the last measurement and the estimate's correction."""

    table: CostTable
    target_ms: float | None = None
    channel_multiple: int = 1
    measured_ms: float | None = None
    correction: float | None = None


def run_search(method, net: TFNASSupernet, ctx) -> Searched:
    """Warm-up, then search, for ``ctx.epochs`` epochs in all; one history row per epoch."""
    cfg: TFNASConfig = method.config
    torch.manual_seed(ctx.seed)
    net.seed = ctx.seed
    data = ctx.data
    bs = int(ctx.batch_size)
    gen_w = torch.Generator().manual_seed(ctx.seed)
    gen_a = torch.Generator().manual_seed(ctx.seed + 1)
    n_warm, n_search = split_epochs(int(ctx.epochs), cfg.warmup_fraction)
    table = method.cost_table(net, ctx.latency_model)
    fraction, tolerance = aim_of(cfg, ctx)
    target = fraction * float(ctx.budget_ms) if ctx.budget_ms else None
    multiple = int(getattr(ctx, "channel_multiple", 1) or 1)
    searched = Searched(table, target, multiple)
    n_batches = data.n_batches("weights", bs)
    compute = getattr(ctx, "compute", None) or Compute(torch.device("cpu"), "off")
    device = net.alpha.device
    searcher = Searcher(net, cfg, table, target, n_batches * (n_warm + n_search), ctx.seed,
                        compute, average=getattr(ctx, "average", None))
    measure = getattr(ctx, "measure", None)
    landing = (Landing(net, table, target, measure, multiple)
               if measure is not None and target and cfg.elastic and cfg.measured_landing
               else None)
    a_batches = data.cycle("arch", bs, gen_a)
    ctx.log(f"tfnas: {n_warm} warm-up + {n_search} search epochs, {len(net.layout.blocks)} blocks "
            f"x {net.alpha.shape[1]} ops, target T = {target if target is None else round(target, 4)} "
            f"({fraction:g} x budget; costs: {table.source})")
    first = 0
    resumed = ctx.restore_state() if hasattr(ctx, "restore_state") else None
    if resumed is not None:
        first, state = resumed
        load_module_state(net, state["supernet"])
        searcher.load_state(state["searcher"])
        if landing is not None:
            landing.load_state(state["landing"])
        gen_w.set_state(state["gen_w"].get_state())
        a_batches.load_state(state["arch_batches"])
        data.load_state(state["data"])
    bar = (ctx.progress(total=n_batches * (n_warm + n_search), desc="tfnas search")
           if ctx.progress is not None else None)
    if bar is not None and first:
        bar.update(first * n_batches)
    try:
        for epoch in range(first, n_warm + n_search):
            warm = epoch < n_warm
            phase = "warmup" if warm else "search"
            s_epoch = epoch - n_warm
            tau = temperature(cfg, s_epoch, n_search) if not warm else cfg.tau_start
            t0 = time.perf_counter()
            # the costs at this epoch's widths, on α's device (they meet the soft op weights)
            costs = table.op_cost_matrix(net.mids()).to(device) if (not warm and target) else None
            w_losses: list[float] = []
            a_rows: list[dict[str, float]] = []
            for i, (xw, yw) in enumerate(data.epoch("weights", bs, gen_w)):
                w_losses.append(searcher.weight_step(xw, yw, bisample=not warm))
                if not warm and (i + 1) % cfg.w_steps_per_arch_step == 0:
                    xa, ya = next(a_batches)
                    a_rows.append(searcher.arch_step(xa, ya, tau, costs))
                if bar is not None:
                    bar.update(1)
            scaled = measured = None
            if not warm and target and cfg.elastic:
                if landing is not None:
                    scaled = landing.step(landing.aim, cfg.elastic_refine)
                    measured = landing.measure()
                    searcher.target = landing.aim
                else:
                    scaled = elastic_step(net, table, target, cfg.elastic_refine, multiple)
            ops, depths = net.parsed_ops(), net.parsed_depths()
            blocks = table.active_blocks(depths)
            all_mids = net.mids()
            predicted = table.parsed(ops, depths, [all_mids[j][ops[j]] for j in range(len(ops))])
            row: dict[str, Any] = {
                "epoch": epoch + 1, "phase": phase,
                "loss": sum(w_losses) / max(len(w_losses), 1),
                "val_acc": accuracy(net, data.ordered("val"), compute),
                "predicted_ms": predicted, "temperature": tau,
                "depths": depths, "blocks": len(blocks),
                "mids": [all_mids[j][ops[j]] for j in blocks],
                "w_steps": len(w_losses), "arch_steps": len(a_rows),
                "seconds": time.perf_counter() - t0,
            }
            if target:
                row["target_ms"] = target
            if a_rows:
                row["arch_loss"] = sum(r["loss"] for r in a_rows) / len(a_rows)
                if "expected_ms" in a_rows[0]:
                    row["expected_ms"] = sum(r["expected_ms"] for r in a_rows) / len(a_rows)
            if scaled is not None:
                row["predicted_before_scaling_ms"] = scaled["before"]
            if measured is not None:
                row["measured_ms"] = measured
                row["estimate_correction"] = landing.correction
            ctx.history.append(row)
            if bar is not None:
                bar.set_postfix(loss=f"{row['loss']:.3f}", val_acc=f"{row['val_acc']:.3f}",
                                ms=f"{predicted:.3f}")
            ctx.log(f"tfnas {phase} epoch {epoch + 1}: loss {row['loss']:.3f} val_acc "
                    f"{row['val_acc']:.3f} predicted {predicted:.4f} ms"
                    + (f" (T {target:.4f})" if target else "") + f" tau {tau:.2f} depths {depths} "
                    f"({row['seconds']:.1f} s)" + (f" E[LAT] {row['expected_ms']:.4f}" if "expected_ms" in row else "")
                    + (f" measured {measured:.4f} ms" if measured is not None else ""))
            if hasattr(ctx, "save_state"):
                ctx.save_state(epoch + 1, {
                    "supernet": module_state(net), "searcher": searcher.state(),
                    "landing": landing.state() if landing is not None else None,
                    "gen_w": gen_w, "arch_batches": a_batches.state(), "data": data.state()})
        if landing is not None and n_search > 0:
            landing.land(cfg.landing_rounds, tolerance, cfg.elastic_refine, ctx.log)
            searched.measured_ms, searched.correction = landing.last_ms, landing.correction
    finally:
        if bar is not None:
            bar.close()
    ctx.log(f"tfnas: {searcher.w_steps} weight steps, {searcher.arch_steps} arch steps; "
            f"{len(table._cache)} op signatures costed")
    net.eval()
    return searched
