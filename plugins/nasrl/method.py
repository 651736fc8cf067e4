"""``NASRL``: the nas2deploy search-method plugin (entry point ``nasrl``)."""

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

from .config import NASRLConfig
from .search import Record, run_search
from .space import Child, ControllerNet, netspec


class NASRL(SearchMethod):
    """NAS-RL: an LSTM controller emits each layer's kernel size, filter count (and stride) and
    skip inputs; every sampled child is trained from scratch and its held-out accuracy (or the
    MnasNet reward under a latency budget) is the controller's REINFORCE reward; the decision is
    the best child seen."""

    name: ClassVar[str] = "nasrl"
    paper: ClassVar[str] = ("Zoph & Le, \"Neural Architecture Search with Reinforcement "
                            "Learning\" (ICLR 2017)")
    Config: ClassVar[type[NASRLConfig]] = NASRLConfig
    # Each epoch trains ``controller_steps`` (8) children from scratch, a few CPU-seconds each on
    # digits at 32x32: 3 epochs, 24 children, keep the default search to a minute or two on two
    # idle CPU cores (4 epochs took 480 s of a default run's 957 s on two cores loaded ~7x).
    default_search_epochs: ClassVar[int] = 3
    # Children train on the data's device under the run's autocast; the controller samples with
    # a CPU generator and updates in float32.
    runs_on_gpu: ClassVar[bool] = True

    def __init__(self, config: NASRLConfig | dict[str, Any] | None = None):
        super().__init__(config)
        self.config.validate()

    # --- space -----------------------------------------------------------------------------------

    def build(self, task: TaskSpec) -> ControllerNet:
        for name in ("input_channels", "input_size", "num_classes"):
            v = getattr(task, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise UsageError(f"nasrl: task {name} must be a positive integer, not {v!r}")
        return ControllerNet(self.config, task)

    def space(self, supernet: nn.Module) -> SearchSpace:
        net = self._check(supernet)
        L = net.layout
        return SearchSpace(
            self._describe(net),
            largest=lambda: self._arch(net, L.extreme("largest"),
                                       note="largest: biggest kernel and filters, every skip"),
            smallest=lambda: self._arch(net, L.extreme("smallest"),
                                        note="smallest: smallest kernel and filters, no skip"),
            cover=lambda: [self._arch(net, L.uniform(k, f, s),
                                      note=f"latency-table cover: k{k} x {f} filters, stride {s}")
                           for k in L.kernels for f in L.filters for s in L.strides],
            sample=lambda rng: self._sample(net, rng))

    def _describe(self, net: ControllerNet) -> dict[str, Any]:
        task = {"input_channels": net.task.input_channels, "input_size": net.task.input_size,
                "num_classes": net.task.num_classes}
        space = net.cfg.space_dict()
        L = net.layout
        per_layer = len(L.kernels) * len(L.filters) * len(L.strides)
        n = L.n
        return {"name": "nasrl-layers",
                "fingerprint": fingerprint({"method": "nasrl", **space, "task": task}),
                **space, "task": task,
                "choice_points": {"OpChoice": n, "Width": n, "InputSet": max(n - 1, 0),
                                  **({"Stride": n} if net.cfg.search_strides else {})},
                "log10_architectures": round(n * math.log10(per_layer)
                                             + n * (n - 1) / 2 * math.log10(2), 2)}

    def _sample(self, net: ControllerNet, rng: random.Random) -> Architecture:
        """Uniform options per layer and each skip with probability 1/2 (not the controller)."""
        L = net.layout
        strides = ([rng.choice(L.strides) for _ in range(L.n)] if net.cfg.search_strides
                   else [L.fixed_stride(i) for i in range(L.n)])
        child = Child.make([rng.choice(L.kernels) for _ in range(L.n)],
                           [rng.choice(L.filters) for _ in range(L.n)], strides,
                           [[rng.randrange(2) for _ in range(i)] for i in range(L.n)])
        return self._arch(net, child, note="random sample")

    # --- search and decision ---------------------------------------------------------------------

    def search(self, supernet: nn.Module, ctx: SearchContext) -> Record:
        """Returns the record of every trained child."""
        return run_search(self._check(supernet), ctx)

    def decide(self, supernet: nn.Module, searched: Record | None = None) -> Decision:
        """After a search: the best child seen (``Record.best``: the highest reward, under a
        budget among the children estimated within it), without weights: the paper retrains the
        best architecture from scratch, and a child's few steps are worth less than a fresh
        initialisation's retrain. Before any search, or when no child was trained: the
        controller's most likely child."""
        net = self._check(supernet)
        record = searched if searched is not None else net.record
        best = record.best if record is not None else None
        if best is None:
            with torch.no_grad():
                child = net.layout.child_of(net.controller(greedy=True))
            return Decision(self._arch(net, child, note="the controller's most likely child"))
        return self._decision(net, record, best)

    def _decision(self, net: ControllerNet, record: Record, i: int,
                  note: str | None = None) -> Decision:
        row = record.rows[i]
        child = record.child(i)
        arch = self._arch(net, child, note=note)
        arch.seed = record.seed
        arch.decisions.update({"val_acc": row["val_acc"], "reward_value": row["reward"],
                               **record.rewarder.describe(), "children": len(record.rows),
                               "samples": [self._brief(r) for r in record.rows]})
        if "predicted_ms" in row:
            arch.decisions["predicted_ms"] = row["predicted_ms"]
            arch.metadata["predicted_ms"] = row["predicted_ms"]
        resize = None
        if "predicted_ms" in row and len(record.rows) > 1:
            resize = lambda factor: self._resize(net, record, i, factor)  # noqa: E731
        return Decision(arch, resize=resize)

    def _resize(self, net: ControllerNet, record: Record, i: int,
                factor: float) -> Decision | None:
        """The child the decision would take under a budget of ``factor`` x this one's
        estimate (``Record.pick``); None when that is this child again, or would not move the
        estimate the way ``factor`` asks."""
        if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 0):
            raise UsageError(f"nasrl: resize factor must be a positive number, not {factor!r}")
        target = factor * record.rows[i]["predicted_ms"]
        j = record.pick(target)
        lat_i, lat_j = record.rows[i]["predicted_ms"], record.rows[j]["predicted_ms"]
        if j == i or (lat_j >= lat_i if factor < 1 else lat_j <= lat_i):
            return None  # no trained child moves the estimate the way asked
        return self._decision(net, record, j, note=f"resized x{factor:.3g}: the decision under a "
                                                   f"budget of {target:.4g} ms (estimate)")

    @staticmethod
    def _brief(row: dict[str, Any]) -> dict[str, Any]:
        keep = ("kernels", "filters", "strides", "skips", "val_acc", "reward", "predicted_ms")
        return {k: row[k] for k in keep if k in row}

    # --- helpers ---------------------------------------------------------------------------------

    def _arch(self, net: ControllerNet, child: Child, note: str | None = None) -> Architecture:
        dec: dict[str, Any] = {**child.to_dict(), "skip_count": child.skip_count}
        if note:
            dec["note"] = note
        return Architecture(method=self.name, network=netspec(net.layout, child),
                            space=self._describe(net), decisions=dec)

    @staticmethod
    def _check(supernet: nn.Module) -> ControllerNet:
        if not isinstance(supernet, ControllerNet):
            raise UsageError(f"nasrl: expected the supernet NASRL.build() returns, not "
                             f"{type(supernet).__name__}")
        return supernet
