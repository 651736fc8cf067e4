"""The four built-in methods search on the run's device and precision (``runs_on_gpu``).

Each method searches a tiny space for two epochs the way the pipeline runs it: the supernet moved
to ``ctx.compute.device`` (``nas2deploy.device.on``: channels-last on a GPU) and back to the CPU
after the search, ``SearchData`` batched on that device; then ``decide`` on the CPU, and the
decided architecture materializes with its inherited weights and runs on the CPU.

The GPU cases (``-m gpu``) run on CUDA with AMP auto (bf16 where the GPU has it), fp16 (loss
scaling) and off; skipped with the reason where no CUDA GPU is visible. The CPU cases run the
same helper with ``resolve("cpu", "off")``, and with CPU autocast (bf16, fp16) for the
mixed-precision code paths.
"""

from __future__ import annotations

import math

import pytest
import torch

from nas2deploy.device import Compute, on, resolve
from nas2deploy.architecture import Architecture
from nas2deploy.materialize import materialize
from nas2deploy.method import SearchContext, SearchData, TaskSpec
from nas2deploy_plugins.densenas import DenseNAS
from nas2deploy_plugins.dsonas import DSONAS
from nas2deploy_plugins.enas import ENAS
from nas2deploy_plugins.tfnas import TFNAS
from nas2deploy_plugins.random_search import RandomSearch

from test_tfnas import SynthLUT  # a monotone synthetic per-op table


# name -> (method class, tiny config, task, options of the context); the tiny configs are the
# ones tests/test_<method>.py search with
CASES = {
    "dsonas": (DSONAS, {"stages": 2, "blocks_per_stage": 1, "levels": 2, "base_width": 8,
                        "stem_stride": 1, "gamma": 0.05, "pretrain_fraction": 0.34},
               TaskSpec(1, 8, 4), {}),
    "densenas": (DenseNAS, {"widths": [8, 12, 16, 20], "groups": [1, 2, 2, 3],
                            "reductions": [2, 4, 4, 4], "layers": [1, 1, 0, 0],
                            "stem_channels": 8, "final_channels": 32, "kernels": [3, 5],
                            "expansions": [2, 3]},
                 TaskSpec(1, 16, 4), {"latency": True}),
    "tfnas": (TFNAS, {"stem_channels": 8, "stem_block_channels": 8, "stem_se": 2,
                      "stages": [[2, 8, 2, "relu"], [2, 16, 2, "hswish"], [1, 16, 1, "hswish"]],
                      "tail_channels": 32, "landing_rounds": 1},
              TaskSpec(1, 16, 4), {"latency": True, "measure": True}),
    "enas": (ENAS, {"nodes": 4, "width": 4, "lstm_size": 16, "controller_steps": 2,
                    "reward_batch": 16, "derive_samples": 3},
             TaskSpec(1, 16, 4), {"latency": True}),
    "random": (RandomSearch, {"space": "tfnas", "samples": 4, "score_images": 32,
                              "space_options": {"stem_channels": 8, "stem_block_channels": 8,
                                                "stem_se": 2, "tail_channels": 32,
                                                "stages": [[2, 8, 2, "relu"], [1, 16, 2, "hswish"]]}},
               TaskSpec(1, 16, 4), {"latency": True}),
}
PHASED = {"dsonas", "densenas", "tfnas"}  # methods whose history has a "search" phase


