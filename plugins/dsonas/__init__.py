"""DSO-NAS for nas2deploy.

Paper: Xinbang Zhang, Zehao Huang, Naiyan Wang et al., "You Only Search Once: Single Shot Neural
Architecture Search via Direct Sparse Optimization" (DSO-NAS), arXiv:1811.01567 (2018); IEEE TPAMI
43(9), 2021.

How it is pruning: DSO-NAS never samples or ranks candidate architectures. It builds one supernet
in which every block is a complete DAG (every op reads every earlier op and the block input, and
every op feeds the block output), puts a non-negative scale λ on every edge, and trains weights
and λ together with an ℓ1 penalty on λ. The penalty is applied by a proximal (soft-thresholding)
step, so unneeded edges reach exactly zero; those edges are removed, then ops left with no live
input or no live consumer are removed in turn, and the architecture is simply what survives. It
is structured sparsity (edge- and op-level pruning of an over-complete network, in the spirit of
Sparse Structure Selection), with each block's penalty weighted by the share of its FLOPs still
alive (the paper's adaptive FLOPs). The budget acts on the derivation: a decided architecture
estimated over the budget continues along its ℓ1 path (surviving edges, weakest per MAC first)
until it fits, and the same path is what its ``resize`` and ``sparser`` levers move along.

Modules: ``config`` (options and validation), ``space`` (layout, supernet, edge costs), ``prox``
(APG-NAG), ``search`` (pre-train and alternating search loop), ``derive`` (closure and the
network spec), ``method`` (the ``DSONAS`` plugin class).
"""

from .config import DSONASConfig
from .method import DSONAS
from .prox import APGNAG, soft_threshold
from .space import DSONASSupernet

__all__ = ["DSONAS", "DSONASConfig", "DSONASSupernet", "APGNAG", "soft_threshold"]
