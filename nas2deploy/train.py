"""Training, fine-tuning and evaluation of a (sub)network on in-memory tensors."""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn


def batches(n: int, batch_size: int, generator: torch.Generator | None, shuffle: bool = True):
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for i in range(0, n, batch_size):
        yield order[i:i + batch_size]


def split_epochs(total: int, fraction: float) -> tuple[int, int]:
    """(first-phase epochs, search epochs) of a budget of ``total`` epochs, the first phase being
    ``fraction`` of it (pre-training, warm-up): at least one search epoch, and at least one
    first-phase epoch when ``fraction`` > 0 and the budget has room for both."""
    if total <= 0:
        return 0, 0
    first = int(math.floor(fraction * total + 0.5))
    if fraction > 0 and total >= 2:
        first = max(first, 1)
    first = min(first, total - 1)
    return first, total - first


def epoch_batches(n: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """One shuffled pass in batches; a trailing batch of one image is dropped (train-mode BN
    cannot normalise a batch of one)."""
    order = torch.randperm(n, generator=gen)
    out = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if len(out) > 1 and len(out[-1]) < 2:
        out.pop()
    return out


def cycle_batches(n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """``epoch_batches`` pass after pass, for a second data split stepped alongside the first."""
    while True:
        yield from epoch_batches(n, batch_size, gen)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    was = model.training
    model.eval()
    try:
        return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    finally:
        model.train(was)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    if len(x) == 0:
        return float("nan")
    return float((predict(model, x).argmax(1) == y).float().mean())


def reinitialize(model: nn.Module, seed: int) -> None:
    """Fresh weights (for ``--retrain-from scratch``): every module's own reset, seeded."""
    torch.manual_seed(seed)
    for m in model.modules():
        if hasattr(m, "reset_parameters") and m is not model:
            m.reset_parameters()


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float = 0.05,
          batch_size: int = 64, weight_decay: float = 1e-4, seed: int = 0,
          x_val: torch.Tensor | None = None, y_val: torch.Tensor | None = None,
          progress: Callable[..., Any] | None = None, desc: str = "train",
          history: list[dict[str, Any]] | None = None, label_smoothing: float = 0.0) -> float:
    """SGD (Nesterov, momentum 0.9) with a cosine schedule; returns seconds spent.

    One history row per epoch: {"epoch", "phase", "loss", "train_acc", "val_acc"}.
    """
    if epochs <= 0:
        return 0.0
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                          weight_decay=weight_decay)
    steps = epochs * math.ceil(len(x) / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    bar = progress(total=steps, desc=desc) if progress else None
    t0 = time.perf_counter()
    try:
        for epoch in range(epochs):
            model.train()
            total, correct, loss_sum = 0, 0, 0.0
            for idx in batches(len(x), batch_size, gen):
                xb, yb = x[idx], y[idx]
                out = model(xb)
                loss = F.cross_entropy(out, yb, label_smoothing=label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                loss_sum += loss.item() * len(idx)
                correct += int((out.argmax(1) == yb).sum())
                total += len(idx)
                if bar is not None:
                    bar.update(1)
            row = {"epoch": epoch, "phase": desc, "loss": loss_sum / total,
                   "train_acc": correct / total}
            if x_val is not None and y_val is not None:
                row["val_acc"] = accuracy(model, x_val, y_val)
            if bar is not None:
                bar.set_postfix(loss=f"{row['loss']:.3f}",
                                val_acc=f"{row.get('val_acc', float('nan')):.3f}")
            if history is not None:
                history.append(row)
    finally:
        if bar is not None:
            bar.close()
    return time.perf_counter() - t0