def _data(task: TaskSpec, device: torch.device, n: int = 32) -> SearchData:
    """Three splits of ``n`` learnable images each (a bright pixel on the diagonal per class),
    batched on ``device``."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3 * n, task.input_channels, task.input_size, task.input_size, generator=g)
    y = torch.arange(3 * n) % task.num_classes
    x[torch.arange(3 * n), 0, y, y] += 3.0
    return SearchData(x[:n], y[:n], x[n:2 * n], y[n:2 * n], x[2 * n:], y[2 * n:], device=device)


def _on_cpu(tensors) -> bool:
    return all(t.device.type == "cpu" for t in tensors)


def latency(name: str, method, supernet):
    """(the synthetic table, a budget halfway between the space's smallest and largest) for a
    case that steers by latency; (None, None) otherwise."""
    if not CASES[name][3].get("latency"):
        return None, None
    lut, space = SynthLUT(), method.space(supernet)
    big, small = lut.predict(space.largest().network), lut.predict(space.smallest().network)
    return lut, small + 0.5 * (big - small)


def search_and_decide(name: str, compute: Compute, epochs: int = 2):
    """Search method ``name`` on ``compute`` as the pipeline does, decide on the CPU, and check
    the decision materializes and runs on the CPU. Returns (decision, history)."""
    cls, cfg, task, opts = CASES[name]
    torch.manual_seed(0)
    method = cls(cfg)
    assert cls.runs_on_gpu is True
    supernet = method.build(task)
    data = _data(task, compute.device)
    lut, budget = latency(name, method, supernet)
    measured: list[float] = []

    def measure(spec, weights=None) -> float:  # the pipeline's callback, timed by the estimate
        assert weights is None or _on_cpu(weights.values()), "measure got device weights"
        net = materialize(Architecture(method=name, network=spec), weights)
        assert net is not None
        measured.append(lut.predict(spec) * 1.2)
        return measured[-1]

    ctx = SearchContext(data=data, epochs=epochs, seed=0, batch_size=16, budget_ms=budget,
                        latency_model=lut, compute=compute,
                        measure=measure if opts.get("measure") else None)
    with on(supernet, compute), data:
        assert next(supernet.parameters()).device.type == compute.device.type
        searched = method.search(supernet, ctx)
        assert next(supernet.parameters()).device.type == compute.device.type
    assert _on_cpu(supernet.parameters()) and _on_cpu(supernet.buffers())
    assert [r["epoch"] for r in ctx.history][-1] in (epochs, epochs - 1)  # ENAS counts from 0
    for row in ctx.history:
        assert math.isfinite(row["loss"]), row
    if name in PHASED:
        assert any(r["phase"] == "search" for r in ctx.history)
    if opts.get("measure"):
        assert measured, "the measured landing did not run"
    for p in supernet.parameters():
        assert torch.isfinite(p).all()

    decision = method.decide(supernet, searched)
    assert _on_cpu(decision.weights.values())
    net = materialize(decision.arch, decision.weights).eval()
    x = torch.randn(2, task.input_channels, task.input_size, task.input_size)
    with torch.no_grad():
        out = net(x)
    assert out.shape == (2, task.num_classes) and torch.isfinite(out).all()
    # what the space says it inherits is on the CPU too
    assert _on_cpu(method.space(supernet).weights(decision.arch).values())
    return decision, ctx.history


@pytest.mark.parametrize("name", sorted(CASES))
def test_search_on_cpu_through_the_device_path(name):
    """The same path on the CPU (AMP off): ``on`` is a no-op there, everything else runs."""
    search_and_decide(name, resolve("cpu", "off"))


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_mixed_precision_paths_on_cpu(name, amp):
    """The autocast and loss-scaling code of every method, run by CPU autocast (which the
    pipeline never asks for: ``resolve`` refuses AMP on a CPU). It catches a dtype mix that
    autocast does not resolve (an op outside its lists fed float16 and float32) before a GPU
    does; fp16 also runs ``LossScale`` and ``GradScaler`` enabled."""
    search_and_decide(name, Compute(torch.device("cpu"), amp))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("amp", ["auto", "fp16", "off"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_search_on_cuda(name, amp):
    compute = resolve("cuda", amp)
    search_and_decide(name, compute)


PRESETS = {  # the paper-size spaces: (method, options, task, batch per step)
    "tfnas-imagenet": (TFNAS, {"preset": "imagenet"}, TaskSpec(3, 224, 1000), 64),
    "densenas-imagenet": (DenseNAS, {"space": "imagenet"}, TaskSpec(3, 224, 1000), 64),
    "dsonas-cifar": (DSONAS, {"preset": "cifar"}, TaskSpec(3, 32, 10), 64),
}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_paper_size_spaces_search_within_one_card(name):
    """Two search epochs of each paper-size space, on 128 images at the paper's input size, on
    one GPU with AMP, the whole supernet resident: its peak memory stays within the card's."""
    cls, opts, task, batch = PRESETS[name]
    compute = resolve("cuda", "auto")
    torch.cuda.reset_peak_memory_stats()
    method = cls(opts)
    supernet = method.build(task)
    g = torch.Generator().manual_seed(0)
    n = 2 * batch
    x = torch.randn(3 * n, task.input_channels, task.input_size, task.input_size, generator=g)
    y = torch.randint(0, task.num_classes, (3 * n,), generator=g)
    data = SearchData(x[:n], y[:n], x[n:2 * n], y[n:2 * n], x[2 * n:], y[2 * n:],
                      device=compute.device)
    ctx = SearchContext(data=data, epochs=2, seed=0, batch_size=batch, compute=compute)
    with on(supernet, compute), data:
        searched = method.search(supernet, ctx)
    peak = torch.cuda.max_memory_allocated()
    total = torch.cuda.get_device_properties(compute.device).total_memory
    print(f"{name}: peak {peak / 2 ** 30:.1f} GiB of {total / 2 ** 30:.0f} GiB")
    assert peak < 0.9 * total
    assert method.decide(supernet, searched).arch.network["nodes"]
