"""Random search, built in: the honest baseline in any registered method's space.

Paper: Liam Li and Ameet Talwalkar, "Random Search and Reproducibility for Neural Architecture
Search", UAI 2019 (arXiv:1902.07638): random sampling of architectures with weight sharing is a
strong baseline that several NAS methods did not beat. DSO-NAS and DenseNAS report the same
"random + weight sharing" baseline.

How it is pruning: the supernet is the searched method's own. Every batch keeps one uniformly
sampled subnet and trains only its weights; at the end, of ``samples`` subnets drawn at random,
the most accurate on held-out data within the latency budget survives and everything else is
removed.

Modules: ``config`` (options), ``search`` (shared-weight training, scoring, the from-scratch
fallback), ``method`` (the ``RandomSearch`` plugin class).
"""

from .config import RandomConfig
from .method import RandomSearch, RandomSupernet

__all__ = ["RandomConfig", "RandomSearch", "RandomSupernet"]
