"""``MnasNet``: the nas2deploy search-method plugin (entry point ``mnasnet``)."""

from __future__ import annotations

import copy
import math
import random
from typing import Any, ClassVar

import torch
from torch import nn

from nas2deploy.architecture import Architecture, fingerprint
from nas2deploy.counting import count_macs
from nas2deploy.errors import UsageError
from nas2deploy.method import Decision, SearchContext, SearchMethod, TaskSpec
from nas2deploy.netspec import build_network
from nas2deploy.objectives import preference
from nas2deploy.space import SearchSpace

from .config import MnasNetConfig
from .search import Searched, child_of, run_search
from .space import Child, Choice, MnasSupernet, canonical, child_dict, child_from, netspec


class MnasNet(SearchMethod):
    """MnasNet: an LSTM controller samples per-block choices of a factorized hierarchical space;
    shared weights are trained one sampled child per batch, the controller by REINFORCE on the
    MnasNet reward ACC x (LAT/T)^w; the top candidates by estimated reward are measured on the
    target and the pick is made on the measured latency."""

    name: ClassVar[str] = "mnasnet"
    paper: ClassVar[str] = ("Tan et al., \"MnasNet: Platform-Aware Neural Architecture Search "
                            "for Mobile\" (CVPR 2019)")
    Config: ClassVar[type[MnasNetConfig]] = MnasNetConfig
    # Sized for the default space on the digits at two CPU cores: an epoch (10 batches of child
    # training, 10 controller updates) took 4-5 s of one core; on a machine loaded 5x over its
    # cores it took 80 s of wall time. Few controller updates in all: the candidates' scores and
    # their measurement, not the controller's convergence, carry a default run.
    default_search_epochs: ClassVar[int] = 6
    # Every tensor of the search follows the supernet's device (the controller samples with a
    # CPU generator); the shared weights' forwards run under the run's autocast.
    runs_on_gpu: ClassVar[bool] = True

    def __init__(self, config: MnasNetConfig | dict[str, Any] | None = None):
        super().__init__(config)
        self.config.validate()

    # --- space -----------------------------------------------------------------------------------

    def build(self, task: TaskSpec) -> MnasSupernet:
        for name in ("input_channels", "input_size", "num_classes"):
            v = getattr(task, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise UsageError(f"mnasnet: task {name} must be a positive integer, not {v!r}")
        return MnasSupernet(self.config, task)

    def space(self, supernet: nn.Module) -> SearchSpace:
        net = self._check(supernet)
        return SearchSpace(
            self._describe(net),
            largest=lambda: self._arch(net, self._extremes(net)[0],
                                       note="largest: the costliest uniform choice, deepest"),
            smallest=lambda: self._arch(net, self._extremes(net)[1],
                                        note="smallest: the cheapest uniform choice, shallowest"),
            cover=lambda: [self._arch(net, c, note="latency-table cover: one uniform choice, "
                                                   "deepest") for c in net.layout.uniforms()],
            sample=lambda rng: self._sample(net, rng),
            inherit=lambda arch: net.tensors(self._child(net, arch)),
            share=lambda arch: net.tensors(self._child(net, arch), live=True))

    def _describe(self, net: MnasSupernet) -> dict[str, Any]:
        task = {"input_channels": net.task.input_channels, "input_size": net.task.input_size,
                "num_classes": net.task.num_classes}
        space = net.cfg.space_dict()
        n = len(net.layout.blocks)
        per_block = [len({canonical(Choice(op, k, se, skip, layers))
                          for op in space["ops"] for k in space["kernels"]
                          for se in space["se_ratios"] for skip in space["skips"]
                          for layers in net.layout.layer_counts(i)}) for i in range(n)]
        return {"name": "mnasnet", "fingerprint": fingerprint({"method": "mnasnet", **space,
                                                                "task": task}),
                **space, "task": task,
                "choice_points": {"OpChoice": 4 * n, "DepthSink": n},
                "log10_architectures": round(sum(math.log10(c) for c in per_block), 2)}

    def _extremes(self, net: MnasSupernet) -> tuple[Child, Child]:
        """(largest, smallest): the uniform children of most MACs at the deepest layer counts
        and of fewest at the shallowest (counted once per supernet)."""
        if net._extremes is None:
            def macs(child: Child) -> int:
                g = build_network(netspec(net.layout, child))
                return count_macs(g, g.example_input(1))
            deep = max(net.layout.uniforms(), key=macs)
            shallow = min(net.layout.uniforms(deepest=False), key=macs)
            net._extremes = (deep, shallow)
        return net._extremes

    def _sample(self, net: MnasSupernet, rng: random.Random) -> Architecture:
        """A uniform choice of every decision of every block (not the controller: the supernet is
        not touched)."""
        o = net.layout.options
        child = tuple(net.layout.choice(i, [rng.randrange(len(o[d])) for d in
                                            net.layout.DECISIONS])
                      for i in range(len(net.layout.blocks)))
        return self._arch(net, child, note="random sample")

    # --- search and decision ---------------------------------------------------------------------

    def search(self, supernet: nn.Module, ctx: SearchContext) -> Searched:
        """Returns the scored candidates (the verified ones with their measurements) and the
        pick."""
        return run_search(self._check(supernet), ctx)

    def decide(self, supernet: nn.Module, searched: Searched | None = None) -> Decision:
        """After a search: the pick among its candidates, with a ``resize`` lever that re-picks
        among them. Before any search: the controller's most likely child."""
        net = self._check(supernet)
        if searched is None:
            with torch.no_grad():
                child = child_of(net, net.controller(greedy=True))
            return Decision(self._arch(net, child, note="the controller's most likely child"),
                            net.tensors(child))
        return self._decision(_Snapshot(net), searched, searched.pick)

    def _decision(self, snap: "_Snapshot", searched: Searched, pick: int,
                  note: str | None = None) -> Decision:
        net = snap.net
        row = searched.candidates[pick]
        child = child_from(row["blocks"])
        arch = self._arch(net, child, note=note)
        arch.seed = searched.seed
        keep = ("val_acc", "score", "predicted_ms", "measured_ms", "measured_score")
        arch.decisions.update({k: row[k] for k in keep if k in row})
        arch.decisions.update({**searched.reward, "aim": searched.aim,
                               "landing_band": searched.band,
                               "candidates": len(searched.candidates),
                               "verified": [{"blocks": searched.candidates[i]["blocks"],
                                             **{k: searched.candidates[i][k] for k in keep
                                                if k in searched.candidates[i]}}
                                            for i in searched.verified]})
        if "predicted_ms" in row:
            arch.metadata["predicted_ms"] = row["predicted_ms"]
        return Decision(arch, net.tensors(child),
                        resize=_Resize(self, snap, searched, pick)
                        if "predicted_ms" in row else None)

    # --- helpers ---------------------------------------------------------------------------------

    def _child(self, net: MnasSupernet, arch: Architecture) -> Child:
        self.space(net).check(arch, "mnasnet")
        try:
            child = child_from(arch.decisions["blocks"])
            net.layout.check(child)
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"mnasnet: the architecture's decisions are not a child of this "
                             f"space ({exc})") from None
        return child

    def _arch(self, net: MnasSupernet, child: Child, note: str | None = None) -> Architecture:
        dec: dict[str, Any] = {"blocks": child_dict(child)}
        if note:
            dec["note"] = note
        return Architecture(method=self.name, network=netspec(net.layout, child),
                            space=self._describe(net), decisions=dec)

    @staticmethod
    def _check(supernet: nn.Module) -> MnasSupernet:
        if not isinstance(supernet, MnasSupernet):
            raise UsageError(f"mnasnet: expected the supernet MnasNet.build() returns, not "
                             f"{type(supernet).__name__}")
        return supernet


