"""GPU paths: run for real where CUDA exists, skip with the reason where it does not."""

import copy

import pytest
import torch

from nas2deploy.latency import measure
from nas2deploy.exporter import torch_runner, verify_parity
from nas2deploy.netspec import build_network
from nas2deploy.runtime import measure_model
from nas2deploy.target import Target

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible")]

SPEC = {"input": {"channels": 3, "size": [32, 32]}, "num_classes": 10,
        "nodes": [{"id": "stem", "op": "conv", "inputs": ["input"], "c_in": 3, "c_out": 16},
                  {"id": "mb", "op": "mbconv", "inputs": ["stem"], "c_in": 16, "c_out": 16,
                   "mid": 48, "k": 5, "se": 8},
                  {"id": "head", "op": "head", "inputs": ["mb"], "c_in": 16, "num_classes": 10}],
        "output": "head"}


def test_torch_cuda_runner_matches_cpu_and_is_timed():
    net = build_network(SPEC).eval()
    x = torch.randn(4, 3, 32, 32)
    run = torch_runner(copy.deepcopy(net), 1, "cuda")  # the runner moves its model to the GPU
    assert verify_parity(net, run, x, atol=1e-3) <= 1e-3
    rep = measure(run, x.numpy(), batch=4)
    assert 0 < rep.p50_ms <= rep.p90_ms


def test_measure_model_on_torch_cuda_target():
    rep = measure_model(build_network(SPEC), Target.parse("torch:cuda", batch=8), (8, 3, 32, 32))
    assert rep.runs >= 30 and rep.p50_ms > 0
