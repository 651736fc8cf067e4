"""Training, fine-tuning and evaluation of a (sub)network: on in-memory tensors, or on the
batches of ``nas2deploy.data.searchdata.Batches`` (in memory or streamed) on a device."""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .data.searchdata import Batches, epoch_batches  # noqa: F401  (epoch_batches: re-exported)
from .distributed import SINGLE, World, broadcast_

# Images ``fit`` re-estimates BN statistics on once training ends (0: not at all).
RECALIBRATE_IMAGES = 2048


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


def accuracy(model: nn.Module, x: Any, y: torch.Tensor | None = None) -> float:
    """Top-1 of ``model`` in eval mode, on tensors ``x``, ``y`` or on an iterable of ``(x, y)``
    batches (``Batches.ordered``); NaN when there is nothing to score."""
    if y is not None:
        if len(x) == 0:
            return float("nan")
        return float((predict(model, x).argmax(1) == y).float().mean())
    was = model.training
    model.eval()
    correct = total = 0
    try:
        with torch.no_grad():
            for xb, yb in x:
                correct += int((model(xb).argmax(1) == yb).sum())
                total += len(yb)
    finally:
        model.train(was)
    return correct / total if total else float("nan")


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
    """``fit`` on in-memory tensors (``x_val``/``y_val``: scored after each epoch)."""
    splits = {"train": (x, y)}
    if x_val is not None and y_val is not None:
        splits["val"] = (x_val, y_val)
    return fit(model, Batches.in_memory(splits, device=x.device), epochs=epochs, lr=lr,
               batch_size=batch_size, weight_decay=weight_decay, seed=seed, progress=progress,
               desc=desc, history=history, label_smoothing=label_smoothing)


