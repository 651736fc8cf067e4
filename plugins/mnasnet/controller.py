"""MnasNet's controller: an LSTM that samples the per-block decisions autoregressively.

Per block it takes one LSTM step per decision (conv op, kernel, SE ratio, skip op, layer
delta, in that order), each with its own softmax head and its own embedding of the sampled
value as the next input (the heads and embeddings are shared across blocks, as in the paper's
code). Logits go through ENAS's temperature and tanh constant.

The paper trains the controller with PPO; here it is REINFORCE with an exponential-moving-
average baseline and an entropy bonus, ENAS's update (``Reinforce``, ``reinforce_loss``,
``Sample`` are ENAS's, imported). A ``Sample``'s ``ops`` are the decision indices flattened
block by block (``len(DECISIONS)`` per block); ``op_probs`` their distributions. Sampling draws
from a CPU ``torch.Generator``, so a seed fixes the sequence of architectures on any device.
"""

from __future__ import annotations

import torch
from torch import nn

from nas2deploy_plugins.enas.controller import Baseline, Reinforce, Sample, reinforce_loss

__all__ = ["Baseline", "Controller", "Reinforce", "Sample", "reinforce_loss"]


class Controller(nn.Module):
    def __init__(self, layout, cfg):
        super().__init__()
        h = cfg.lstm_size
        self.decisions = list(layout.DECISIONS)
        self.sizes = [len(layout.options[d]) for d in self.decisions]
        self.num_blocks = len(layout.blocks)
        self.temperature, self.tanh_constant = cfg.temperature, cfg.tanh_constant
        self.lstm = nn.LSTMCell(h, h)
        self.g_emb = nn.Parameter(torch.empty(1, h))
        self.emb = nn.ModuleList(nn.Embedding(n, h) for n in self.sizes)
        self.soft = nn.ModuleList(nn.Linear(h, n, bias=False) for n in self.sizes)
        for p in self.parameters():  # ENAS's initialisation
            nn.init.uniform_(p, -0.1, 0.1)

    def forward(self, gen: torch.Generator | None = None, choices: list[int] | None = None,
                greedy: bool = False) -> Sample:
        """Sample the flattened decisions with ``gen`` (a CPU generator), take the most likely
        ones (``greedy``), or score given ones (``choices``: teacher forcing)."""
        dev = self.g_emb.device
        zeros = torch.zeros(1, self.g_emb.shape[1], device=dev)
        state = (zeros, zeros)
        x = self.g_emb
        out: list[int] = []
        probs: list[list[float]] = []
        log_prob = torch.zeros((), device=dev)
        entropy = torch.zeros((), device=dev)
        for _ in range(self.num_blocks):
            for d in range(len(self.sizes)):
                state = self.lstm(x, state)
                logits = self.tanh_constant * torch.tanh(self.soft[d](state[0])[0]
                                                         / self.temperature)
                logp = torch.log_softmax(logits, -1)
                p = logp.exp()
                if choices is not None:
                    v = int(choices[len(out)])
                elif greedy:
                    v = int(p.argmax())
                else:
                    v = int(torch.multinomial(p.detach().float().cpu(), 1, generator=gen))
                out.append(v)
                probs.append(p.detach().cpu().tolist())
                log_prob = log_prob + logp[v]
                entropy = entropy - (p * logp).sum()
                x = self.emb[d](torch.tensor([v], device=dev))
        return Sample(out, [], log_prob, entropy, torch.zeros((), device=dev), probs)
