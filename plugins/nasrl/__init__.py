"""NAS-RL for nas2deploy.

Paper: Barret Zoph and Quoc V. Le, "Neural Architecture Search with Reinforcement Learning",
ICLR 2017 (arXiv:1611.01578).

How it is pruning: the "supernet" is the whole layer-wise conv space, never built as one net:
per layer every kernel size, every filter count (and, with ``search_strides``, every stride) and
a skip edge from every state before the previous layer. A two-layer LSTM controller learns, by
REINFORCE with an exponential-moving-average baseline and an entropy bonus, a distribution over
which option survives at each layer and which skip edges survive. There is no weight sharing:
each sampled child is materialized from its netspec and trained briefly from scratch, and its
held-out accuracy is its reward (with a latency budget, the MnasNet reward
``ACC · (LAT/T)^w`` on the latency model's estimate). The decision is the best child seen: one
option per layer survives, every other option and every untaken skip edge is removed; it is
retrained from scratch, as in the paper (the decision carries no weights).

Departures from the paper (each said where it is made): square kernels (the op vocabulary's
conv; the paper predicts height and width); a layer's inputs are summed after 1x1 projections,
not concatenated, and the previous layer always feeds the next (``space``); a stem conv before
the searched layers; children trained for a few steps instead of 50 epochs, and a sampled-again
child reuses its recorded reward (``search``); the controller's learning rate and baseline decay
(``config``); the reward's accuracy is not cubed by default (``accuracy_power``). Under a latency
budget (not in the paper) the budget is a constraint of the decision: the best child within it,
ties within the accuracy's noise going to the larger estimate (``search.Record.best``); the
``resize`` lever re-picks the same way under a scaled budget.

Modules: ``config`` (options and defaults), ``controller`` (the LSTM controller; ENAS's
``Sample``, ``Baseline``, ``Reinforce`` and ``reinforce_loss`` update it), ``space`` (the child
grammar and its netspec), ``search`` (train-from-scratch evaluation, rewards, the record),
``method`` (the ``NASRL`` plugin class).
"""

from .config import NASRLConfig
from .controller import Controller, LayerSample
from .method import NASRL
from .search import Record, Rewarder
from .space import Child, ControllerNet, Layout, netspec

__all__ = ["NASRL", "NASRLConfig", "Controller", "LayerSample", "Record", "Rewarder", "Child",
           "ControllerNet", "Layout", "netspec"]