def fit(model: nn.Module, data: Any, *, epochs: int, lr: float = 0.05, batch_size: int = 64,
        weight_decay: float = 1e-4, seed: int = 0, progress: Callable[..., Any] | None = None,
        desc: str = "train", history: list[dict[str, Any]] | None = None,
        label_smoothing: float = 0.0, compute: Any = None, split: str = "train",
        val_split: str | None = "val", world: World = SINGLE, checkpoints: Any = None,
        log: Callable[[str], None] = lambda m: None,
        recalibrate: int = RECALIBRATE_IMAGES) -> float:
    """SGD (Nesterov, momentum 0.9) with a cosine schedule over ``data``'s ``split`` (a
    ``Batches``, on its device), scored on ``val_split`` after each epoch where it has one;
    ``compute`` (``nas2deploy.device.Compute``): mixed precision. Returns seconds spent.

    ``world`` (a data-parallel run): ``data`` is sharded and the model is trained through
    ``DistributedDataParallel`` (which starts every rank from rank 0's weights).
    ``checkpoints`` (``nas2deploy.checkpoint.Loop``): the state after every epoch (weights,
    optimizer, schedule, loss scale, generator, history rows), and a resume from the last one.

    One history row per epoch: {"epoch", "phase", "loss", "train_acc", "val_acc",
    "images_per_s"}.

    ``recalibrate``: once training ends, BN running statistics are re-estimated on that many
    training images spread over the split, without augmentation (``recalibrate_bn``), and the
    last row's ``val_acc`` is scored again with them; 0 keeps the running averages.

    Every module of ``model`` with a ``schedule(fraction)`` method (``ops.Sum`` with drop path)
    is told the training progress, step / steps in [0, 1), before each step; the fraction is
    derived from the epoch and the batch index, so a resumed fit schedules exactly as an
    uninterrupted one.
    """
    if epochs <= 0:
        return 0.0
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                          weight_decay=weight_decay)
    steps = epochs * data.n_batches(split, batch_size, drop_single=False)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    autocast = compute.autocast if compute is not None else contextlib.nullcontext
    scaler = compute.scaler() if compute is not None else None
    rows: list[dict[str, Any]] = []
    start = 0
    scheduled = [m for m in model.modules() if callable(getattr(m, "schedule", None))]
    per_epoch = steps // epochs
    loaded = checkpoints.load(log) if checkpoints is not None else None
    if loaded is not None:
        start, state = loaded
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["schedule"])
        gen.set_state(state["generator"].get_state())
        data.load_state(state["data"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        rows = list(state["history"])
    trained = model
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        dev = next(model.parameters()).device
        trained = DistributedDataParallel(model, device_ids=[dev] if dev.type == "cuda" else None)
    bar = progress(total=steps, desc=desc) if progress else None
    if bar is not None and start:
        bar.update(start * (steps // epochs))
    t0 = time.perf_counter()
    try:
        for epoch in range(start, epochs):
            trained.train()
            total, correct, loss_sum = 0, 0, 0.0
            t_epoch = time.perf_counter()
            for i, (xb, yb) in enumerate(data.epoch(split, batch_size, gen, drop_single=False)):
                for m in scheduled:
                    m.schedule(min((epoch * per_epoch + i) / steps, 1.0))
                with autocast():
                    out = trained(xb)
                    loss = F.cross_entropy(out, yb, label_smoothing=label_smoothing)
                opt.zero_grad(set_to_none=True)
                if scaler is not None and scaler.is_enabled():
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                else:
                    loss.backward()
                    opt.step()
                sched.step()
                loss_sum += loss.item() * len(yb)
                correct += int((out.argmax(1) == yb).sum())
                total += len(yb)
                if bar is not None:
                    bar.update(1)
            if world.distributed:  # BN statistics of each rank's shard: rank 0's go on
                broadcast_(model.buffers(), world)
            row = {"epoch": epoch, "phase": desc, "loss": loss_sum / total,
                   "train_acc": correct / total,
                   "images_per_s": total * world.size / max(time.perf_counter() - t_epoch, 1e-9)}
            if val_split in data.splits:
                row["val_acc"] = accuracy(model, data.ordered(val_split))
            if bar is not None:
                bar.set_postfix(loss=f"{row['loss']:.3f}",
                                val_acc=f"{row.get('val_acc', float('nan')):.3f}")
            rows.append(row)
            if checkpoints is not None:
                checkpoints.save(epoch + 1, {
                    "model": model.state_dict(), "optimizer": opt.state_dict(),
                    "schedule": sched.state_dict(), "generator": gen, "data": data.state(),
                    "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled()
                    else {}, "history": rows})
    finally:
        if bar is not None:
            bar.close()
    if recalibrate > 0:
        seen = recalibrate_bn(model, data.ordered(split, batch_size, limit=recalibrate, spread=True),
                              recalibrate, autocast)
        if seen and world.distributed:  # every rank saw the same images; rank 0's go on exactly
            broadcast_(model.buffers(), world)
        if seen and rows and val_split in data.splits:
            before = rows[-1].get("val_acc", float("nan"))
            rows[-1]["val_acc"] = accuracy(model, data.ordered(val_split))
            log(f"{desc}: BN statistics re-estimated on {seen} training images (val_acc "
                f"{before:.3f} -> {rows[-1]['val_acc']:.3f})")
    if history is not None:
        history.extend(rows)
    return time.perf_counter() - t0


@contextlib.contextmanager
def batch_statistics(net: nn.Module) -> Iterator[None]:
    """Forward with BN on each batch's own statistics, updating nothing (no running statistics,
    no counters): how a child is scored on shared weights trained under other children, whose
    running statistics mix every path the supernet trained (ENAS scores its children so)."""
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    was = [(m.training, m.track_running_stats) for m in bns]
    try:
        for m in bns:
            m.train()
            m.track_running_stats = False
        yield
    finally:
        for m, (training, track) in zip(bns, was):
            m.train(training)
            m.track_running_stats = track


@torch.no_grad()
def recalibrate_bn(net: nn.Module, batches, max_images: int = 256,
                   autocast: Callable[[], Any] = contextlib.nullcontext) -> int:
    """Re-estimate every BN's running mean/var as the plain average over ``batches``
    (``(x, y)``, at most ``max_images`` images; a batch of one is skipped), in train mode with
    no gradients and parameters untouched. Returns the images seen (0: nothing changed).

    Running averages lag the weights they describe: with momentum 0.1 they are mostly the last
    few dozen steps', taken at learning rates that still moved the weights. A short fine-tune
    (two epochs of a net at 16 px) scored 0.2-0.5 top-1 in eval mode and 0.91-0.96 in train
    mode on the same images; re-estimated statistics scored 0.91-0.96 in eval mode. Drop path
    (a module with ``schedule``) is off meanwhile: statistics are for the eval-mode net.
    """
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or max_images <= 0:
        return 0
    momenta = [m.momentum for m in bns]
    was = net.training
    scheduled = [m for m in net.modules() if callable(getattr(m, "schedule", None))]
    drops = [getattr(m, "progress", None) for m in scheduled]
    seen = 0
    try:
        for x, _ in batches:
            if seen == 0:  # the first batch exists: reset only then (an empty split keeps them)
                for m in bns:
                    m.reset_running_stats()
                    m.momentum = None  # cumulative average over the batches below
                for m in scheduled:
                    m.schedule(0.0)
                net.train()
            x = x[: max_images - seen]
            if len(x) >= 2:
                with autocast():
                    net(x)
                seen += len(x)
            if seen >= max_images:
                break
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        for m, progress in zip(scheduled, drops):
            if progress is not None:
                m.schedule(progress)
        net.train(was)
    return seen
