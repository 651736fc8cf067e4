"""``ENAS``: the nas2deploy search-method plugin (entry point ``enas``)."""

from __future__ import annotations

import math
import random
from typing import Any, ClassVar

import torch
from torch import nn

from nas2deploy.architecture import Architecture, fingerprint
from nas2deploy.errors import UsageError
from nas2deploy.method import Decision, SearchContext, SearchMethod, TaskSpec
from nas2deploy.space import SearchSpace

from .config import ENASConfig
from .search import Searched, child_of, derive, run_search
from .space import Child, MacroSupernet, netspec


class ENAS(SearchMethod):
    """ENAS: an LSTM controller samples children of a shared supergraph; the shared weights
    are trained one sampled child per batch, the controller by REINFORCE on the children's
    validation accuracy (or the MnasNet reward under a latency budget); the decision is the best
    of m sampled children on held-out data."""

    name: ClassVar[str] = "enas"
    paper: ClassVar[str] = ("Pham et al., \"Efficient Neural Architecture Search via Parameter "
                            "Sharing\" (ICML 2018)")
    Config: ClassVar[type[ENASConfig]] = ENASConfig
    # The whole default budget in epochs (each a pass of child training and a round of
    # controller updates), sized so that the default space searches the default data (digits
    # at 32x32) in about a minute on two CPU cores (8 epochs took 22 s). Shared weights learn
    # slowly under six ops and random skips: after 8 epochs the children are still near chance
    # and the controller learns little besides the latency term; 20 bring the loss under 2.
    default_search_epochs: ClassVar[int] = 20
    # The search runs on the supernet's device (the controller samples with a CPU generator);
    # the shared weights' forwards under the run's autocast, fp16 loss-scaled; the controller in
    # float32. ``decide`` scores its children wherever the supernet then is.
    runs_on_gpu: ClassVar[bool] = True

    def __init__(self, config: ENASConfig | dict[str, Any] | None = None):
        super().__init__(config)
        self.config.validate()

    # --- space -----------------------------------------------------------------------------------

    def build(self, task: TaskSpec) -> MacroSupernet:
        for name in ("input_channels", "input_size", "num_classes"):
            v = getattr(task, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise UsageError(f"enas: task {name} must be a positive integer, not {v!r}")
        return MacroSupernet(self.config, task)

    def space(self, supernet: nn.Module) -> SearchSpace:
        net = self._check(supernet)
        desc = self._describe(net)
        return SearchSpace(desc,
                           largest=lambda: self._arch(net, net.layout.extreme("largest"),
                                                      note="largest: costliest op, every skip"),
                           smallest=lambda: self._arch(net, net.layout.extreme("smallest"),
                                                       note="smallest: cheapest op, no skip"),
                           cover=lambda: [self._arch(net, net.layout.uniform(op),
                                                     note=f"latency-table cover: {op} everywhere")
                                          for op in net.layout.ops],
                           sample=lambda rng: self._sample(net, rng),
                           inherit=lambda arch: self._inherit(net, arch))

    def _describe(self, net: MacroSupernet) -> dict[str, Any]:
        task = {"input_channels": net.task.input_channels, "input_size": net.task.input_size,
                "num_classes": net.task.num_classes}
        space = net.cfg.space_dict()
        n = net.layout.n
        return {"name": "enas-macro", "fingerprint": fingerprint({"method": "enas", **space,
                                                                   "task": task}),
                **space, "task": task, "stages": net.layout.n_stages,
                "choice_points": {"OpChoice": n, "InputSet": max(n - 1, 0)},
                "log10_architectures": round(n * math.log10(len(net.layout.ops))
                                             + n * (n - 1) / 2 * math.log10(2), 2)}

    def _sample(self, net: MacroSupernet, rng: random.Random) -> Architecture:
        """A uniform op per node and each skip with probability 1/2 (not the controller: the
        supernet is not touched)."""
        n, ops = net.layout.n, net.layout.ops
        child = Child.make([rng.choice(ops) for _ in range(n)],
                           [[rng.randrange(2) for _ in range(i)] for i in range(n)])
        return self._arch(net, child, note="random sample")

    # --- search and decision ---------------------------------------------------------------------

    def search(self, supernet: nn.Module, ctx: SearchContext) -> Searched:
        """Returns the data, seed and reward ``decide`` scores its m children with."""
        return run_search(self._check(supernet), ctx)

    def decide(self, supernet: nn.Module, searched: Searched | None = None) -> Decision:
        """After a search: the best of ``derive_samples`` children sampled from the controller
        (seeded by the search's seed), scored on the held-out split by the search's reward.
        Before any search (no data to score on): the controller's most likely child."""
        net = self._check(supernet)
        if searched is None:
            with torch.no_grad():
                child = child_of(net, net.controller(greedy=True))
            return Decision(self._arch(net, child, note="the controller's most likely child"),
                            net.inherit(child))
        child, scored = derive(net, searched, self.config.derive_samples)
        best = next(r for r in scored if r["ops"] == list(child.ops)
                    and r["skips"] == [list(s) for s in child.skips])
        arch = self._arch(net, child)
        arch.seed = searched.seed
        arch.decisions.update({"val_acc": best["val_acc"], "score": best["score"],
                               **searched.rewarder.describe(), "samples": scored})
        if "predicted_ms" in best:
            arch.decisions["predicted_ms"] = best["predicted_ms"]
            arch.metadata["predicted_ms"] = best["predicted_ms"]
        return Decision(arch, net.inherit(child))

    def _inherit(self, net: MacroSupernet, arch: Architecture) -> dict[str, torch.Tensor]:
        self.space(net).check(arch, "enas")
        try:
            child = Child.make(arch.decisions["ops"], arch.decisions["skips"])
            net.layout.check(child)
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"enas: the architecture's decisions are not a child of this "
                             f"space ({exc})") from None
        return net.inherit(child)

    # --- helpers ---------------------------------------------------------------------------------

    def _arch(self, net: MacroSupernet, child: Child, note: str | None = None) -> Architecture:
        dec: dict[str, Any] = {"space": "macro", **child.to_dict(), "skip_count": child.skip_count}
        if note:
            dec["note"] = note
        return Architecture(method=self.name, network=netspec(net.layout, child),
                            space=self._describe(net), decisions=dec)

    @staticmethod
    def _check(supernet: nn.Module) -> MacroSupernet:
        if not isinstance(supernet, MacroSupernet):
            raise UsageError(f"enas: expected the supernet ENAS.build() returns, not "
                             f"{type(supernet).__name__}")
        return supernet
