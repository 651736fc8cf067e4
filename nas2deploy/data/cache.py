"""An optional on-disk uint8 cache of a folder dataset (``cache=DIR``), for repeated runs.

Each image is decoded once to the evaluation square (shorter-side resize to
``round(input_size / 0.875)``, centre crop) and stored as one row of an N×side×side×3 uint8
``.npy``, memory-mapped when read, so a run costs page cache, not process memory. A JSON index
beside it names the files it was made from (relative path, size, mtime) and the format; the
cache is used only while the index matches the folder and the array matches the index, and is
rebuilt otherwise. Writes are atomic: the array under a temporary name, renamed, and the index
written last, so a crash leaves either no index (rebuilt next time) or a whole cache.

Nothing here is a pickle: arrays are loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..env import open_bar, write_json_atomic
from ..errors import UsageError
from .datasets import Progress
from .loaders import default_workers, worker_context
from .transforms import open_rgb, square

FORMAT = "nas2deploy-folder-cache"
VERSION = 1
_BUILD_BATCH = 64


def check_cache_dir(cache_dir: str | Path) -> Path:
    """``cache_dir`` made if missing and checked writable (by writing to it: permission bits
    do not tell for root or on read-only mounts); one UsageError line if it cannot be."""
    d = Path(cache_dir).expanduser()
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=d)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"cache folder {str(d)!r} cannot be written ({exc.strerror or exc}); "
                         f"choose another --cache folder or fix its permissions") from None
    return d


def cache_paths(cache_dir: Path, root: Path, side: int) -> tuple[Path, Path]:
    """(array, index) paths of ``root``'s cache at ``side`` px in ``cache_dir``."""
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    stem = f"folder-{key}-{side}px"
    return cache_dir / f"{stem}.npy", cache_dir / f"{stem}.json"


def open_folder_cache(cache_dir: str | Path, root: Path, files: Sequence[Path], side: int, *,
                      input_size: int, workers: int | None = None,
                      progress: Progress | None = None) -> Path:
    """The path of a valid cache of ``files`` (under ``root``) at ``side`` px, built if there is
    none or it does not match; open it with ``np.load(path, mmap_mode="r")``."""
    d = check_cache_dir(cache_dir)
    array_path, index_path = cache_paths(d, root, side)
    listing = _listing(root, files)
    index = _read_index(index_path)
    if index is not None and _matches(index, root, side, listing) and _array_ok(array_path, index):
        return array_path
    _build(array_path, index_path, root, files, listing, side, input_size, workers, progress)
    return array_path


def _listing(root: Path, files: Sequence[Path]) -> list[list[Any]]:
    out = []
    for f in files:
        try:
            st = f.stat()
        except OSError as exc:
            raise UsageError(f"cannot read image {str(f)!r} ({exc.strerror or exc}); replace or "
                             f"delete it") from None
        out.append([f.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns])
    return out


def _read_index(index_path: Path) -> dict[str, Any] | None:
    """The index at ``index_path``; None if there is none. A file there that is not one of ours
    is refused: it is not ours to overwrite."""
    if not index_path.exists() and not index_path.is_symlink():
        return None
    if index_path.is_symlink() or not index_path.is_file():
        raise UsageError(f"cache index {str(index_path)!r} is not a regular file; remove it or "
                         f"choose another --cache folder")
    try:
        index = json.loads(index_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"cache index {str(index_path)!r} is unreadable or not JSON "
                         f"({type(exc).__name__}); delete it to rebuild the cache") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise UsageError(f"{str(index_path)!r} is not a nas2deploy folder-cache index; delete it "
                         f"or choose another --cache folder")
    return index


def _matches(index: dict[str, Any], root: Path, side: int, listing: list[list[Any]]) -> bool:
    return (index.get("version") == VERSION and index.get("root") == str(root.resolve())
            and index.get("side") == side and index.get("files") == listing)


def _array_ok(array_path: Path, index: dict[str, Any]) -> bool:
    """Whether the array is what the index says: a regular file, uint8, (N, side, side, 3)."""
    if array_path.is_symlink() or not array_path.is_file():
        return False
    want = (len(index["files"]), index["side"], index["side"], 3)
    try:
        a = np.load(array_path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError):  # truncated, bad header, not an .npy at all
        return False
    ok = isinstance(a, np.memmap) and a.dtype == np.uint8 and a.shape == want
    del a
    return ok


class _Squares(torch.utils.data.Dataset):
    def __init__(self, files: Sequence[Path], side: int) -> None:
        self.files = [str(f) for f in files]
        self.side = side

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        # a copy: Pillow's pixels are read-only, which torch warns about
        return torch.from_numpy(np.array(square(open_rgb(self.files[i], draft=self.side),
                                                self.side)))


def _build(array_path: Path, index_path: Path, root: Path, files: Sequence[Path],
           listing: list[list[Any]], side: int, input_size: int, workers: int | None,
           progress: Progress | None) -> None:
    if workers is None:
        workers = default_workers()
    loader = torch.utils.data.DataLoader(_Squares(files, side), batch_size=_BUILD_BATCH,
                                         num_workers=workers,
                                         multiprocessing_context=worker_context() if workers else None)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{array_path.stem}.", suffix=".tmp.npy",
                                   dir=array_path.parent)
        os.close(fd)
    except OSError as exc:
        raise UsageError(f"cannot write the cache in {str(array_path.parent)!r} "
                         f"({exc.strerror or exc}); free space or choose another --cache "
                         f"folder") from None
    bar = open_bar(progress, len(files), "caching images")
    try:
        try:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                            shape=(len(files), side, side, 3))
            row = 0
            for batch in loader:
                out[row:row + len(batch)] = batch.numpy()
                row += len(batch)
                bar.update(len(batch))
            out.flush()
            del out
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            index_path.unlink(missing_ok=True)  # no moment where an old index names the new array
            os.replace(tmp, array_path)
            write_json_atomic(index_path, {"format": FORMAT, "version": VERSION,
                                           "root": str(root.resolve()), "side": side,
                                           "input_size": input_size, "dtype": "uint8",
                                           "shape": [len(files), side, side, 3],
                                           "files": listing})
        except OSError as exc:
            raise UsageError(f"cannot write the cache {str(array_path)!r} "
                             f"({exc.strerror or exc}); free space or choose another --cache "
                             f"folder") from None
    finally:
        bar.close()
        Path(tmp).unlink(missing_ok=True)
