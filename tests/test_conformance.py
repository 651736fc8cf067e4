"""Conformance: every registered search method, through the whole path data takes.

Registering a method enrols it here (DESIGN.md §4, timm's habit). The parametrization is the
method registry (``nas2deploy.methods`` entry points) as it stands when the tests are collected,
plus the methods the example plugins under ``examples/`` declare: those are installed for real by
the ``random_plugin`` fixture (pip, private folder) before their case runs. A method that is
registered but not enrolled fails ``test_every_registered_method_is_enrolled``.

Each case: build on a tiny task → one search epoch on real digits → decide (which must not
train) → Architecture JSON round trip → materialize with the inherited weights, and the same net
rebuilt from the JSON alone gives the same outputs → one short retrain → ONNX export through the
registered exporter and parity with PyTorch; and the method's largest, smallest and candidate
networks validate and run. ``OPTIONS`` makes the known spaces tiny; a method it does not know
runs with its defaults.

The exporters' own conformance (every registered exporter) is in tests/test_exporters.py.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from nas2deploy import registry
from nas2deploy.architecture import Architecture
from nas2deploy.counting import count_macs
from nas2deploy.data import load_dataset
from nas2deploy.errors import UsageError
from nas2deploy.exporter import ExportContext, verify_parity
from nas2deploy.latency.model import FlopsProxy
from nas2deploy.materialize import materialize
from nas2deploy.method import Decision, SearchContext, SearchData, SearchMethod, TaskSpec
from nas2deploy.netspec import build_network, validate_spec
from nas2deploy.space import SearchSpace
from nas2deploy.target import Target
from nas2deploy.train import train

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
TASK = TaskSpec(1, 16, 10)

# Tiny spaces for the methods this file knows (the option sets their own tests use); any other
# registered method runs with its defaults.
OPTIONS: dict[str, dict] = {
    "dsonas": {"stages": 1, "blocks_per_stage": 2, "levels": 3, "base_width": 8, "stem_stride": 1},
    "densenas": {"widths": [8, 12, 16, 20], "groups": [1, 2, 2, 3], "reductions": [2, 4, 4, 4],
                 "layers": [1, 1, 0, 0], "stem_channels": 8, "final_channels": 32,
                 "kernels": [3, 5], "expansions": [2, 3]},
    "tfnas": {"stem_channels": 8, "stem_block_channels": 8, "stem_se": 2, "tail_channels": 32,
              "stages": [[2, 8, 2, "relu"], [2, 16, 2, "hswish"], [1, 16, 1, "hswish"]]},
    "example-random": {"samples": 1, "layers": 2, "width": 8},
    "enas": {"nodes": 3, "width": 4, "lstm_size": 16, "controller_steps": 2, "reward_batch": 16,
             "derive_samples": 8},
}
OPTIONS["mnasnet"] = {"stem_channels": 8, "blocks": [[1, 8, 1], [1, 8, 2], [1, 12, 2]],
                      "lstm_size": 16, "controller_steps": 2, "reward_batch": 16,
                      "derive_samples": 2, "top_k": 1, "ops": ["conv", "mbconv3"], "kernels": [3]}
OPTIONS["nasrl"] = {"layers": 3, "kernels": [1, 3], "filters": [4, 8], "stem_width": 4,
                    "stem_stride": 1, "lstm_size": 16, "controller_steps": 4, "child_steps": 6,
                    "child_batch": 16, "reward_images": 48}
OPTIONS["random"] = {"space": "tfnas", "space_options": OPTIONS["tfnas"], "samples": 4,
                     "score_images": 32}


def example_methods() -> dict[str, str]:
    """Method names the example plugins declare, read from their pyproject.toml entry points
    (``random_plugin`` installs them): name -> example folder."""
    found = {}
    for pyproject in sorted(ROOT.glob("examples/*/pyproject.toml")):
        meta = tomllib.loads(pyproject.read_text())
        eps = meta.get("project", {}).get("entry-points", {}).get(registry.METHODS_GROUP, {})
        found.update({name: pyproject.parent.name for name in eps})
    return found


def enrolled() -> list[str]:
    """The methods this file runs: the registry at collection, and what the examples add once
    installed. A method pip-installed into the environment is in the first set: enrolled."""
    return sorted(set(registry.methods.names()) | set(example_methods()))


ENROLLED = enrolled()


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny nets: one intra-op thread is faster, and steady on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    """A few dozen real digits at 16×16: search splits, a retrain set and a parity batch."""
    ds = load_dataset("digits", input_size=16, seed=0)
    x, y = ds.x_train, ds.y_train
    data = SearchData(x[:48], y[:48], x[48:96], y[48:96], ds.x_val[:32], ds.y_val[:32])
    return {"search": data, "x_train": x[96:160], "y_train": y[96:160], "x": ds.x_test[:8]}


def method_entry(name: str, request):
    """The registry entry for ``name``, installing the example plugins first when it is theirs."""
    if name not in registry.methods.names():
        folder = example_methods().get(name)
        assert folder is not None, f"method {name!r} vanished from the registry"
        request.getfixturevalue("random_plugin")  # pip-installs examples/random_search_plugin
        assert name in registry.methods.names(), (
            f"examples/{folder} declares method {name!r}, but installing the example plugin did "
            f"not register it (give its example an install fixture in tests/conftest.py)")
    entry = next(e for e in registry.methods.entries() if e.name == name)
    assert entry.obj is not None, f"method {name!r} ({entry.dist}) failed to load: {entry.error}"
    return entry


def dead_nodes(spec: dict) -> list[str]:
    """Nodes nothing on the way to the output reads: computed for nothing, counted by latency
    models, and invisible to channel pruning (which traces from the output)."""
    by_id = {n["id"]: n for n in spec["nodes"]}
    live, todo = set(), [spec["output"]]
    while todo:
        nid = todo.pop()
        if nid not in live and nid in by_id:
            live.add(nid)
            todo.extend(by_id[nid]["inputs"])
    return [n["id"] for n in spec["nodes"] if n["id"] not in live]


def check_runs(arch: Architecture, space: dict, x: torch.Tensor, weights=None) -> torch.nn.Module:
    """``arch`` is a valid network for TASK, from ``space``, that materializes and gives
    (N, classes) logits."""
    assert isinstance(arch, Architecture)
    assert arch.space.get("fingerprint") == space["fingerprint"], "architecture names another space"
    validate_spec(arch.network)
    assert not dead_nodes(arch.network), \
        f"nodes whose output never reaches the output: {dead_nodes(arch.network)}"
    assert arch.network["input"]["channels"] == TASK.input_channels
    assert list(arch.network["input"]["size"]) == [TASK.input_size] * 2
    assert arch.network["num_classes"] == TASK.num_classes
    net = materialize(arch, weights).eval()
    with torch.no_grad():
        out = net(x)
    assert out.shape == (len(x), TASK.num_classes)
    assert torch.isfinite(out).all()
    return net


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def parametrized_names() -> list[str]:
    """The names ``test_method_conformance`` is really parametrized with (read off its mark)."""
    marks = [m for m in test_method_conformance.pytestmark if m.name == "parametrize"]
    assert len(marks) == 1 and marks[0].args[0] == "name"
    return list(marks[0].args[1])


def test_every_registered_method_is_enrolled(random_plugin):
    """With the example plugin installed, the registry lists exactly what the conformance test
    was parametrized with: nothing hard-coded, nothing left out."""
    names = registry.methods.names()
    missing = sorted(set(names) - set(parametrized_names()))
    assert not missing, f"registered but not run through conformance: {missing}"
    assert sorted(parametrized_names()) == names
    assert {"dsonas", "densenas", "tfnas", "random", "example-random"} <= set(names)


@pytest.mark.parametrize("name", ENROLLED)
def test_method_conformance(name, request, digits, tmp_path):
    entry = method_entry(name, request)
    cls = entry.obj
    assert isinstance(cls, type) and issubclass(cls, SearchMethod), \
        f"{entry.value} is not a SearchMethod"
    assert cls.name == name, f"{entry.value} calls itself {cls.name!r}, registered as {name!r}"
    x = digits["x"]

    torch.manual_seed(0)
    method = cls(OPTIONS.get(name))
    supernet = method.build(TASK)
    assert isinstance(supernet, torch.nn.Module)

    space = method.space(supernet)
    assert isinstance(space, SearchSpace)
    assert {"largest", "smallest"} <= set(space.capabilities)
    assert isinstance(space.get("name"), str) and space["name"]
    assert isinstance(space.get("fingerprint"), str) and space["fingerprint"]
    json.dumps(space.description)
    assert method.space(supernet)["fingerprint"] == space["fingerprint"]
    assert isinstance(cls.default_search_epochs, int) and cls.default_search_epochs >= 1

    for reference in (space.largest(), space.smallest(), *space.covering()):
        check_runs(reference, space, x)
    if space.sample is not None:  # sampling reads the space, never the architecture parameters
        before = state(supernet)
        check_runs(space.draw(random.Random(0)), space, x)
        assert all(torch.equal(before[k], v) for k, v in state(supernet).items())

    # One search epoch; decide, which must not train.
    ctx = SearchContext(data=digits["search"], epochs=1, seed=0, batch_size=16)
    searched = method.search(supernet, ctx)
    assert ctx.history and all(isinstance(row, dict) for row in ctx.history)
    before = state(supernet)
    decision = method.decide(supernet, searched)
    after = state(supernet)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), "decide() changed the supernet"
    assert isinstance(decision, Decision)
    arch = decision.arch
    assert isinstance(arch, Architecture) and arch.method == name
    assert method.decide(supernet, searched).arch.network == arch.network, \
        "decide() is not a function of the supernet"
    assert set(decision.levers) <= {"resize", "sparser"}
    assert Decision.from_json(json.loads(json.dumps(decision.to_json()))).arch.to_dict() \
        == arch.to_dict()
    # The levers own what they need: pulling them leaves the supernet as it was.
    for lever, arg in (("resize", 0.9), ("sparser", 1)):
        pulled = getattr(decision, lever)
        if pulled is not None:
            new = pulled(arg)
            assert new is None or (isinstance(new, Decision) and new.arch.method == name)
    assert all(torch.equal(after[k], v) for k, v in state(supernet).items()), \
        "a lever changed the supernet"

    # The JSON is the whole decision.
    text = arch.to_json()
    back = Architecture.from_json(text)
    assert back.network == arch.network and back.to_dict() == arch.to_dict()
    assert json.loads(text) == json.loads(back.to_json())

    # Materialize with the inherited weights; the JSON alone (no plugin) rebuilds the same net.
    net = check_runs(arch, space, x, decision.weights)
    rebuilt = build_network(back.network).eval()
    rebuilt.load_state_dict(net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), net(x), rtol=0, atol=0)

    # A short retrain moves the weights and keeps the outputs finite.
    trained_from = state(net)
    train(net, digits["x_train"], digits["y_train"], epochs=1, batch_size=16, seed=0)
    assert any(not torch.equal(v, net.state_dict()[k]) for k, v in trained_from.items()
               if v.is_floating_point())
    net.eval()

    # Export through the registered ONNX exporter; the runtime agrees with PyTorch.
    onnx = registry.exporters.get("onnx")
    reason = onnx.unavailable_reason()
    if reason is not None:
        pytest.skip(f"onnx exporter: {reason}")
    target = Target("onnxruntime", threads=1)
    meta = {"architecture": json.dumps(arch.network, sort_keys=True), "method": name}
    ectx = ExportContext(tmp_path, x[:1], target, meta)
    art = onnx().export(net, ectx)
    runner = onnx().runner(tmp_path, art, target)
    worst = verify_parity(net, runner, x, atol=onnx.parity_atol)
    assert math.isfinite(worst) and worst <= onnx.parity_atol


# --- weight sharing, random search in every space, budget response ------------------------------

BUILT_IN = [n for n in ENROLLED if n not in example_methods()]
SPACES = [n for n in BUILT_IN if n != "random"]  # the methods whose spaces random search samples


def built(name: str, options: dict | None = None):
    entry = next(e for e in registry.methods.entries() if e.name == name)
    assert entry.obj is not None, f"method {name!r} failed to load: {entry.error}"
    torch.manual_seed(0)
    method = entry.obj(OPTIONS.get(name) if options is None else options)
    return method, method.build(TASK)


@pytest.mark.parametrize("name", SPACES)
def test_shared_weights_are_the_supernets(name, digits):
    """``share`` gives the supernet's own tensors under ``inherit``'s names: the materialized
    subnet computes with them exactly what it computes with the inherited copies, and a
    backward through it reaches the supernet's parameters (how random search trains any
    space's supernet)."""
    method, supernet = built(name)
    space = method.space(supernet)
    if space.share is None:  # a method that trains every child from scratch: said clearly
        with pytest.raises(UsageError, match="shares no weights"):
            space.shared(space.largest())
        return
    x = digits["x"]
    arch = space.draw(random.Random(1)) if space.sample is not None else space.largest()
    copies = materialize(arch, space.weights(arch)).eval()
    live = space.shared(arch)
    assert live.keys() <= copies.state_dict().keys()
    net = materialize(arch).eval()
    with torch.no_grad():
        torch.testing.assert_close(torch.func.functional_call(net, live, (x,)), copies(x))
    supernet.zero_grad(set_to_none=True)
    torch.func.functional_call(net.train(), space.shared(arch), (x,)).square().mean().backward()
    grads = [p for p in supernet.parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert grads, "no supernet parameter received a gradient through the shared weights"


@pytest.mark.parametrize("space_name", SPACES)
def test_random_search_samples_every_space(space_name, digits):
    """``random`` searches each built-in space: shared-weight training (or from-scratch children
    where the space shares no weights), scoring, a decision of that space whose inherited weights
    load into its materialized net."""
    options = {"space": space_name, "space_options": OPTIONS.get(space_name, {}), "samples": 3,
               "score_images": 32, "child_steps": 2}
    method, supernet = built("random", options)
    space = method.space(supernet)
    ctx = SearchContext(data=digits["search"], epochs=1, seed=0, batch_size=16)
    searched = method.search(supernet, ctx)
    assert len(searched.candidates) == 3
    decision = method.decide(supernet, searched)
    assert decision.arch.method == "random"
    assert decision.arch.decisions["random"]["space"] == space_name
    space.check(decision.arch, "random")
    net = check_runs(decision.arch, space, digits["x"], decision.weights)
    assert decision.weights and set(decision.weights) <= set(net.state_dict())


def _estimate(method, supernet) -> FlopsProxy:
    """A MACs proxy anchored on the space's largest (1 ms) and smallest (0.1 ms) subnets."""
    space = method.space(supernet)
    anchors = []
    for arch, ms in ((space.largest(), 1.0), (space.smallest(), 0.1)):
        net = build_network(arch.network)
        anchors.append((count_macs(net, net.example_input(1)), ms))
    return FlopsProxy(anchors)


# Search epochs and options for the budget test: enough search for the budget to act.
BUDGET_EPOCHS = {"dsonas": 3, "densenas": 3, "tfnas": 3}


@pytest.mark.parametrize("name", BUILT_IN)
def test_a_tighter_budget_decides_a_smaller_architecture(name, digits):
    """Same seed and data: a budget at 0.4 of the largest subnet's estimated latency decides an
    architecture with a smaller estimate than one at 0.8, before any width scaling."""
    estimates = {}
    for fraction in (0.4, 0.8):
        method, supernet = built(name)
        proxy = _estimate(method, supernet)
        budget = fraction * proxy.predict(method.space(supernet).largest().network)
        ctx = SearchContext(data=digits["search"], epochs=BUDGET_EPOCHS.get(name, 2), seed=0,
                            batch_size=16, budget_ms=budget, latency_model=proxy)
        decision = method.decide(supernet, method.search(supernet, ctx))
        assert decision.arch.width_multiplier == 1.0
        estimates[fraction] = proxy.predict(decision.arch.network)
    assert estimates[0.4] < estimates[0.8], estimates