class _Snapshot:
    """A copy of the supernet's weights taken at ``decide``, made once and shared by every
    decision a lever returns."""

    def __init__(self, net: MnasSupernet):
        self.source, self._net = net, None

    @property
    def net(self) -> MnasSupernet:
        return self.source if self._net is None else self._net

    def freeze(self) -> None:
        if self._net is None:
            self._net = copy.deepcopy(self.source).cpu()


class _Resize:
    """MnasNet's ``resize`` lever: the pick among the search's scored candidates (by the same
    preference as the search's, on their estimated latencies) under ``factor`` x this
    decision's estimated latency. None when this decision lands there already (in
    [``landing_band``, 1] x it) or is the pick again."""

    def __init__(self, method: MnasNet, snap: _Snapshot, searched: Searched, pick: int):
        snap.freeze()
        self.method, self.snap, self.searched, self.pick = method, snap, searched, pick

    def __call__(self, factor: float) -> Decision | None:
        rows = self.searched.candidates
        here = rows[self.pick]
        if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 0):
            return None
        ceiling = here["predicted_ms"] * factor
        if self.searched.band * ceiling <= here["predicted_ms"] <= ceiling:
            return None  # it lands already
        order = preference(rows, lambda r: r["predicted_ms"], lambda r: r["score"], ceiling,
                           self.searched.band)
        if order[0] == self.pick:
            return None
        return self.method._decision(self.snap, self.searched, order[0],
                                     note=f"re-picked at x{factor:.3f} of its estimated latency")
