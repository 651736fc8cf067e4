"""TF-NAS for nas2deploy.

Paper: Yibo Hu, Xiang Wu and Ran He, "TF-NAS: Rethinking Three Search Freedoms of
Latency-Constrained Differentiable Neural Architecture Search", ECCV 2020 (arXiv:2008.05314).

How it is pruning: TF-NAS starts from an over-complete EfficientNet-B0-like supernet in which
every block position holds all eight candidate MBConv ops at their largest width and every
stage holds its maximum number of blocks, and it learns what to remove at three granularities
under a latency target T. Per block, an op distribution α is trained (bi-sampling for the
weights, soft Gumbel weights for α) and all ops but the argmax are removed; per stage, a
sink-connecting β over depths decides how many leading blocks survive, so the trailing blocks
of a stage are removed; per surviving op, elasticity scaling shrinks (or regrows) its
mid-channel width after every epoch until the latency read from the target's per-op costs lies
just under T, keeping the channels whose depthwise filters have the largest L1 norm. The derived
network is what is left, with the removed channels physically cut out of the expand, depthwise,
SE and project weights.

Modules: ``config`` (options, presets, validation), ``space`` (layout, elastic MBConv, supernet),
``cost`` (per-op latency tables and the sink-weighted expectation), ``elastic`` (the width step
rule), ``search`` (bi-sampling, arch steps, schedule), ``derive`` (network spec and inherited
weights), ``method`` (the ``TFNAS`` plugin class).
"""

from .config import IMAGENET_SPACE, OP_NAMES, TFNASConfig
from .cost import CostTable
from .elastic import elastic_scale
from .method import TFNAS
from .space import ElasticMBConv, TFNASSupernet

__all__ = ["TFNAS", "TFNASConfig", "TFNASSupernet", "ElasticMBConv", "CostTable", "elastic_scale",
           "IMAGENET_SPACE", "OP_NAMES"]
