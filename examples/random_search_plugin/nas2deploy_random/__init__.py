"""Random search (the baseline of Li & Talwalkar, "Random Search and Reproducibility for NAS", 2019).

As pruning: the supernet holds every candidate op at every layer; each sample keeps one op per
layer and removes the rest; the best sample on the architecture split survives.
Each sampled subnet is trained briefly on its own (no weight sharing) and scored on held-out data.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
from torch import nn

from nas2deploy.architecture import Architecture, fingerprint
from nas2deploy.errors import UsageError
from nas2deploy.method import Decision, MethodConfig, SearchContext, SearchMethod, TaskSpec
from nas2deploy.netspec import build_network
from nas2deploy.space import SearchSpace
from nas2deploy.train import accuracy, fit

CANDIDATES = {
    "sep3": {"op": "sep", "k": 3},
    "sep5": {"op": "sep", "k": 5},
    "mb3_e3": {"op": "mbconv", "k": 3, "t": 3},
    "mb5_e6": {"op": "mbconv", "k": 5, "t": 6},
    "maxpool": {"op": "pool", "kind": "max"},
}


@dataclass
class RandomConfig(MethodConfig):
    samples: int = 8
    layers: int = 4
    width: int = 16
    ops: list[str] = field(default_factory=lambda: list(CANDIDATES))

    def validate(self) -> None:
        for name, lo, hi in (("samples", 1, 1000), ("layers", 1, 64), ("width", 4, 1024)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise UsageError(f"random: {name} must be an integer in {lo}..{hi}, not {v!r}")
        if not isinstance(self.ops, list) or not self.ops:
            raise UsageError(f"random: ops must be a non-empty list of {', '.join(CANDIDATES)}")
        bad = [o for o in self.ops if o not in CANDIDATES]
        if bad:
            raise UsageError(f"random: unknown op(s) {bad}; choose from {', '.join(CANDIDATES)}")


def _spec(task: TaskSpec, cfg: RandomConfig, choice: list[str]) -> dict:
    c = cfg.width
    nodes = [{"id": "stem", "op": "conv", "inputs": ["input"], "c_in": task.input_channels,
              "c_out": c, "k": 3, "stride": 1, "act": "relu"}]
    prev = "stem"
    for i, name in enumerate(choice):
        # Halve the resolution and double the width every other layer.
        stride = 2 if i % 2 == 1 else 1
        c_out = c * 2 if stride == 2 else c
        cand = CANDIDATES[name]
        nid = f"l{i}"
        if cand["op"] == "sep":
            node = {"op": "sep", "c_in": c, "c_out": c_out, "k": cand["k"], "stride": stride}
        elif cand["op"] == "mbconv":
            node = {"op": "mbconv", "c_in": c, "c_out": c_out, "mid": c * cand["t"],
                    "k": cand["k"], "stride": stride}
        else:  # a pool keeps the width: follow it with a 1x1 conv when the width must grow
            node = {"op": "pool", "c": c, "kind": cand["kind"], "stride": stride}
            if c_out != c:
                nodes.append({"id": nid + "_pool", "inputs": [prev], **node})
                prev, node = nid + "_pool", {"op": "conv", "c_in": c, "c_out": c_out, "k": 1}
        nodes.append({"id": nid, "inputs": [prev], **node})
        prev, c = nid, c_out
    nodes.append({"id": "head", "op": "head", "inputs": [prev], "c_in": c,
                  "num_classes": task.num_classes})
    return {"input": {"channels": task.input_channels, "size": [task.input_size] * 2},
            "num_classes": task.num_classes, "nodes": nodes, "output": "head"}


def _tuples(v):
    """random.Random's state as JSON gives it back (lists) -> the tuples setstate takes."""
    return tuple(_tuples(x) for x in v) if isinstance(v, (list, tuple)) else v


class Supernet(nn.Module):
    """Holds the task; the sampled subnets are trained on their own (no shared weights)."""

    def __init__(self, task: TaskSpec, cfg: RandomConfig):
        super().__init__()
        self.task, self.cfg = task, cfg


