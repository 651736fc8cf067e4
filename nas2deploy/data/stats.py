"""Per-channel mean and std of uint8 images, streamed in chunks: exact integer sums, no float
copy of the data."""

from __future__ import annotations

import numpy as np
import torch

from .datasets import Progress

_STATS_CHUNK_BYTES = 8 << 20  # uint8 pixels per statistics chunk (and 4x that as int32)


def uint8_chunks(ds: torch.utils.data.Dataset):
    """The images of ``ds`` as N×C×H×W uint8 numpy chunks of about 8 MiB, in order, fetched
    in this process."""
    if len(ds) == 0:
        return
    first = ds[0][0].numpy()
    per_chunk = max(1, _STATS_CHUNK_BYTES // first.size)
    chunk = np.empty((per_chunk, *first.shape), dtype=np.uint8)
    for start in range(0, len(ds), per_chunk):
        stop = min(start + per_chunk, len(ds))
        for j, i in enumerate(range(start, stop)):
            chunk[j] = ds[i][0].numpy()  # filled in place: torch.stack of uint8 crawls on few cores
        yield chunk[:stop - start]


def channel_stats(chunks, *, progress: Progress | None = None,
                   total: int | None = None) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (population) of uint8 chunks scaled to [0, 1]; a constant
    channel keeps std 1, as load_dataset does. The sums are of integers, exact, and need no
    float copy of a chunk."""
    bar = progress(total=total, desc="image statistics") if progress and total else None
    n, s, sq = 0, 0, 0
    try:
        for x in chunks:
            s = s + x.sum(axis=(0, 2, 3), dtype=np.int64)
            x32 = x.astype(np.int32)
            sq = sq + np.einsum("nchw,nchw->c", x32, x32, dtype=np.int64)
            n += x.shape[0] * x.shape[2] * x.shape[3]
            if bar is not None:
                bar.update(x.shape[0])
    finally:
        if bar is not None:
            bar.close()
    mean = np.asarray(s, dtype=np.float64) / (255.0 * n)
    std = np.sqrt(np.maximum(np.asarray(sq, dtype=np.float64) / (255.0 ** 2 * n) - mean ** 2, 0))
    std = np.where(std < 1e-6, 1.0, std)
    return [float(v) for v in mean], [float(v) for v in std]
