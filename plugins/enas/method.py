"""``ENAS``: the nas2deploy search-method plugin (entry point ``enas``)."""

from __future__ import annotations

import copy
import json
import math
import random
from typing import Any, ClassVar

import torch
from torch import nn

from nas2deploy.architecture import Architecture, fingerprint
from nas2deploy.errors import UsageError
from nas2deploy.method import Decision, SearchContext, SearchMethod, TaskSpec
from nas2deploy.objectives import preference
from nas2deploy.space import SearchSpace

from .cells import Cells, CellSupernet
from .config import ENASConfig
from .search import Searched, child_of, derive, run_search
from .space import Child, MacroSupernet

Supernet = MacroSupernet | CellSupernet

# The resize lever's landing band under the latency it is asked for (the pipeline's own band
# around its aim is about as wide).
RESIZE_BAND = 0.9


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

    def build(self, task: TaskSpec) -> Supernet:
        for name in ("input_channels", "input_size", "num_classes"):
            v = getattr(task, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise UsageError(f"enas: task {name} must be a positive integer, not {v!r}")
        if self.config.space == "micro":
            return CellSupernet(self.config, task)
        return MacroSupernet(self.config, task)

    def space(self, supernet: nn.Module) -> SearchSpace:
        net = self._check(supernet)
        desc = self._describe(net)
        if isinstance(net, CellSupernet):
            layout = net.layout
            largest = ("largest: costliest op in every slot, every node in the output sum",
                       layout.extreme("largest"))
            smallest = ("smallest: cheapest op in every slot, the nodes chained",
                        layout.extreme("smallest"))
            cover = [(f"latency-table cover: {c.normal[0][1]} everywhere, "
                      f"{self._unused(c)} output nodes", c) for c in layout.cover()]
        else:
            largest = ("largest: costliest op, every skip", net.layout.extreme("largest"))
            smallest = ("smallest: cheapest op, no skip", net.layout.extreme("smallest"))
            cover = [(f"latency-table cover: {op} everywhere", net.layout.uniform(op))
                     for op in net.layout.ops]
        return SearchSpace(desc,
                           largest=lambda: self._arch(net, largest[1], note=largest[0]),
                           smallest=lambda: self._arch(net, smallest[1], note=smallest[0]),
                           cover=lambda: [self._arch(net, c, note=note) for note, c in cover],
                           sample=lambda rng: self._sample(net, rng),
                           inherit=lambda arch: self._inherit(net, arch),
                           share=lambda arch: self._inherit(net, arch, live=True))

    @staticmethod
    def _unused(c: Cells) -> int:
        used = {i for a, _, b, _ in c.normal for i in (a, b)}
        return sum(1 for j in range(len(c.normal)) if 2 + j not in used)

    def _describe(self, net: Supernet) -> dict[str, Any]:
        task = {"input_channels": net.task.input_channels, "input_size": net.task.input_size,
                "num_classes": net.task.num_classes}
        space = net.cfg.space_dict()
        fp = fingerprint({"method": "enas", **space, "task": task})
        if isinstance(net, CellSupernet):
            b, k = net.layout.b, len(net.layout.ops)
            # per cell type: node j picks 2 of its 2 + j inputs and 2 ops (ordered slots)
            per_cell = sum(2 * math.log10(2 + j) + 2 * math.log10(k) for j in range(b))
            return {"name": "enas-micro", "fingerprint": fp, **space, "task": task,
                    "stages": net.cfg.reductions + 1, "cell_count": net.layout.n_cells,
                    "choice_points": {"OpChoice": 4 * b, "InputSet": 4 * b},
                    "log10_architectures": round(2 * per_cell, 2)}
        n = net.layout.n
        return {"name": "enas-macro", "fingerprint": fp,
                **space, "task": task, "stages": net.layout.n_stages,
                "choice_points": {"OpChoice": n, "InputSet": max(n - 1, 0)},
                "log10_architectures": round(n * math.log10(len(net.layout.ops))
                                             + n * (n - 1) / 2 * math.log10(2), 2)}

    def _sample(self, net: Supernet, rng: random.Random) -> Architecture:
        """Macro: a uniform op per node and each skip with probability 1/2. Micro: per node, two
        uniform earlier nodes and two uniform ops. Not the controller: the supernet is not
        touched."""
        ops = net.layout.ops
        if isinstance(net, CellSupernet):
            def cell():
                return [(rng.randrange(2 + j), rng.choice(ops), rng.randrange(2 + j),
                         rng.choice(ops)) for j in range(net.layout.b)]
            return self._arch(net, Cells.make(cell(), cell()), note="random sample")
        n = net.layout.n
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
        # the resize lever re-picks later: it reads a copy of the supernet as it is now
        frozen = copy.deepcopy(net).cpu() if searched.rewarder.exps is not None else None
        return self._decision(net, frozen, searched, scored, child)

    def _decision(self, net: Supernet, frozen: Supernet | None, searched: Searched,
                  scored: list[dict[str, Any]], child: Child | Cells,
                  note: str | None = None) -> Decision:
        """``child`` (one of the ``scored`` rows) as the decision; under a budget with a
        ``resize`` lever that re-picks among the scored children (``preference``): the best
        scored whose estimate lands in [``RESIZE_BAND``, 1] x the latency asked, else the
        closest under it, else the fastest if faster than ``child``. None: the pick is
        ``child`` again, or none of these exists."""
        key = child.to_dict()
        best = next(r for r in scored if all(r[k] == v for k, v in key.items()))
        arch = self._arch(net, child, note)
        arch.seed = searched.seed
        arch.decisions.update({"val_acc": best["val_acc"], "score": best["score"],
                               **searched.rewarder.describe(), "samples": scored})
        if "predicted_ms" in best:
            arch.decisions["predicted_ms"] = best["predicted_ms"]
            arch.metadata["predicted_ms"] = best["predicted_ms"]
        if frozen is None or "predicted_ms" not in best:
            return Decision(arch, net.inherit(child))

        def resize(factor: float) -> Decision | None:
            if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 0):
                return None
            ceiling = factor * best["predicted_ms"]
            rows = list({json.dumps(r, sort_keys=True): r for r in scored}.values())
            order = preference(rows, lambda r: r.get("predicted_ms"), lambda r: r["score"],
                               ceiling, RESIZE_BAND)
            pick = rows[order[0]]
            picked = self._child(frozen, pick)
            # none under the ceiling: the fastest, if faster (the narrowest width of this
            # child was over the budget)
            if picked == child or (pick["predicted_ms"] > ceiling
                                   and pick["predicted_ms"] >= best["predicted_ms"]):
                return None
            return self._decision(frozen, frozen, searched, scored, picked,
                                  note=f"re-picked at x{factor:.3f} of its estimated latency")

        return Decision(arch, net.inherit(child), resize=resize)

    @staticmethod
    def _child(net: Supernet, d: dict[str, Any]) -> Child | Cells:
        """The child a decision or a scored row describes, checked against ``net``'s space."""
        if isinstance(net, CellSupernet):
            child = Cells.make(d["normal"], d["reduce"])
        else:
            child = Child.make(d["ops"], d["skips"])
        net.layout.check(child)
        return child

    def _inherit(self, net: Supernet, arch: Architecture,
                 live: bool = False) -> dict[str, torch.Tensor]:
        self.space(net).check(arch, "enas")
        d = arch.decisions
        try:
            child = self._child(net, d)
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"enas: the architecture's decisions are not a child of this "
                             f"space ({exc})") from None
        return net.inherit(child, live=live)

    # --- helpers ---------------------------------------------------------------------------------

    def _arch(self, net: Supernet, child: Child | Cells,
              note: str | None = None) -> Architecture:
        dec: dict[str, Any] = {"space": net.space_name, **child.to_dict()}
        if isinstance(child, Child):
            dec["skip_count"] = child.skip_count
        if note:
            dec["note"] = note
        return Architecture(method=self.name, network=net.netspec(child),
                            space=self._describe(net), decisions=dec)

    @staticmethod
    def _check(supernet: nn.Module) -> Supernet:
        if not isinstance(supernet, (MacroSupernet, CellSupernet)):
            raise UsageError(f"enas: expected the supernet ENAS.build() returns, not "
                             f"{type(supernet).__name__}")
        return supernet
