"""Every built-in method's search checkpoints each epoch and resumes to the same result.

A search stopped right after its checkpoint of epoch ``k`` (where a kill -9 loses least: one
later is the same, minus the lost part of epoch ``k + 1``) and resumed in a fresh supernet, built
from the seed as a resumed run builds it, must end bit-identical on the CPU to a search that
was never stopped: the same architecture parameters and weights, the same history, the same
decision. The measured landing (TF-NAS) is timed by a deterministic stand-in here; the pipeline
replays the real measurements from its journal (tests/test_distributed.py).
"""

from __future__ import annotations

import pytest
import torch

from test_gpu_search import CASES, _data, latency

from nas2deploy.checkpoint import Loop
from nas2deploy.device import resolve
from nas2deploy.method import SearchContext

EPOCHS = 4
TIMING = {"seconds", "train_seconds", "images_per_s", "elapsed_s"}


class Stop(Exception):
    pass


class StoppingLoop(Loop):
    def __init__(self, *a, stop_at: int | None = None, **kw):
        super().__init__(*a, **kw)
        self.stop_at = stop_at

    def save(self, step, tree):
        super().save(step, tree)
        if step == self.stop_at:
            raise Stop


def search(name: str, folder, stop_at: int | None = None):
    cls, cfg, task, opts = CASES[name]
    torch.manual_seed(0)
    method = cls(cfg)
    supernet = method.build(task)
    lut, budget = latency(name, method, supernet)
    calls: list[float] = []

    def measure(spec, weights=None) -> float:
        calls.append(lut.predict(spec) * 1.2)
        return calls[-1]

    said: list[str] = []
    ctx = SearchContext(data=_data(task, torch.device("cpu")), epochs=EPOCHS, seed=0,
                        batch_size=16, budget_ms=budget, latency_model=lut,
                        compute=resolve("cpu", "off"), log=said.append,
                        measure=measure if opts.get("measure") else None,
                        checkpoints=StoppingLoop(folder, 0, key=name, stop_at=stop_at))
    with ctx.data:
        searched = method.search(supernet, ctx)
    decision = method.decide(supernet, searched)
    history = [{k: v for k, v in row.items() if k not in TIMING} for row in ctx.history]
    return supernet, decision, history, said


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_stopped_search_resumes_bit_identical(name, tmp_path):
    whole, decided, history, _ = search(name, tmp_path / "whole")
    with pytest.raises(Stop):
        search(name, tmp_path / "run", stop_at=2)
    torch.manual_seed(1234)  # what happened in between does not matter: the checkpoint rules
    again, decided2, history2, said = search(name, tmp_path / "run")
    assert any("after epoch 2" in s for s in said), said
    assert history2 == history
    assert decided2.arch.to_dict() == decided.arch.to_dict()
    for (k, a), (_, b) in zip(whole.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    assert decided2.weights.keys() == decided.weights.keys()
    assert all(torch.equal(decided.weights[k], decided2.weights[k]) for k in decided.weights)
