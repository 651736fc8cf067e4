"""``TFNAS``: the nas2deploy search-method plugin (entry point ``tfnas``)."""

from __future__ import annotations

import copy
import random
from typing import Any, ClassVar

import torch
from torch import nn

from nas2deploy.architecture import Architecture, fingerprint
from nas2deploy.errors import UsageError
from nas2deploy.method import Decision, SearchContext, SearchMethod, TaskSpec
from nas2deploy.space import SearchSpace

from .config import OP_NAMES, TFNASConfig
from .cost import CostTable
from .derive import decisions, inherited, network_spec, parsed
from .search import Searched, resize, run_search, set_depths, set_ops, width_step
from .space import TFNASSupernet

CHEAPEST = OP_NAMES.index("k3_e3")
COSTLIEST = OP_NAMES.index("k5_e6_se")


class TFNAS(SearchMethod):
    """TF-NAS: op (α), depth (sink-connected β) and width (elastic, masked mid channels) are
    searched under a latency target; elasticity scaling lands the parsed latency just under T."""

    name: ClassVar[str] = "tfnas"
    paper: ClassVar[str] = ("Hu et al., \"TF-NAS: Rethinking Three Search Freedoms of "
                            "Latency-Constrained Differentiable Neural Architecture Search\" (ECCV 2020)")
    Config: ClassVar[type[TFNASConfig]] = TFNASConfig
    # The whole default budget (warm-up + search), sized so the default space searches the
    # project's default data (digits) in about two minutes on two CPU cores.
    default_search_epochs: ClassVar[int] = 16
    # Every tensor the search makes is on the supernet's device (Gumbel noise and sampled ops are
    # drawn on the CPU generator, the cost matrix moves to the device); forwards run under the
    # run's autocast, α, β, their softmax and the latency term in float32, fp16 loss-scaled.
    runs_on_gpu: ClassVar[bool] = True

    def __init__(self, config: TFNASConfig | dict[str, Any] | None = None):
        super().__init__(config)
        self.config.validate()

    # --- space -----------------------------------------------------------------------------------

    def build(self, task: TaskSpec) -> TFNASSupernet:
        for name in ("input_channels", "input_size", "num_classes"):
            v = getattr(task, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise UsageError(f"tfnas: task {name} must be a positive integer, not {v!r}")
        return TFNASSupernet(self.config, task)

    def space(self, supernet: nn.Module) -> SearchSpace:
        net = self._check(supernet)
        return SearchSpace(self._describe(net), largest=lambda: self._largest(net),
                           smallest=lambda: self._smallest(net), cover=lambda: self._cover(net),
                           sample=lambda rng, multiple=1: self._sample(net, rng, multiple),
                           inherit=lambda arch: self._inherit(net, arch),
                           share=lambda arch: self._inherit(net, arch, live=True))

    def _describe(self, net: TFNASSupernet) -> dict[str, Any]:
        task = {"input_channels": net.task.input_channels, "input_size": net.task.input_size,
                "num_classes": net.task.num_classes}
        defining = {"method": "tfnas", **net.cfg.space_dict(), "task": task}
        n_blocks = len(net.layout.blocks)
        return {"name": "tfnas", "fingerprint": fingerprint(defining), **net.cfg.space_dict(),
                "task": task, "blocks": n_blocks,
                "choice_points": {"OpChoice": n_blocks, "DepthSink": len(net.layout.stages),
                                  "Width": n_blocks}}

    def _largest(self, net: TFNASSupernet) -> Architecture:
        """Every stage at full depth, the costliest op (k5, e6, SE) everywhere, at its max width."""
        n = len(net.layout.blocks)
        ops = [COSTLIEST] * n
        mids = [b.mid_range(COSTLIEST)[2] for b in net.layout.blocks]
        depths = [len(st) for st in net.layout.stages]
        return self._arch(net, ops, depths, mids, note="largest: full depth, k5_e6_se at max width")

    def _smallest(self, net: TFNASSupernet) -> Architecture:
        """One block per stage, the cheapest op (k3, e3, no SE), at its min width."""
        n = len(net.layout.blocks)
        ops = [CHEAPEST] * n
        mids = [b.mid_range(CHEAPEST)[0] for b in net.layout.blocks]
        depths = [1] * len(net.layout.stages)
        return self._arch(net, ops, depths, mids, note="smallest: depth 1, k3_e3 at min width")

    def _cover(self, net: TFNASSupernet) -> list[Architecture]:
        """For every candidate op, the full-depth network with that op in every block at its max
        width: together they hold every (block, op) signature at the input shape it really
        sees. The table's width grid scales c_in and c_out along with mid, which is not how
        TF-NAS's widths move (mid alone, in [max/2, max]); the entries in between are
        interpolated in the op's channel total. Adding the same eight networks at min width
        would make both ends exact at about 1.6 times the table size (5266 instead of 3390
        signatures for the default space on the dense grid)."""
        depths = [len(st) for st in net.layout.stages]
        out = []
        for o, name in enumerate(OP_NAMES):
            mids = [b.mid_range(o)[2] for b in net.layout.blocks]
            out.append(self._arch(net, [o] * len(mids), depths, mids,
                                  note=f"latency-table cover: {name} everywhere at max width"))
        return out

    def _sample(self, net: TFNASSupernet, rng: random.Random, multiple: int = 1) -> Architecture:
        """A random subnet: per block a uniform op and a uniform width in its [max/2, max] (in
        steps of ``multiple`` where the range holds a multiple of it: the target's channel
        multiple, as ``elastic_step`` keeps), per stage a uniform depth. The supernet is not
        touched."""
        ops = [rng.randrange(len(OP_NAMES)) for _ in net.layout.blocks]
        mids = [_uniform_width(rng, b.mid_range(o)[0], b.mid_range(o)[2], multiple)
                for b, o in zip(net.layout.blocks, ops)]
        depths = [rng.randint(1, len(st)) for st in net.layout.stages]
        arch = self._arch(net, ops, depths, mids, note="random sample")
        arch.seed = None
        return arch

    # --- search and decision ---------------------------------------------------------------------

    def cost_table(self, supernet: nn.Module, latency_model=None) -> CostTable:
        """Per-op latency costs of this supernet's layout under ``latency_model``."""
        net = self._check(supernet)
        return CostTable(net.layout, latency_model,
                         calibrate=lambda: (self._largest(net).network, self._smallest(net).network))

    def search(self, supernet: nn.Module, ctx: SearchContext) -> Searched:
        """Returns the cost table, target and landing the search used, for ``decide``."""
        return run_search(self, self._check(supernet), ctx)

    def decide(self, supernet: nn.Module, searched: Searched | None = None) -> Decision:
        """The parsed ops, depths and widths; after a search (``searched``), their estimated
        latency, the target and landing, and a ``resize`` lever that re-lands a snapshot of the
        supernet's elastic state (the supernet itself is not touched again)."""
        net = self._check(supernet)
        arch = self._decided(net, searched)
        if searched is None:
            return Decision(arch, self._inherit(net, arch))
        lever = _Resize(self, copy.deepcopy(net), searched, arch)
        return Decision(arch, self._inherit(net, arch), resize=lever)

    def _decided(self, net: TFNASSupernet, searched: Searched | None) -> Architecture:
        ops, depths, mids = parsed(net)
        arch = self._arch(net, ops, depths, mids)
        if searched is None:
            return arch
        arch.metadata["predicted_ms"] = searched.table.parsed(ops, depths, mids)
        arch.decisions["predicted_ms"] = arch.metadata["predicted_ms"]
        arch.decisions["cost_source"] = searched.table.source
        if searched.target_ms:
            arch.decisions["target_ms"] = searched.target_ms
        if searched.measured_ms:
            arch.decisions["measured_ms"] = searched.measured_ms
            arch.decisions["estimate_correction"] = searched.correction
        return arch

    def _inherit(self, net: TFNASSupernet, arch: Architecture,
                 live: bool = False) -> dict[str, torch.Tensor]:
        self.space(net).check(arch, "tfnas")
        ops = [OP_NAMES.index(b["op"]) for b in arch.decisions["blocks"]]
        try:
            return inherited(net, arch.network, ops, live=live)
        except ValueError as exc:
            raise UsageError(f"tfnas: {exc}") from exc

    # --- helpers ---------------------------------------------------------------------------------

    def _arch(self, net: TFNASSupernet, ops, depths, mids, note: str | None = None) -> Architecture:
        spec = network_spec(net.layout, ops, depths, mids)
        dec = decisions(net, ops, depths, mids)
        if note:
            dec["note"] = note
        return Architecture(method="tfnas", network=spec, space=self._describe(net), decisions=dec,
                            seed=net.seed)

    @staticmethod
    def _check(supernet: nn.Module) -> TFNASSupernet:
        if not isinstance(supernet, TFNASSupernet):
            raise UsageError(f"tfnas: expected the supernet TFNAS.build() returns, not "
                             f"{type(supernet).__name__}")
        return supernet


class _Resize:
    """TF-NAS's ``resize`` lever: ``arch`` re-landed by the elastic step at ``factor`` × its
    estimated latency, widths per block in the target's channel multiple; depth, then ops,
    first when growing past the max widths, depth when shrinking past the min widths.

    It owns a copy of the supernet taken at ``decide`` (weights, α, β, widths) and the search's
    cost table; the decisions it returns share both, and each call first sets the copy to its
    own architecture."""

    def __init__(self, method: TFNAS, net: TFNASSupernet, searched: Searched, arch: Architecture):
        self.method, self.net, self.searched, self.arch = method, net, searched, arch

    def __call__(self, factor: float) -> Decision | None:
        net, arch, searched = self.net, self.arch, self.searched
        ops = [OP_NAMES.index(b["op"]) for b in arch.decisions["blocks"]]
        set_ops(net, ops)
        set_depths(net, arch.decisions["depths"])
        for block, op, b in zip(net.blocks(), ops, arch.decisions["blocks"]):
            block.ops[op].set_width(int(b["mid"]))
        if not resize(net, searched.table, factor, self.method.config.elastic_refine,
                      searched.channel_multiple):
            return None
        new = self.method._decided(net, searched)
        new.decisions["note"] = f"re-landed at x{factor:.3f} of its estimated latency"
        return Decision(new, self.method._inherit(net, new),
                        resize=_Resize(self.method, net, searched, new))


def _uniform_width(rng: random.Random, lo: int, hi: int, multiple: int) -> int:
    """A uniform width in [lo, hi], in the steps ``elastic_step`` moves widths in."""
    step = width_step(lo, hi, multiple)
    return step * rng.randint(-(-lo // step), hi // step)
