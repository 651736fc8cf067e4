"""``RandomSearch``: the built-in random-search baseline (entry point ``random``)."""

from __future__ import annotations

import random
from typing import Any, ClassVar

from torch import nn

from nas2deploy import registry
from nas2deploy.architecture import Architecture
from nas2deploy.errors import UsageError
from nas2deploy.method import Decision, SearchContext, SearchMethod, TaskSpec
from nas2deploy.space import SearchSpace

from .config import RandomConfig
from .search import Candidate, Scored, best_under, near, score, train_shared


class RandomSupernet(nn.Module):
    """The searched method's own supernet, held as ``net`` (its state dict is that one's, under
    ``net.``); random search adds no parameters."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net


class RandomSearch(SearchMethod):
    """Random search in another method's space: ``--method random --space tfnas``.

    The supernet is that method's; its weights are trained with uniformly sampled paths (one
    subnet per batch, through ``SearchSpace.share``), then ``samples`` subnets are drawn, their
    latency estimated with the run's latency model and their accuracy scored on held-out data.
    The decision is the most accurate one whose estimate is within the budget, and it goes
    through the same sizing, retraining, export and verdict as every method's. Its ``resize``
    lever re-picks among the scored candidates under a scaled latency."""

    name: ClassVar[str] = "random"
    paper: ClassVar[str] = ("Li & Talwalkar, \"Random Search and Reproducibility for Neural "
                            "Architecture Search\" (UAI 2019): random search with weight sharing")
    Config: ClassVar[type[RandomConfig]] = RandomConfig
    runs_on_gpu: ClassVar[bool] = True  # subnets are materialized on the data's device

    def __init__(self, config: RandomConfig | dict[str, Any] | None = None):
        super().__init__(config)
        self.config.validate()
        try:
            cls = registry.methods.get(self.config.space)
        except UsageError as exc:
            raise UsageError(f"random: --space: {exc}") from None
        if isinstance(cls, type) and issubclass(cls, RandomSearch):
            raise UsageError(f"random: space {self.config.space!r} is random search itself; "
                             f"name the method whose space to sample")
        self.inner: SearchMethod = cls(self.config.space_options)
        # the same search budget as the method whose space this is, by default
        self.default_search_epochs = self.inner.default_search_epochs

    def build(self, task: TaskSpec) -> RandomSupernet:
        return RandomSupernet(self.inner.build(task))

    def space(self, supernet: nn.Module) -> SearchSpace:
        return self.inner.space(self._check(supernet).net)

    def search(self, supernet: nn.Module, ctx: SearchContext) -> Scored:
        net = self._check(supernet)
        space = self.space(net)
        if space.sample is None:
            raise UsageError(f"random: the {self.config.space} space cannot sample subnets "
                             f"(its method gives no sample())")
        shared = space.share is not None
        net.to(ctx.data.device)
        if shared:
            ctx.log(f"random: training the {self.config.space} supernet with uniformly sampled "
                    f"paths for {ctx.epochs} epochs, then scoring {self.config.samples} subnets")
            train_shared(net, space, self.config, ctx)
        else:
            ctx.log(f"random: the {self.config.space} space shares no weights: each of "
                    f"{self.config.samples} subnets trains from scratch for "
                    f"{self.config.child_steps} batches (the search epochs are not used)")
        return score(space, self.config, ctx, shared)

    def decide(self, supernet: nn.Module, searched: Scored | None = None) -> Decision:
        """The most accurate scored candidate within the budget (the fastest one when none fits
        it); before any search, one seeded draw."""
        net = self._check(supernet)
        space = self.space(net)
        if searched is None:
            arch = space.draw(random.Random(0))
            return Decision(self._label(arch, {"note": "one seeded draw, before any search"}),
                            space.weights(arch))
        if not searched.candidates:
            raise UsageError("random: the search scored no candidate")
        best = best_under(searched.candidates, searched.budget_ms)
        note = "the most accurate candidate within the budget"
        if best is None:
            best = min(searched.candidates, key=lambda c: c.predicted_ms)
            note = "no candidate fits the budget: the fastest"
        return self._decision(space, searched, best, note)

    def _decision(self, space: SearchSpace, searched: Scored, best: Candidate,
                  note: str) -> Decision:
        ms = [c.predicted_ms for c in searched.candidates]
        under = (None if searched.budget_ms is None or None in ms
                 else sum(m <= searched.budget_ms for m in ms))
        record = {"note": note, "space": self.config.space, **best.row(),
                  "candidates": len(searched.candidates), "within_budget": under,
                  "weight_sharing": searched.shared,
                  "scored": [c.row() for c in searched.candidates]}
        arch = self._label(best.arch, record)
        if best.predicted_ms is not None:
            arch.metadata["predicted_ms"] = best.predicted_ms
        weights = space.weights(best.arch) if searched.shared else dict(best.weights)

        def resize(factor: float) -> Decision | None:
            if best.predicted_ms is None:
                return None
            pick = near(searched.candidates, best, factor * best.predicted_ms)
            return None if pick is None else self._decision(
                space, searched, pick, f"re-picked at {factor:.3f} x the latency of the last")

        return Decision(arch, weights, resize=resize)

    def _label(self, arch: Architecture, record: dict[str, Any]) -> Architecture:
        """The sampled architecture as random search's decision (its space's own decisions
        kept: they rebuild its weights)."""
        out = Architecture.from_dict(arch.to_dict())
        out.method = self.name
        out.decisions = {**out.decisions, "random": record}
        return out

    @staticmethod
    def _check(supernet: nn.Module) -> RandomSupernet:
        if not isinstance(supernet, RandomSupernet):
            raise UsageError(f"random: expected the supernet RandomSearch.build() returns, not "
                             f"{type(supernet).__name__}")
        return supernet
