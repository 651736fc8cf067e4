"""The built-in random search: weight-shared training through sampled paths, the choice within
the budget, its resize lever, and a whole run from the command line.

Its conformance (every space it samples, the budget response) is in tests/test_conformance.py.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from nas2deploy.architecture import Architecture
from nas2deploy.errors import UsageError
from nas2deploy.method import SearchContext, SearchData, TaskSpec
from nas2deploy_plugins.random_search import RandomSearch
from nas2deploy_plugins.random_search.search import Candidate, Scored

TASK = TaskSpec(1, 16, 4)
TINY_TFNAS = {"stem_channels": 8, "stem_block_channels": 8, "stem_se": 2, "tail_channels": 32,
              "stages": [[2, 8, 2, "relu"], [1, 16, 2, "hswish"]]}


def data(n: int = 32) -> SearchData:
    """Three splits of learnable images (a bright pixel per class)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3 * n, 1, 16, 16, generator=g) * 0.1
    y = torch.arange(3 * n) % 4
    x[torch.arange(3 * n), 0, y * 3, y * 3] += 3.0
    return SearchData(x[:n], y[:n], x[n:2 * n], y[n:2 * n], x[2 * n:], y[2 * n:])


def method(**kw) -> RandomSearch:
    return RandomSearch({"space": "tfnas", "space_options": TINY_TFNAS, "samples": 6,
                         "score_images": 32, **kw})


def test_trains_the_shared_weights_and_leaves_architecture_parameters_alone():
    torch.manual_seed(0)
    m = method()
    net = m.build(TASK)
    inner = net.net
    alpha, betas = inner.alpha.detach().clone(), [b.detach().clone() for b in inner.betas]
    weights = {k: v.detach().clone() for k, v in inner.named_parameters()
               if k not in ("alpha",) and not k.startswith("betas")}
    ctx = SearchContext(data=data(), epochs=2, seed=0, batch_size=8)
    scored = m.search(net, ctx)
    assert torch.equal(inner.alpha, alpha) and all(torch.equal(a, b) for a, b in zip(inner.betas, betas))
    moved = [k for k, v in inner.named_parameters() if k in weights and not torch.equal(v, weights[k])]
    assert moved, "training through sampled paths changed no supernet weight"
    assert len(ctx.history) == 2 and all(row["phase"] == "search" for row in ctx.history)
    assert len(scored.candidates) == 6 and scored.shared
    assert all(0.0 <= c.val_acc <= 1.0 for c in scored.candidates)


def test_same_seed_same_decision():
    decisions = []
    for _ in range(2):
        torch.manual_seed(0)
        m = method()
        net = m.build(TASK)
        scored = m.search(net, SearchContext(data=data(), epochs=1, seed=3, batch_size=8))
        decisions.append(m.decide(net, scored).arch.to_dict())
    assert decisions[0] == decisions[1]


def _candidates(m: RandomSearch, net, rows) -> Scored:
    """Candidates of the real space with made-up scores and estimates."""
    import random

    space = m.space(net)
    rng = random.Random(0)
    return Scored([Candidate(space.draw(rng), acc, ms) for acc, ms in rows], budget_ms=1.0,
                  shared=True)


def test_picks_the_most_accurate_within_budget_and_resizes_among_the_scored():
    torch.manual_seed(0)
    m = method()
    net = m.build(TASK)
    scored = _candidates(m, net, [(0.9, 1.5), (0.8, 0.95), (0.7, 0.5), (0.85, 0.99), (0.6, 0.3)])
    d = m.decide(net, scored)
    assert d.arch.decisions["random"]["val_acc"] == 0.85  # 0.9 is over the budget
    assert d.arch.decisions["random"]["within_budget"] == 4
    assert d.arch.metadata["predicted_ms"] == 0.99
    # resize: the most accurate in [0.9, 1] x the asked latency, else the closest under it
    assert d.resize(0.97).arch.decisions["random"]["predicted_ms"] == 0.95
    smaller = d.resize(0.6)  # none in [0.535, 0.594] ms: the closest under, 0.5
    assert smaller.arch.decisions["random"]["predicted_ms"] == 0.5
    assert smaller.resize(0.7).arch.decisions["random"]["predicted_ms"] == 0.3
    assert smaller.resize(0.7).resize(0.5) is None  # nothing under 0.15 ms, nothing faster
    assert d.resize(0.1).arch.decisions["random"]["predicted_ms"] == 0.3  # none under: fastest
    larger = d.resize(1.6)  # in [1.43, 1.58] ms: 0.9 @ 1.5
    assert larger.arch.decisions["random"]["val_acc"] == 0.9
    # none fits: the fastest, said so
    tight = Scored(scored.candidates, budget_ms=0.1, shared=True)
    assert m.decide(net, tight).arch.decisions["random"]["predicted_ms"] == 0.3
    assert "fastest" in m.decide(net, tight).arch.decisions["random"]["note"]


@pytest.mark.parametrize("options, needle", [
    ({"space": "random"}, "another registered method"),
    ({"space": "nosuch"}, "unknown method 'nosuch'"),
    ({"space": "tfnas", "space_options": []}, "space_options"),
    ({"space": "tfnas", "samples": 0}, "samples"),
    ({"space": "tfnas", "space_options": {"nope": 1}}, "nope"),
])
def test_bad_options_are_one_clear_error(options, needle):
    with pytest.raises(UsageError, match=needle):
        RandomSearch(options)


def test_decision_record_round_trips():
    torch.manual_seed(0)
    m = method(samples=2)
    net = m.build(TASK)
    d = m.decide(net, m.search(net, SearchContext(data=data(), epochs=1, seed=0, batch_size=8)))
    back = Architecture.from_json(d.arch.to_json())
    assert back.method == "random" and back.decisions["random"]["space"] == "tfnas"
    assert m.space(net).weights(back).keys() == d.weights.keys()


@pytest.mark.slow
def test_search_and_export_random_in_the_tfnas_space(tmp_path):
    """``--method random --space tfnas`` through the whole pipeline: the decision is random's,
    sized, retrained, exported, its parity checked and its latency measured."""
    out = tmp_path / "bundle"
    res = subprocess.run([sys.executable, "-m", "nas2deploy.cli", "search-and-export",
                          "--method", "random", "--space", "tfnas", "--search-epochs", "2",
                          "--retrain-epochs", "1", "--input-size", "16",
                          "--target", "onnxruntime:cpu", "--export", "onnx", "--out", str(out),
                          "--json", "--quiet"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode in (0, 3), res.stderr[-2000:]
    m = json.loads(res.stdout)
    assert m["method"]["name"] == "random"
    arch = json.loads((out / "architecture.json").read_text())
    assert arch["method"] == "random" and arch["decisions"]["random"]["candidates"] == 48
    assert m["latency"]["measured"]["p50_ms"] > 0
    assert res.returncode == (0 if m["latency"]["within_budget"] else 3)
