"""MnasNet for nas2deploy.

Paper: Mingxing Tan, Bo Chen, Ruoming Pang, Vijay Vasudevan, Mark Sandler, Andrew Howard and
Quoc V. Le, "MnasNet: Platform-Aware Neural Architecture Search for Mobile", CVPR 2019
(arXiv:1807.11626).

How it is pruning: the supernet is the paper's factorized hierarchical space (§4.1) with every
candidate present: a stem, B blocks of fixed output channels and strides, a head, and in every
layer position of every block one module per (conv op, kernel, squeeze-excite ratio). The
controller, an LSTM, learns a distribution over one choice per block (conv op, kernel, SE
ratio, skip op, layer count, shared by the block's layers); the decision keeps, per block, the
chosen module in its first ``layers`` positions and removes every other op, every deeper layer
and the untaken residuals.

Departures from the paper, each for the scale this runs at (digits on two CPU cores):

* the accuracy behind a reward comes from weight sharing, not from training every sampled
  model for 5 epochs: one module per (block, layer, op, kernel, SE) is trained one sampled
  child per batch, as ENAS does, and a child is scored on a held-out batch with the shared
  weights (BN on batch statistics);
* the controller is updated by REINFORCE with an EMA baseline and an entropy bonus (ENAS's
  update) instead of PPO;
* LAT in the reward is the latency model's estimate (``ctx.latency_model``); the real
  measurement on the target comes at the end: the top k candidates by estimated reward are
  measured (``ctx.measure``) and the pick is by the reward on the measured latency, where the
  target can be timed here (else by the estimate);
* the soft reward (alpha = beta = -0.07, the default) ranks candidates the same for every T, so
  the pick also keeps to the budget: the best reward among the candidates landing in
  [``landing_band``, 1] x the pipeline's aim (0.95 x the budget), else the slowest under it,
  else the fastest; a net far under the budget leaves accuracy the closed loop cannot win back
  (it only thins widths);
* the filter-size ratio is not searched, the skip op is identity or none (the paper also lists
  pooling); a regular conv takes no SE and an mbconv with SE keeps its residual where shapes
  allow (the op vocabulary cannot express either: see ``space``).

Modules: ``config`` (options and defaults), ``controller`` (the LSTM controller; ENAS's
REINFORCE update), ``space`` (the blocks, their netspec and the shared-weight supernet),
``search`` (alternating training, rewards, candidates and their verification), ``method`` (the
``MnasNet`` plugin class and its ``resize`` lever).
"""

from .config import CONV_OPS, MnasNetConfig
from .controller import Controller
from .method import MnasNet
from .space import Choice, Layout, MnasSupernet, canonical, netspec

__all__ = ["MnasNet", "MnasNetConfig", "CONV_OPS", "Controller", "Choice", "Layout",
           "MnasSupernet", "canonical", "netspec"]
