"""Does nas2deploy scale? (a) CPU images/s of a search and a retrain epoch; (b) peak memory of
streaming folder datasets of growing size; (c) the GPU figures are gpu_check.sh's; (d) images/s
with 1 and 2 processes under torchrun; (e) the time from a kill -9 to resumed progress
(``benchmarks/_processes.py``).

(a) writes a CIFAR-10-format dataset (``--cpu-images``, random content), streams it (uint8,
pad-crop + flip, 2 workers) through a TF-NAS search of 1 warm-up + 1 search epoch of the default
space, then one retrain epoch of the space's largest subnet.

(b) makes synthetic folder datasets (10 classes of random-content 256x256 JPEGs; 1k, 4k and 16k
images by default, generated once and shared through hard links), then for each, in a fresh
subprocess, opens it with ``open_dataset`` at input size 224 and runs one full train epoch
through ``make_loader`` (2 workers, batch 64, standard augmentation). Each subprocess reports
its peak RSS (``getrusage`` RUSAGE_SELF, plus the largest worker's VmHWM) and images/s. Final
line: ``folder_rss: 1k A MB, 4k B MB, 16k C MB (max/min X.XXx)``.

    python benchmarks/scale.py [--only a|b|d|e] [--cpu-images N] [--sizes 1000,4000,16000]
                               [--keep DIR] [--dataset SPEC]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import isa_line, machine_line  # noqa: E402

CLASSES = 10
IMAGE_SIDE = 256
INPUT_SIZE = 224
BATCH = 64
WORKERS = 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,4000,16000",
                    help="images per dataset, comma-separated (default 1000,4000,16000)")
    ap.add_argument("--keep", metavar="DIR",
                    help="make (or reuse) the image folders in DIR instead of a temporary one")
    ap.add_argument("--cpu-images", type=int, default=6000,
                    help="CIFAR-format images for (a), the CPU search/retrain throughput")
    ap.add_argument("--only", choices=["a", "b", "d", "e"], help="run one part")
    ap.add_argument("--dataset", default="digits", help="dataset of (d) and (e)")
    ap.add_argument("--child", metavar="DIR", help=argparse.SUPPRESS)  # one measured run
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_measure(Path(args.child))))
        return
    try:
        sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    except ValueError:
        sys.exit(f"--sizes takes comma-separated integers, not {args.sizes!r}")
    if not sizes or min(sizes) < 3 * CLASSES:
        sys.exit(f"--sizes: each dataset needs at least {3 * CLASSES} images (3 per class)")
    print(machine_line())
    print(isa_line())
    with tempfile.TemporaryDirectory(prefix="nas2deploy-scale-") as tmp:
        last = []
        if args.only in (None, "a"):
            last.append(throughput(Path(tmp), args.cpu_images))
        if args.only in (None, "b"):
            folder_rss(sizes, Path(args.keep).expanduser() if args.keep else Path(tmp))
            last.append(_last_line)
        if args.only in (None, "d", "e"):
            from _processes import kill_to_resume, processes

            if args.only in (None, "d"):
                last.append(processes(Path(tmp), args.dataset))
            if args.only in (None, "e"):
                last.append(kill_to_resume(Path(tmp), args.dataset))
    print("# (c), the GPU figures, needs a CUDA GPU: see benchmarks/gpu_check.sh"
          if not _cuda() else "# (c): see benchmarks/gpu_check.sh")
    if last:
        print("; ".join(last))


_last_line = ""


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# --------------------------------------------------------------------------------------------
# (a) images/s of a search epoch and of a retrain epoch on this CPU


def throughput(work: Path, n: int) -> str:
    import pickle

    import torch

    from nas2deploy import registry
    from nas2deploy.data import open_dataset
    from nas2deploy.materialize import materialize
    from nas2deploy.method import SearchContext, TaskSpec
    from nas2deploy.train import fit

    folder = work / "cifar"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    per = max(2, n // 6)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:  # CIFAR-10's own python batch format
            pickle.dump({b"labels": [int(v) for v in rng.integers(0, 10, per)],
                         b"data": rng.integers(0, 256, (per, 3072), dtype=np.uint8)}, f)
    splits = open_dataset(f"cifar10:{folder}", input_size=32, seed=0, augment="standard")
    method = registry.methods.get("tfnas")()
    net = method.build(TaskSpec(3, 32, 10))
    torch.set_num_threads(os.cpu_count() or 1)
    with splits.search_data(0, workers=WORKERS) as data:
        ctx = SearchContext(data=data, epochs=2, seed=0)
        t = time.perf_counter()
        method.search(net, ctx)
        search_s = time.perf_counter() - t
        search_rate = 2 * data.size("weights") / search_s
    sub = materialize(method.space(net).largest())
    history: list[dict] = []
    with splits.batches(workers=WORKERS) as batches:
        fit(sub, batches, epochs=1, history=history)
    retrain_rate = history[-1]["images_per_s"]
    print(f"# (a) TF-NAS default space, CIFAR-10 format {len(splits.train)} train images at 32 px "
          f"(streamed uint8, pad-crop + flip, {WORKERS} workers), {torch.get_num_threads()} "
          f"threads")
    print(f"search: 1 warm-up + 1 search epoch over {data.size('weights')} weight-split images "
          f"in {search_s:.1f} s, {search_rate:.0f} img/s; retrain (largest subnet): "
          f"{retrain_rate:.0f} img/s")
    return f"cpu_throughput: search {search_rate:.0f} img/s, retrain {retrain_rate:.0f} img/s"


# --------------------------------------------------------------------------------------------
# (b) folder datasets: peak RSS against the number of images


def folder_rss(sizes: list[int], work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    pool = _make_pool(work / "pool", -(-max(sizes) // CLASSES))
    print(f"# images: {CLASSES} classes of random-content {IMAGE_SIDE}x{IMAGE_SIDE} JPEGs in "
          f"{work} (ready in {time.perf_counter() - t:.0f} s); input {INPUT_SIZE}, batch {BATCH}, "
          f"{WORKERS} workers, augment standard")
    peaks = {}
    for n in sizes:
        folder = _link_subset(pool, work / f"n{n}", n)
        out = subprocess.run([sys.executable, __file__, "--child", str(folder)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"the run on {n} images failed:\n{out.stderr.strip()}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        peaks[n] = r["self_mb"] + r["children_mb"]
        print(f"folder {_label(n)}: {r['train']} train images, open {r['open_s']:.1f} s, epoch "
              f"{r['epoch_s']:.1f} s, {r['images_per_s']:.0f} img/s, peak RSS main "
              f"{r['self_mb']:.0f} MB + largest worker {r['children_mb']:.0f} MB = "
              f"{peaks[n]:.0f} MB")
    global _last_line
    ratio = max(peaks.values()) / min(peaks.values())
    _last_line = ("folder_rss: " + ", ".join(f"{_label(n)} {mb:.0f} MB" for n, mb in peaks.items())
                  + f" (max/min {ratio:.2f}x)")
    print(_last_line)


def _label(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def _make_pool(pool: Path, per_class: int) -> Path:
    """``per_class`` JPEGs in each of ``CLASSES`` folders, made once (kept ones are reused):
    smooth random colour fields plus noise, so they decode like photos, not like flat fills."""
    from PIL import Image

    for c in range(CLASSES):
        cdir = pool / f"class{c:02d}"
        cdir.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            path = cdir / f"{i:06d}.jpg"
            if path.exists():
                continue
            rng = np.random.default_rng([c, i])
            field = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
            field = np.asarray(field.resize((IMAGE_SIDE, IMAGE_SIDE), Image.BICUBIC), np.int16)
            noise = rng.integers(-12, 13, field.shape, dtype=np.int16)
            pixels = np.clip(field + noise, 0, 255).astype(np.uint8)
            tmp = path.with_suffix(".tmp")
            Image.fromarray(pixels).save(tmp, format="JPEG", quality=85)
            os.replace(tmp, path)  # a kept pool never holds half a file
    return pool


def _link_subset(pool: Path, folder: Path, n: int) -> Path:
    """``folder`` with the first n / CLASSES images of each pool class, hard-linked."""
    per_class = n // CLASSES
    for c in range(CLASSES):
        cdir = folder / f"class{c:02d}"
        cdir.mkdir(parents=True, exist_ok=True)
        want = {f"{i:06d}.jpg" for i in range(per_class)}
        for old in cdir.iterdir():
            if old.name not in want:
                old.unlink()
        for name in sorted(want):
            dst = cdir / name
            if not dst.exists():
                try:
                    os.link(pool / cdir.name / name, dst)
                except OSError:  # another file system: copy instead
                    dst.write_bytes((pool / cdir.name / name).read_bytes())
    return folder


def _measure(folder: Path) -> dict:
    from nas2deploy.data import make_loader, open_dataset

    t = time.perf_counter()
    splits = open_dataset(f"folder:{folder}", input_size=INPUT_SIZE, seed=0)
    open_s = time.perf_counter() - t
    from nas2deploy.data.loaders import shutdown

    loader = make_loader(splits.train, batch_size=BATCH, shuffle=True, seed=0, workers=WORKERS)
    seen = 0
    t = time.perf_counter()
    for x, y in loader:
        seen += len(y)
    epoch_s = time.perf_counter() - t
    # workers start from a fork server, so they are not this process's children: read their
    # peak (VmHWM) while they are alive
    workers = [w.pid for w in getattr(loader._iterator, "_workers", [])]
    worker_mb = max((_vm_hwm_mb(pid) for pid in workers), default=0.0)
    shutdown(loader)
    del loader, x, y
    gc.collect()
    kb = 1024  # ru_maxrss is in KiB on Linux
    return {"train": seen, "open_s": open_s, "epoch_s": epoch_s,
            "images_per_s": seen / epoch_s,
            "self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kb / 1e6,
            "children_mb": worker_mb}


def _vm_hwm_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return 0.0


if __name__ == "__main__":
    main()
