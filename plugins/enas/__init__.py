"""ENAS for nas2deploy.

Paper: Hieu Pham, Melody Y. Guan, Barret Zoph, Quoc V. Le and Jeff Dean, "Efficient Neural
Architecture Search via Parameter Sharing", ICML 2018 (arXiv:1802.03268).

How it is pruning: the supernet is ENAS's shared supergraph, a chain of N nodes in which every
node holds every candidate op (conv 3x3/5x5, separable 3x3/5x5, max and average pool) and may
add the output of every earlier node (a skip connection). One weight tensor exists per
(position, op) and is shared by every child that chooses it. An LSTM controller learns, by
REINFORCE, a distribution over which op survives at each node and which skip edges survive; the
shared weights are trained one sampled child per batch. The decision samples m children, scores
each on held-out data and keeps the best: one path through the supergraph survives, and every
unchosen op and every untaken skip edge (with the reductions only it used) is removed.

With a latency budget the controller's reward is the MnasNet reward
``ACC · (LAT/T)^w`` (``nas2deploy.objectives.mnas_reward``) on the latency model's estimate.

The micro space (``space = "micro"``) is ENAS's NASNet-style cells: a normal and a reduction
cell, each of B compute nodes adding two ops on two earlier nodes. Its supernet holds one module
per (cell, node, input slot, op); the controller samples both cells node by node; the decision
keeps, per node, two inputs and two ops, and removes every other op and edge of the cell.

Modules: ``config`` (options and defaults), ``controller`` (the LSTM controllers, the baseline
and the REINFORCE loss), ``space`` (the macro chain, its netspec and the shared-weight
supernet), ``cells`` (the micro space, likewise), ``search`` (alternating training, rewards,
derivation), ``method`` (the ``ENAS`` plugin class).
"""

from .cells import Cells, CellSupernet
from .config import CELL_OPS, OPS, ENASConfig
from .controller import (Baseline, CellController, CellSample, Controller, Reinforce, Sample,
                         reinforce_loss)
from .method import ENAS
from .space import Child, Layout, MacroSupernet, netspec

__all__ = ["ENAS", "ENASConfig", "OPS", "CELL_OPS", "Baseline", "Controller", "Reinforce",
           "Sample", "reinforce_loss", "CellController", "CellSample", "Cells", "CellSupernet",
           "Child", "Layout", "MacroSupernet", "netspec"]
