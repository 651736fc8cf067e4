"""benchmarks/scale.py part (c), on a CUDA GPU: a TF-NAS search epoch on 32-px CIFAR-size data.

1. images/s of the search epoch in fp32 and with AMP (bf16 where the GPU has it, else fp16),
   the batches already on the GPU;
2. the same epoch (AMP) fed by the streamed DataLoader (uint8 CIFAR-10-format arrays, pad-crop
   and flip in the workers, normalised on the GPU) against the tensors already on the GPU: the
   loader should keep >= 90% of that pace;
3. the projected time of a full CIFAR-10 search and retrain at the defaults (TF-NAS's default
   search epochs over the 25,000-image weight split, 12 retrain epochs over 45,000 images at
   the retrain's measured pace), with a goal of <= 1 hour on one H100.

The default TF-NAS space, batch 64 (the search's), random-content images in CIFAR-10's own
format (``--images``, 50,000 + 10,000 by default). Each figure is the median of ``--repeats``
epochs after one warm-up epoch; all in one run, side by side. ``--device cpu --images 600`` runs
the same code on a CPU (a check of the script, not a figure to quote).

    python benchmarks/gpu_scale.py [--device cuda] [--images 50000] [--repeats 3] [--workers 6]
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_line  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--images", type=int, default=50_000, help="training images (CIFAR-10: 50000)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=6)
    args = ap.parse_args()
    from nas2deploy import registry
    from nas2deploy.data import open_dataset
    from nas2deploy.device import Compute, resolve
    from nas2deploy.materialize import materialize
    from nas2deploy.method import SearchContext, SearchData, TaskSpec
    from nas2deploy.train import fit

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("gpu_scale: no CUDA GPU visible to torch; nothing to measure here")
    fp32 = resolve(args.device, "off")
    amp = resolve(args.device, "auto") if fp32.device.type == "cuda" else fp32
    print(machine_line())
    print(f"# device {fp32.device}"
          + (f" ({torch.cuda.get_device_name(fp32.device)}), AMP {amp.amp}"
             if fp32.device.type == "cuda" else " (a check of the script only)"))
    amp.prepare()
    with tempfile.TemporaryDirectory(prefix="nas2deploy-gpu-scale-") as tmp:
        folder = _cifar(Path(tmp), args.images)
        splits = open_dataset(f"cifar10:{folder}", input_size=32, seed=0, augment="standard")
        method = registry.methods.get("tfnas")()
        epochs = method.default_search_epochs

        def search_epoch(data, compute: Compute) -> float:
            """images/s of one search epoch (1 warm-up + 1 search: the search's own steps)."""
            torch.manual_seed(0)
            net = method.build(TaskSpec(3, 32, 10)).to(compute.device,
                                                        memory_format=torch.channels_last)
            ctx = SearchContext(data=data, epochs=2, seed=0, compute=compute)
            t = time.perf_counter()
            method.search(net, ctx)
            if compute.device.type == "cuda":
                torch.cuda.synchronize()
            return 2 * data.size("weights") / (time.perf_counter() - t)

        streamed = splits.search_data(0, device=amp.device, workers=args.workers)
        with streamed:
            # the same images, normalised once, already on the device
            parts = {name: next(iter(streamed.ordered(name, batch_size=10 ** 9)))
                     for name in ("weights", "arch", "val")}
            resident = SearchData(*parts["weights"], *parts["arch"], *parts["val"],
                                  device=amp.device)
            rates = {"fp32": [], "amp": [], "loader": []}
            search_epoch(resident, amp)  # warm-up: cuDNN autotuning, allocator
            for _ in range(args.repeats):  # interleaved, so drift hits all three alike
                rates["fp32"].append(search_epoch(resident, fp32))
                rates["amp"].append(search_epoch(resident, amp))
                rates["loader"].append(search_epoch(streamed, amp))
        med = {k: statistics.median(v) for k, v in rates.items()}
        sub = materialize(method.space(method.build(TaskSpec(3, 32, 10))).largest())
        sub.to(amp.device, memory_format=torch.channels_last)
        history: list[dict] = []
        with splits.batches(device=amp.device, workers=args.workers) as batches:
            fit(sub, batches, epochs=2, history=history, compute=amp)
        retrain = history[-1]["images_per_s"]
    w = 25_000  # CIFAR-10's weight split of a search (half of 50,000)
    hours = (epochs * w / med["amp"] + 12 * 45_000 / retrain) / 3600
    print(f"search epoch (TF-NAS default space, batch 64): fp32 {med['fp32']:.0f} img/s, "
          f"AMP {med['amp']:.0f} img/s ({med['amp'] / med['fp32']:.2f}x); fed by the DataLoader "
          f"({args.workers} workers) {med['loader']:.0f} img/s = "
          f"{med['loader'] / med['amp']:.0%} of the resident pace (goal >= 90%)")
    print(f"retrain (largest subnet, AMP): {retrain:.0f} img/s; projected CIFAR-10: "
          f"{epochs} search epochs + 12 retrain epochs = {hours:.2f} h (goal <= 1 h)")
    print(f"gpu_scale: search fp32 {med['fp32']:.0f} / AMP {med['amp']:.0f} img/s, loader "
          f"{med['loader'] / med['amp']:.0%} of resident, projected {hours:.2f} h")


def _cifar(work: Path, n: int) -> Path:
    folder = work / "cifar"
    folder.mkdir()
    rng = np.random.default_rng(0)
    per = max(2, n // 5)
    for name, k in [(f"data_batch_{i}", per) for i in range(1, 6)] + [("test_batch", per)]:
        with open(folder / name, "wb") as f:  # CIFAR-10's own python batch format
            pickle.dump({b"labels": [int(v) for v in rng.integers(0, 10, k)],
                         b"data": rng.integers(0, 256, (k, 3072), dtype=np.uint8)}, f)
    return folder


if __name__ == "__main__":
    main()