@dataclass
class Sampled:
    """What ``search`` hands ``decide``: the best choice, its trained weights, every score."""

    best: list[str]
    state: dict[str, torch.Tensor]
    scores: list[dict]


class RandomSearch(SearchMethod):
    name = "example-random"
    paper = "Li & Talwalkar 2019, random search baseline (example third-party plugin)"
    Config = RandomConfig
    default_search_epochs = 2
    runs_on_gpu = True  # every child is moved to the data's device before it trains

    def build(self, task: TaskSpec) -> Supernet:
        return Supernet(task, self.config)

    def space(self, supernet: Supernet) -> SearchSpace:
        desc = {"layers": self.config.layers, "width": self.config.width, "ops": self.config.ops,
                "task": vars(supernet.task)}
        description = {"name": "random-chain", "fingerprint": fingerprint(desc), **desc}
        return SearchSpace(
            description,
            largest=lambda: self._by_macs(supernet, description, max),
            smallest=lambda: self._by_macs(supernet, description, min),
            sample=lambda rng: self._arch(supernet, description,
                                          [rng.choice(self.config.ops) for _ in range(self.config.layers)]))

    def _arch(self, supernet: Supernet, description: dict, choice: list[str]) -> Architecture:
        return Architecture(method=self.name, network=_spec(supernet.task, self.config, choice),
                            space=description, decisions={"ops": choice})

    def _by_macs(self, supernet: Supernet, description: dict, pick) -> Architecture:
        from nas2deploy.counting import count_macs

        def macs(op):
            net = build_network(_spec(supernet.task, self.config, [op] * self.config.layers))
            return count_macs(net, net.example_input(1))

        return self._arch(supernet, description, [pick(self.config.ops, key=macs)] * self.config.layers)

    def search(self, supernet: Supernet, ctx: SearchContext) -> Sampled:
        rng = random.Random(ctx.seed)
        d = ctx.data
        best, found = -1.0, None
        scores: list[dict] = []
        first = 0
        # --resume: go on after the last sample checkpointed (the context restores the history)
        resumed = ctx.restore_state()
        if resumed is not None:
            first, state = resumed
            rng.setstate(_tuples(state["rng"]))
            best, scores = state["best"], state["scores"]
            found = (state["choice"], state["weights"]) if state["choice"] else None
        bar = ctx.progress(total=self.config.samples, desc="random samples") if ctx.progress else None
        if bar is not None and first:
            bar.update(first)
        for k in range(first, self.config.samples):
            choice = [rng.choice(self.config.ops) for _ in range(self.config.layers)]
            torch.manual_seed(ctx.seed + k)
            net = build_network(_spec(supernet.task, self.config, choice))
            net.to(d.device)
            # world: under torchrun each rank trains on its shard and DDP averages gradients
            fit(net, d, split="weights", val_split=None, epochs=ctx.epochs, seed=ctx.seed + k,
                batch_size=ctx.batch_size, world=ctx.world, compute=ctx.compute)
            score = accuracy(net, d.ordered("arch"))
            scores.append({"ops": choice, "arch_acc": score})
            ctx.history.append({"epoch": k, "phase": "sample", "loss": float("nan"),
                                "val_acc": accuracy(net, d.ordered("val")), "arch_acc": score})
            if score > best:
                best, found = score, (choice, {k: v.detach().cpu().clone()
                                               for k, v in net.state_dict().items()})
            ctx.save_state(k + 1, {"rng": rng.getstate(), "best": best, "scores": scores,
                                   "choice": found[0] if found else None,
                                   "weights": found[1] if found else {}})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(best=f"{best:.3f}")
        if bar is not None:
            bar.close()
        return Sampled(found[0], found[1], scores)

    def decide(self, supernet: Supernet, searched: Sampled | None = None) -> Decision:
        if searched is None:
            raise UsageError("random: decide() needs what search() returned: nothing was sampled")
        arch = self._arch(supernet, self.space(supernet).description, searched.best)
        arch.decisions["samples"] = searched.scores
        return Decision(arch, dict(searched.state))
