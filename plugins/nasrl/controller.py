"""NAS-RL's LSTM controller: per layer, a conv's hyperparameters and its skip inputs.

Zoph & Le (ICLR 2017), §3.1 and §3.3: the controller is an RNN whose every step is a softmax
classifier over one hyperparameter of one layer, the sampled value's embedding being the next
step's input. Per layer i here:

1. kernel size (the paper predicts filter height and width separately; the op vocabulary's
   ``conv`` is square, so one step predicts both);
2. number of filters;
3. stride, only with ``search_strides`` (the paper's first CIFAR space fixes it at 1);
4. an anchor point (§3.3): one sigmoid per earlier state j < i (the stem and layers 0..i-2; the
   previous layer always feeds layer i), ``P(j -> i) = sigmoid(vᵀ tanh(W_prev h_j + W_curr h_i))``
   with h_j the anchor step's hidden state of state j (the stem's is a first step on the graph
   embedding). The next input is the mean of the chosen anchors (sum / (1 + count)), as ENAS's
   controller does; the paper does not say what it feeds.

Each Bernoulli is drawn as a two-way softmax over ±q (q the attention logit), which is the
sigmoid above; the skip-rate KL to ``skip_target`` (ENAS's penalty, weight 0 by default) is kept
for ``reinforce_loss``. Samples are ``nas2deploy_plugins.enas.controller.Sample`` objects (a
subclass carrying the per-attribute ids), so ENAS's ``Baseline``, ``Reinforce`` and
``reinforce_loss`` update this controller unchanged. Sampling draws from a CPU
``torch.Generator``: a seed fixes the sequence of children on any device.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from nas2deploy_plugins.enas.controller import Sample

STEPS = ("kernel", "filters", "stride")


@dataclass
class LayerSample(Sample):
    """A sampled child: ENAS's ``Sample`` (``ops[i]`` is layer i's combined option id
    ``(kernel · F + filters) · S + stride``; ``skips[i]`` has i bits over the earlier states)
    plus the per-attribute ids and each step's probabilities (detached)."""

    kernels: list[int] = field(default_factory=list)
    filters: list[int] = field(default_factory=list)
    strides: list[int] = field(default_factory=list)
    probs: list[dict[str, list[float]]] = field(default_factory=list)


class Controller(nn.Module):
    """``sizes``: the number of choices of each attribute, {"kernel": K, "filters": F,
    "stride": S}. The stride step runs only when S > 1 (strides searched); otherwise every
    stride id is 0."""

    def __init__(self, sizes: dict[str, int], num_layers: int, cfg):
        super().__init__()
        h = cfg.lstm_size
        self.sizes = {k: int(sizes.get(k, 1)) for k in STEPS}
        self.steps = [k for k in STEPS if k != "stride" or self.sizes["stride"] > 1]
        self.num_layers = num_layers
        self.temperature, self.tanh_constant = cfg.temperature, cfg.tanh_constant
        self.skip_target = cfg.skip_target
        self.lstm = nn.ModuleList(nn.LSTMCell(h, h) for _ in range(cfg.lstm_layers))
        self.g_emb = nn.Parameter(torch.empty(1, h))
        self.emb = nn.ModuleDict({k: nn.Embedding(self.sizes[k], h) for k in self.steps})
        self.soft = nn.ModuleDict({k: nn.Linear(h, self.sizes[k], bias=False)
                                   for k in self.steps})
        self.w_prev = nn.Linear(h, h, bias=False)
        self.w_curr = nn.Linear(h, h, bias=False)
        self.v_attn = nn.Linear(h, 1, bias=False)
        for p in self.parameters():  # the paper's initialisation (§4.1)
            nn.init.uniform_(p, -0.08, 0.08)

    def _squash(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits / self.temperature
        return self.tanh_constant * torch.tanh(logits) if self.tanh_constant > 0 else logits

    def _step(self, x, state):
        new = []
        for cell, (h, c) in zip(self.lstm, state):
            h, c = cell(x, (h, c))
            new.append((h, c))
            x = h
        return x, new

    def forward(self, gen: torch.Generator | None = None, given: dict | None = None,
                greedy: bool = False) -> LayerSample:
        """Sample a child with ``gen`` (a CPU generator), take the most likely one (``greedy``),
        or score given decisions (``given``: {"kernels", "filters", "strides", "skips"} ids)."""
        dev = self.g_emb.device
        zeros = torch.zeros(1, self.g_emb.shape[1], device=dev)
        state = [(zeros, zeros) for _ in self.lstm]
        log_prob = torch.zeros((), device=dev)
        entropy = torch.zeros((), device=dev)
        kl = torch.zeros((), device=dev)
        chosen: dict[str, list[int]] = {k: [] for k in STEPS}
        skips: list[list[int]] = []
        probs: list[dict[str, list[float]]] = []
        # the stem's anchor: a first step on the graph embedding
        h, state = self._step(self.g_emb, state)
        anchors, anchors_prev = [h], [self.w_prev(h)]
        x = self.g_emb
        for i in range(self.num_layers):
            row_probs: dict[str, list[float]] = {}
            for key in STEPS:
                if key not in self.steps:
                    chosen[key].append(0)
                    continue
                h, state = self._step(x, state)
                logp = torch.log_softmax(self._squash(self.soft[key](h))[0], -1)
                p = logp.exp()
                if given is not None:
                    v = int(given[key + "s" if key != "filters" else key][i])
                elif greedy:
                    v = int(p.argmax())
                else:
                    v = int(torch.multinomial(p.detach().cpu(), 1, generator=gen))
                chosen[key].append(v)
                row_probs[key] = p.detach().cpu().tolist()
                log_prob = log_prob + logp[v]
                entropy = entropy - (p * logp).sum()
                x = self.emb[key](torch.tensor([v], device=dev))
            probs.append(row_probs)
            # the anchor point: skips from the states before the previous one
            h, state = self._step(x, state)
            if i > 0:
                query = torch.tanh(torch.cat(anchors_prev[:i], 0) + self.w_curr(h))  # (i, H)
                q = self.v_attn(query)  # (i, 1)
                logp2 = torch.log_softmax(self._squash(torch.cat([-q, q], 1)), -1)
                p2 = logp2.exp()
                if given is not None:
                    row = [int(b) for b in given["skips"][i]]
                elif greedy:
                    row = [int(v) for v in (p2[:, 1] > 0.5).tolist()]
                else:
                    row = torch.multinomial(p2.detach().cpu(), 1, generator=gen)[:, 0].tolist()
                bits = torch.tensor(row, device=dev)
                log_prob = log_prob + logp2.gather(1, bits[:, None]).sum()
                entropy = entropy - (p2 * logp2).sum()
                ps, t = p2[:, 1].clamp(1e-6, 1 - 1e-6), self.skip_target
                kl = kl + (ps * torch.log(ps / t) + (1 - ps) * torch.log((1 - ps) / (1 - t))).sum()
                w = bits.to(h.dtype)[None, :]
                x = (w @ torch.cat(anchors[:i], 0)) / (1.0 + w.sum())
            else:
                row = []
                x = self.g_emb
            skips.append(row)
            anchors.append(h)
            anchors_prev.append(self.w_prev(h))
        n_f, n_s = self.sizes["filters"], self.sizes["stride"]
        ops = [(k * n_f + f) * n_s + s
               for k, f, s in zip(chosen["kernel"], chosen["filters"], chosen["stride"])]
        return LayerSample(ops, skips, log_prob, entropy, kl, [],
                           kernels=chosen["kernel"], filters=chosen["filters"],
                           strides=chosen["stride"], probs=probs)
