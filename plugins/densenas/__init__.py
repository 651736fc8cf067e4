"""DenseNAS for nas2deploy.

Paper: Jiemin Fang, Yuzhu Sun, Qian Zhang, Yuan Li, Wenyu Liu, Xinggang Wang, "Densely Connected
Search Space for More Flexible Neural Architecture Search", CVPR 2020 (arXiv:1906.09607).

How it is pruning: DenseNAS builds one supernet of routing blocks of increasing width and
decreasing resolution, each block densely connected to its next few successors, with a mixed op
(every MBConv candidate) on every connection and in every stacked layer. It learns a transition
probability per edge (a softmax over each block's outgoing edges) and a weight per candidate op,
under a cost term that is the exact expected latency of the path distribution those
probabilities induce. The search never adds anything: at the end Viterbi keeps the single most
probable stem-to-output path and the best op on it, and every block, edge and candidate op off
that path is removed (skipped layers included). Widths, downsampling positions and depth are all
decided by which blocks and layers survive that pruning. Measured off its aim, the decision is
re-decoded by a cost-weighted Viterbi (its ``resize`` lever) before the pipeline narrows its
channels.

Modules: ``config`` (options, presets, validation), ``routing`` (edge rule, transition
probabilities, chained cost, Viterbi), ``space`` (layout, op signatures, cost tables, supernet),
``search`` (sampling, arch optimiser with the rescale, the two-phase loop), ``derive`` (path and
ops to a network spec), ``method`` (the ``DenseNAS`` plugin class).
"""

from .config import PRESETS, DenseNASConfig
from .method import DenseNAS
from .routing import Graph, chained_cost, paper_edges, viterbi
from .space import DenseNASSupernet, Layout

__all__ = ["DenseNAS", "DenseNASConfig", "DenseNASSupernet", "Layout", "Graph", "PRESETS",
           "chained_cost", "paper_edges", "viterbi"]
