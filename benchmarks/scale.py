"""Does the data layer scale? (b): peak memory of streaming folder datasets of growing size.

Makes synthetic folder datasets (10 classes of random-content 256x256 JPEGs; 1k, 4k and 16k
images by default, generated once and shared through hard links), then for each, in a fresh
subprocess, opens it with ``open_dataset`` at input size 224 and runs one full train epoch
through ``make_loader`` (2 workers, batch 64, standard augmentation). Each subprocess reports
its peak RSS (``getrusage``: RUSAGE_SELF, and RUSAGE_CHILDREN for the largest worker) and
images/s. Final line: ``folder_rss: 1k A MB, 4k B MB, 16k C MB (max/min X.XXx)``, each figure
the main process's peak plus the largest worker's.

    python benchmarks/scale.py [--sizes 1000,4000,16000] [--keep DIR]
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
    if args.keep:
        folder_rss(sizes, Path(args.keep).expanduser())
    else:
        with tempfile.TemporaryDirectory(prefix="nas2deploy-scale-") as tmp:
            folder_rss(sizes, Path(tmp))


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
    ratio = max(peaks.values()) / min(peaks.values())
    print("folder_rss: " + ", ".join(f"{_label(n)} {mb:.0f} MB" for n, mb in peaks.items())
          + f" (max/min {ratio:.2f}x)")


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
    loader = make_loader(splits.train, batch_size=BATCH, shuffle=True, seed=0, workers=WORKERS)
    seen = 0
    t = time.perf_counter()
    for x, y in loader:
        seen += len(y)
    epoch_s = time.perf_counter() - t
    del loader, x, y
    gc.collect()  # the persistent workers exit and are waited for: RUSAGE_CHILDREN counts them
    kb = 1024  # ru_maxrss is in KiB on Linux
    return {"train": seen, "open_s": open_s, "epoch_s": epoch_s,
            "images_per_s": seen / epoch_s,
            "self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kb / 1e6,
            "children_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * kb / 1e6}


if __name__ == "__main__":
    main()
