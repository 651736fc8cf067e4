"""``fit`` ends with BN statistics of its final weights; ``Batches.ordered(spread=True)`` takes a
limited subset from the whole split."""

from __future__ import annotations

import torch
from torch import nn

from nas2deploy.data.searchdata import Batches, spread_indices
from nas2deploy.ops import Sum
from nas2deploy.train import accuracy, fit, recalibrate_bn


class Probe(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def _data(n: int = 96) -> Batches:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 6, 6, generator=g) * 3 + 1
    y = torch.randint(0, 3, (n,), generator=g)
    return Batches.in_memory({"train": (x, y), "val": (x[:32], y[:32])})


def _channel_means(net: Probe, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net.conv(x).mean((0, 2, 3))


def test_fit_leaves_the_bn_statistics_of_its_final_weights():
    data = _data()
    x = data._tensors("train")[0]
    torch.manual_seed(0)
    net, rows = Probe(), []
    fit(net, data, epochs=2, lr=0.2, batch_size=16, history=rows)
    # the plain mean over the training images (each 16-image batch's mean, averaged), taken
    # with the weights training ended with
    assert torch.allclose(net.bn.running_mean, _channel_means(net, x), atol=1e-5)
    assert rows[-1]["val_acc"] == accuracy(net, data.ordered("val"))

    torch.manual_seed(0)
    lagging = Probe()
    fit(lagging, data, epochs=2, lr=0.2, batch_size=16, recalibrate=0)
    # the same training (recalibration touches no parameter), but the running averages lag
    assert torch.equal(lagging.conv.weight, net.conv.weight)
    assert not torch.allclose(lagging.bn.running_mean, _channel_means(lagging, x), atol=1e-3)


def test_recalibration_turns_drop_path_off_and_restores_its_schedule():
    class Paths(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm2d(1)
            self.sum = Sum(drop_path=[0.9, 0.0])

        def forward(self, x):
            return self.bn(self.sum(x, torch.zeros_like(x)))

    net = Paths()
    net.sum.schedule(1.0)
    x = torch.ones(64, 1, 2, 2)
    assert recalibrate_bn(net, [(x, None)], max_images=64) == 64
    # with the drop on, about 90% of the samples would be zeros (or 10x) and the mean not 1
    assert torch.allclose(net.bn.running_mean, torch.ones(1))
    assert net.sum.progress == 1.0 and net.bn.momentum is not None


def test_spread_takes_every_kth_image_of_the_whole_split():
    assert spread_indices(10, 5) == [0, 2, 4, 6, 8]
    assert spread_indices(7, 7) == list(range(7))
    assert len(set(spread_indices(1000, 333))) == 333
    # a split in dataset order, class by class (as a folder dataset's): its first images are
    # one class, a spread subset holds every class
    y = torch.arange(10).repeat_interleave(20)
    data = Batches.in_memory({"train": (torch.randn(200, 1, 2, 2), y)})
    first = torch.cat([yb for _, yb in data.ordered("train", 4, limit=10)])
    spread = torch.cat([yb for _, yb in data.ordered("train", 4, limit=10, spread=True)])
    assert first.tolist() == [0] * 10
    assert spread.tolist() == list(range(10))
