"""The ``folder`` dataset: a class-per-subfolder image tree, read with Pillow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import UsageError
from .datasets import (IMAGE_EXTENSIONS, IMAGE_FORMATS, SPLIT, Dataset, Progress, _finish,
                       _stratified_split)


def _list_folder(path: Path) -> tuple[list[Path], list[Path], list[int]]:
    """(class folders, image files, their labels) of a class-per-subfolder tree; nothing is
    opened."""
    class_dirs = sorted((p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")),
                        key=lambda p: p.name)
    exts = "/".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
    if not class_dirs:
        raise UsageError(f"image folder {str(path)!r} has no class subfolders; lay it out as "
                         f"DIR/<class>/<image>.{{{exts}}}")
    if len(class_dirs) < 2:
        raise UsageError(f"image folder {str(path)!r} has one class ({class_dirs[0].name!r}); "
                         f"classification needs at least 2 class subfolders")
    need = sum(1 for f in SPLIT if f > 0)
    files: list[Path] = []
    labels: list[int] = []
    for label, cdir in enumerate(class_dirs):
        images = sorted(p for p in cdir.rglob("*")
                        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                        and not any(part.startswith(".") for part in p.relative_to(cdir).parts))
        if not images:
            raise UsageError(f"class folder {str(cdir)!r} has no images ({exts}); add some or "
                             f"remove the folder")
        if len(images) < need:
            raise UsageError(f"class {cdir.name!r} has {len(images)} image(s) in {str(cdir)!r}; each "
                             f"class needs at least {need} (one each for train, val and test)")
        files.extend(images)
        labels.extend([label] * len(images))
    return class_dirs, files, labels


def _load_folder(path: Path, size: int, seed: int, progress: Progress | None) -> Dataset:
    class_dirs, files, labels = _list_folder(path)
    from PIL import Image, UnidentifiedImageError  # imported here: only this loader needs Pillow

    pixels = np.empty((len(files), size, size, 3), dtype=np.uint8)
    bar = progress(total=len(files), desc="reading images") if progress else None
    try:
        for i, f in enumerate(files):
            fmt = IMAGE_FORMATS[f.suffix.lower()]
            try:
                with Image.open(f, formats=[fmt]) as im:
                    im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale (>= size)
                    im = im.convert("RGB")
                    if im.size != (size, size):
                        im = im.resize((size, size), Image.BILINEAR)
                    pixels[i] = np.asarray(im, dtype=np.uint8)
            except UnidentifiedImageError:
                raise UsageError(f"image {str(f)!r} is not a {fmt} image, the one format its "
                                 f"extension is decoded as; replace, convert or delete "
                                 f"it") from None
            except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
                raise UsageError(f"cannot read image {str(f)!r} ({type(exc).__name__}: {exc}); "
                                 f"replace or delete it") from None
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()

    y = np.asarray(labels, dtype=np.int64)
    # NCHW in uint8 first: a float copy of the channels-last view would be split and then made
    # contiguous again, twice the float memory
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous().float().div_(255.0)
    splits = _stratified_split(y, SPLIT, seed)
    return _finish(f"folder:{path.resolve()}", x, y, splits, [d.name for d in class_dirs], seed,
                   "stratified 70/15/15 train/val/test")
