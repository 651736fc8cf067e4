"""ENAS's LSTM controller for the macro space, and its REINFORCE update.

Per node i the controller takes two LSTM steps (Pham et al. 2018, §2.3 and the macro
controller of the authors' code):

1. an op step: logits ``w_soft(h)`` over the candidate ops, divided by the temperature and
   squashed as ``tanh_constant · tanh(·)``; the sampled op's embedding is the next input;
2. a skip step (node i > 0): sigmoid attention over the earlier nodes' anchors,
   ``v · tanh(W1 h_j + W2 h_i)``, one Bernoulli per earlier node j (its two logits ±q through
   the same temperature and tanh); the next input is the mean of the chosen nodes' anchors
   (sum / (1 + count)), the graph embedding for node 0.

Every decision's log-probability and entropy are kept, and the KL divergence of each skip
probability from ``skip_target`` (the paper's skip penalty). Sampling draws from a
``torch.Generator`` on the CPU, so a seed fixes the sequence of architectures on any device.
The skip KL uses the probability the skip is sampled with (softmax of ±q); the authors' code
takes the sigmoid of q itself there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class Sample:
    """One sampled (or scored) architecture: op indices, skip bits, and the differentiable
    sums of log-probability, entropy and skip-rate KL over all its decisions."""

    ops: list[int]
    skips: list[list[int]]
    log_prob: torch.Tensor
    entropy: torch.Tensor
    skip_kl: torch.Tensor
    op_probs: list[list[float]] = field(default_factory=list)  # per node, detached

    @property
    def skip_count(self) -> int:
        return sum(sum(r) for r in self.skips)


class Controller(nn.Module):
    def __init__(self, num_ops: int, num_nodes: int, cfg):
        super().__init__()
        h = cfg.lstm_size
        self.num_ops, self.num_nodes = num_ops, num_nodes
        self.temperature, self.tanh_constant = cfg.temperature, cfg.tanh_constant
        self.skip_target = cfg.skip_target
        self.lstm = nn.ModuleList(nn.LSTMCell(h, h) for _ in range(cfg.lstm_layers))
        self.g_emb = nn.Parameter(torch.empty(1, h))
        self.w_emb = nn.Embedding(num_ops, h)
        self.w_soft = nn.Linear(h, num_ops, bias=False)
        self.w_attn_1 = nn.Linear(h, h, bias=False)
        self.w_attn_2 = nn.Linear(h, h, bias=False)
        self.v_attn = nn.Linear(h, 1, bias=False)
        for p in self.parameters():  # the authors' initialisation
            nn.init.uniform_(p, -0.1, 0.1)

    def _squash(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits / self.temperature
        return self.tanh_constant * torch.tanh(logits)

    def _step(self, x, state):
        new = []
        for cell, (h, c) in zip(self.lstm, state):
            h, c = cell(x, (h, c))
            new.append((h, c))
            x = h
        return x, new

    def forward(self, gen: torch.Generator | None = None, ops: list[int] | None = None,
                skips: list[list[int]] | None = None, greedy: bool = False) -> Sample:
        """Sample an architecture with ``gen`` (a CPU generator), take the most likely one
        (``greedy``), or score given decisions (``ops`` and ``skips``: teacher forcing)."""
        dev = self.g_emb.device
        zeros = torch.zeros(1, self.g_emb.shape[1], device=dev)
        state = [(zeros, zeros) for _ in self.lstm]
        x = self.g_emb
        anchors, anchors_w1 = [], []
        out_ops: list[int] = []
        out_skips: list[list[int]] = []
        log_prob = torch.zeros((), device=dev)
        entropy = torch.zeros((), device=dev)
        kl = torch.zeros((), device=dev)
        op_probs: list[list[float]] = []
        for i in range(self.num_nodes):
            h, state = self._step(x, state)
            logits = self._squash(self.w_soft(h))[0]  # (num_ops,)
            logp = torch.log_softmax(logits, -1)
            p = logp.exp()
            if ops is not None:
                op = int(ops[i])
            elif greedy:
                op = int(p.argmax())
            else:
                op = int(torch.multinomial(p.detach().cpu(), 1, generator=gen))
            out_ops.append(op)
            op_probs.append(p.detach().cpu().tolist())
            log_prob = log_prob + logp[op]
            entropy = entropy - (p * logp).sum()
            x = self.w_emb(torch.tensor([op], device=dev))

            h, state = self._step(x, state)
            if i > 0:
                query = torch.tanh(torch.cat(anchors_w1, 0) + self.w_attn_2(h))  # (i, H)
                q = self.v_attn(query)  # (i, 1)
                logits2 = self._squash(torch.cat([-q, q], 1))  # (i, 2): [no skip, skip]
                logp2 = torch.log_softmax(logits2, -1)
                p2 = logp2.exp()
                if skips is not None:
                    row = [int(b) for b in skips[i]]
                elif greedy:
                    row = [int(v) for v in (p2[:, 1] > 0.5).tolist()]
                else:
                    row = torch.multinomial(p2.detach().cpu(), 1, generator=gen)[:, 0].tolist()
                out_skips.append(row)
                chosen = torch.tensor(row, device=dev)
                log_prob = log_prob + logp2.gather(1, chosen[:, None]).sum()
                entropy = entropy - (p2 * logp2).sum()
                ps, t = p2[:, 1].clamp(1e-6, 1 - 1e-6), self.skip_target
                kl = kl + (ps * torch.log(ps / t) + (1 - ps) * torch.log((1 - ps) / (1 - t))).sum()
                w = chosen.to(h.dtype)[None, :]  # (1, i)
                x = (w @ torch.cat(anchors, 0)) / (1.0 + w.sum())
            else:
                out_skips.append([])
                x = self.g_emb
            anchors.append(h)
            anchors_w1.append(self.w_attn_1(h))
        return Sample(out_ops, out_skips, log_prob, entropy, kl, op_probs)


class Baseline:
    """The exponential moving average of the reward; it starts at the first reward (the
    paper's starts at 0, which makes every early advantage positive)."""

    def __init__(self, decay: float):
        self.decay = decay
        self.value: float | None = None

    def update(self, reward: float) -> float:
        self.value = reward if self.value is None else \
            self.decay * self.value + (1 - self.decay) * reward
        return self.value


class Reinforce:
    """The controller's update: the EMA baseline is moved to the batch's mean reward first (as
    the authors' code does), then one Adam step on ``reinforce_loss``. Adam runs with
    beta1 = 0 and eps = 1e-3, the authors' controller optimiser settings."""

    def __init__(self, controller: Controller, cfg, average=None):
        self.cfg = cfg
        self.params = list(controller.parameters())
        self.opt = torch.optim.Adam(self.params, lr=cfg.controller_lr,
                                    betas=(0.0, 0.999), eps=1e-3)
        self.baseline = Baseline(cfg.baseline_decay)
        # data-parallel: the controller's gradients averaged across ranks before its step (the
        # rewards are already the same on every rank; this keeps the controllers identical)
        self.average = average

    def step(self, samples: list[Sample], rewards: list[float]) -> float:
        b = self.baseline.update(sum(rewards) / len(rewards))
        loss = reinforce_loss(samples, rewards, b, entropy_weight=self.cfg.entropy_weight,
                              skip_weight=self.cfg.skip_weight)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.average is not None:
            self.average([p.grad for p in self.params])
        self.opt.step()
        return loss.item()

    def state(self) -> dict:
        """The optimiser's and the baseline's state (for a checkpoint)."""
        return {"opt": self.opt.state_dict(), "baseline": self.baseline.value}

    def load_state(self, state: dict) -> None:
        self.opt.load_state_dict(state["opt"])
        v = state["baseline"]
        self.baseline.value = None if v is None else float(v)


def reinforce_loss(samples: list[Sample], rewards: list[float], baseline: float | None, *,
                   entropy_weight: float, skip_weight: float) -> torch.Tensor:
    """The controller's loss for one update: -(R - b)·log π(m) averaged over the samples, minus
    the entropy bonus, plus the skip-rate KL penalty. ``baseline`` None: no baseline (b = 0)."""
    b = 0.0 if baseline is None else baseline
    terms = [-(r - b) * s.log_prob - entropy_weight * s.entropy + skip_weight * s.skip_kl
             for s, r in zip(samples, rewards)]
    return torch.stack(terms).mean()


@dataclass
class CellSample:
    """One sampled (or scored) pair of micro cells: per cell type, per compute node
    ``[input a, op a, input b, op b]`` (indices into the cell's nodes and the cell ops), and the
    differentiable sums of log-probability and entropy. ``skip_kl`` is zero: the micro space
    has no skip penalty; with it, ``Reinforce`` and ``reinforce_loss`` take either sample."""

    normal: list[list[int]]
    reduce: list[list[int]]
    log_prob: torch.Tensor
    entropy: torch.Tensor
    skip_kl: torch.Tensor
    op_probs: list[list[float]] = field(default_factory=list)  # per op decision, detached

    @property
    def skip_count(self) -> int:
        return 0


class CellController(nn.Module):
    """ENAS's micro controller: the normal cell, then the reduction cell (the LSTM state carried
    over), each sampled node by node. Per cell, the two input nodes take one LSTM step each
    (their anchors are zeros, their attention keys ``W1 h``); per compute node, two index steps
    (attention ``v · tanh(W1 h_j + W2 h)`` over the earlier nodes' keys; the chosen node's
    anchor is the next input), two op steps (softmax over the cell ops; the op's embedding is
    the next input) and one step whose output is the node's anchor. Every logit goes through the
    temperature and tanh constant as in the macro controller.

    ``op_bias``: the initial value of the op logits' learnable bias, per op. The authors'
    micro controller starts its op bias at 10 on the two sep convs (``b_soft``), a prior
    towards the costly ops that the search then prunes away; ``CellSupernet`` gives it the
    same shape (see ``cells.SEP_PRIOR``)."""

    def __init__(self, num_ops: int, blocks: int, cfg, op_bias: list[float] | None = None):
        super().__init__()
        h = cfg.lstm_size
        self.num_ops, self.blocks = num_ops, blocks
        self.temperature, self.tanh_constant = cfg.temperature, cfg.tanh_constant
        self.lstm = nn.ModuleList(nn.LSTMCell(h, h) for _ in range(cfg.lstm_layers))
        self.g_emb = nn.Parameter(torch.empty(1, h))
        self.w_emb = nn.Embedding(num_ops, h)
        self.w_soft = nn.Linear(h, num_ops, bias=True)
        self.w_attn_1 = nn.Linear(h, h, bias=False)
        self.w_attn_2 = nn.Linear(h, h, bias=False)
        self.v_attn = nn.Linear(h, 1, bias=False)
        for p in self.parameters():
            nn.init.uniform_(p, -0.1, 0.1)
        with torch.no_grad():
            self.w_soft.bias.copy_(torch.tensor(op_bias or [0.0] * num_ops))

    _squash = Controller._squash
    _step = Controller._step

    def _choose(self, logits, given, greedy, gen, acc):
        logp = torch.log_softmax(logits, -1)
        p = logp.exp()
        if given is not None:
            k = int(given)
        elif greedy:
            k = int(p.argmax())
        else:
            k = int(torch.multinomial(p.detach().cpu(), 1, generator=gen))
        acc["log_prob"] = acc["log_prob"] + logp[k]
        acc["entropy"] = acc["entropy"] - (p * logp).sum()
        return k, p

    def _cell(self, state, gen, given, greedy, acc, op_probs):
        dev = self.g_emb.device
        zeros = torch.zeros(1, self.g_emb.shape[1], device=dev)
        x = self.g_emb
        anchors, keys = [], []
        for _ in range(2):
            h, state = self._step(x, state)
            anchors.append(zeros)
            keys.append(self.w_attn_1(h))
        arc: list[list[int]] = []
        for j in range(self.blocks):
            node = [0, 0, 0, 0]
            for slot in range(2):
                h, state = self._step(x, state)
                q = self.v_attn(torch.tanh(torch.cat(keys, 0) + self.w_attn_2(h)))[:, 0]
                k, _ = self._choose(self._squash(q), None if given is None else given[j][2 * slot],
                                    greedy, gen, acc)
                node[2 * slot] = k
                x = anchors[k]
            for slot in range(2):
                h, state = self._step(x, state)
                logits = self._squash(self.w_soft(h))[0]
                k, p = self._choose(logits, None if given is None else given[j][2 * slot + 1],
                                    greedy, gen, acc)
                node[2 * slot + 1] = k
                op_probs.append(p.detach().cpu().tolist())
                x = self.w_emb(torch.tensor([k], device=dev))
            h, state = self._step(x, state)
            anchors.append(h)
            keys.append(self.w_attn_1(h))
            x = self.g_emb
            arc.append(node)
        return arc, state

    def forward(self, gen: torch.Generator | None = None, normal: list[list[int]] | None = None,
                reduce: list[list[int]] | None = None, greedy: bool = False) -> CellSample:
        """Sample both cells with ``gen`` (a CPU generator), take the most likely ones
        (``greedy``, decision by decision), or score given cells (teacher forcing)."""
        dev = self.g_emb.device
        zeros = torch.zeros(1, self.g_emb.shape[1], device=dev)
        state = [(zeros, zeros) for _ in self.lstm]
        acc = {"log_prob": torch.zeros((), device=dev), "entropy": torch.zeros((), device=dev)}
        op_probs: list[list[float]] = []
        arc_n, state = self._cell(state, gen, normal, greedy, acc, op_probs)
        arc_r, state = self._cell(state, gen, reduce, greedy, acc, op_probs)
        return CellSample(arc_n, arc_r, acc["log_prob"], acc["entropy"],
                          torch.zeros((), device=dev), op_probs)
