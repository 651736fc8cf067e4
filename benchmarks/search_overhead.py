"""What does DSO-NAS's search cost over plain training of the same supernet?

Times one search epoch (a W step on each W-split batch plus, per the configured ratio, a λ step
with the proximal update on a λ-split batch) against one plain training epoch (W steps only, same
batches) of the same supernet on digits, interleaved, several repeats. Final line:
``search_overhead: X.XXx (median search epoch / median plain epoch)``.

    python benchmarks/search_overhead.py [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_line  # noqa: E402

from nas2deploy.data import load_dataset  # noqa: E402
from nas2deploy.method import TaskSpec  # noqa: E402
from nas2deploy.registry import methods  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from nas2deploy_plugins.dsonas.search import Searcher  # the plugin's own step functions

    ds = load_dataset("digits", input_size=32, seed=0)
    method = methods.get("dsonas")()
    net = method.build(TaskSpec(ds.channels, ds.input_size, ds.num_classes))
    searcher = Searcher(net, method.config)
    half = len(ds.x_train) // 2
    xw, yw, xa, ya = ds.x_train[:half], ds.y_train[:half], ds.x_train[half:], ds.y_train[half:]
    bs, ratio = args.batch_size, method.config.w_steps_per_arch_step
    idx = [torch.arange(i, min(i + bs, half)) for i in range(0, half, bs)]

    def plain_epoch() -> float:
        t = time.perf_counter()
        for b in idx:
            searcher.weight_step(xw[b], yw[b])
        return time.perf_counter() - t

    def search_epoch() -> float:
        t = time.perf_counter()
        for i, b in enumerate(idx):
            searcher.weight_step(xw[b], yw[b])
            if (i + 1) % ratio == 0:
                a = b[b < len(xa)]
                searcher.arch_step(xa[a], ya[a])
        return time.perf_counter() - t

    plain_epoch()  # warm-up: allocator, first-call overheads
    plain, search = [], []
    for _ in range(args.repeats):
        plain.append(plain_epoch())
        search.append(search_epoch())
    print(machine_line())
    print(f"# dsonas default space, {sum(p.numel() for p in searcher.a_params)} edges, "
          f"{half} W-split images, batch {bs}, W:λ steps {ratio}:1, {args.threads} threads")
    print(f"plain epoch  s: {' '.join(f'{t:.2f}' for t in plain)}  median {statistics.median(plain):.2f}")
    print(f"search epoch s: {' '.join(f'{t:.2f}' for t in search)}  median {statistics.median(search):.2f}")
    ratios = [s / p for s, p in zip(search, plain)]
    print(f"# per-repeat ratios: {' '.join(f'{r:.2f}' for r in ratios)}")
    print(f"search_overhead: {statistics.median(search) / statistics.median(plain):.2f}x "
          f"(median search epoch / median plain epoch)")


if __name__ == "__main__":
    main()
