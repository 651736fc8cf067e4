"""Per-image steps of the streamed datasets: decode one file, the evaluation square and crop, the
random crops of training. Shared by :mod:`.stream` and the on-disk cache of :mod:`.cache`.

Every random draw comes from a ``numpy.random.Generator`` the caller seeds, so an item's
augmentation depends on (seed, epoch, index) alone, not on which worker fetched it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UsageError
from .datasets import IMAGE_FORMATS

EVAL_CROP_FRACTION = 0.875  # the crop is 7/8 of the resized image, as for ImageNet
RRC_SCALE = (0.08, 1.0)  # random-resized crop: fraction of the area kept
RRC_RATIO = (3 / 4, 4 / 3)  # and its aspect ratio
PAD = 4  # pad-crop of 32-px sets


def resize_side(input_size: int) -> int:
    """The side images are resized to before the centre crop of ``input_size``."""
    return int(round(input_size / EVAL_CROP_FRACTION))


def open_rgb(path: str | Path, draft: int | None = None):
    """The image at ``path`` as an RGB Pillow image, decoded as the one format its extension
    names; ``draft`` lets JPEG decode at a reduced scale no smaller than draft×draft."""
    from PIL import Image, UnidentifiedImageError  # only folder datasets need Pillow

    fmt = IMAGE_FORMATS[Path(path).suffix.lower()]
    try:
        with Image.open(path, formats=[fmt]) as im:
            if draft is not None:
                im.draft("RGB", (draft, draft))
            return im.convert("RGB")
    except UnidentifiedImageError:
        raise ImageError(f"image {str(path)!r} is not a {fmt} image, the one format its "
                         f"extension is decoded as; replace, convert or delete it") from None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise ImageError(f"cannot read image {str(path)!r} ({type(exc).__name__}: {exc}); "
                         f"replace or delete it") from None


class ImageError(UsageError):
    """A bad image, raised where it is decoded, possibly in a DataLoader worker.

    The DataLoader re-raises a worker's exception as ``type(exc)(text)`` where the text is
    "Caught ... Original Traceback ...": keep only the original message's line, so the user
    still sees one line.
    """

    def __init__(self, message: str) -> None:
        if message.startswith("Caught ") and "Original Traceback" in message:
            last = next((ln for ln in reversed(message.splitlines()) if ln.strip()), message)
            head = f"{type(self).__module__}.{type(self).__name__}: "
            message = last[len(head):] if last.startswith(head) else last
        super().__init__(message)


def square(im, side: int) -> np.ndarray:
    """H×W×3 uint8: the centred square of ``im`` (a Pillow image) resized to side×side, i.e. a
    shorter-side resize to ``side`` then a centre crop, in one resampling."""
    from PIL import Image

    w, h = im.size
    m = min(w, h)
    box = ((w - m) / 2, (h - m) / 2, (w + m) / 2, (h + m) / 2)
    return np.asarray(im.resize((side, side), Image.BILINEAR, box=box), dtype=np.uint8)


def centre_crop(a: np.ndarray, size: int) -> np.ndarray:
    """The centred size×size window of an H×W×C array."""
    top, left = (a.shape[0] - size) // 2, (a.shape[1] - size) // 2
    return a[top:top + size, left:left + size]


def rrc_box(h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random-resized crop of an h×w image: area fraction in
    ``RRC_SCALE``, aspect ratio in ``RRC_RATIO`` (log-uniform); after ten misses, the centred
    crop of the whole image clamped to the ratio range (torchvision's rule)."""
    area = h * w
    log_lo, log_hi = math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1])
    for _ in range(10):
        target = area * rng.uniform(*RRC_SCALE)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    ratio = w / h
    if ratio < RRC_RATIO[0]:
        cw, ch = w, int(round(w / RRC_RATIO[0]))
    elif ratio > RRC_RATIO[1]:
        ch, cw = h, int(round(h * RRC_RATIO[1]))
    else:
        ch, cw = h, w
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def random_resized_crop(im, size: int, rng: np.random.Generator) -> np.ndarray:
    """H×W×3 uint8 size×size: a random-resized crop of ``im`` (Pillow image), maybe mirrored."""
    from PIL import Image

    w, h = im.size
    top, left, ch, cw = rrc_box(h, w, rng)
    a = np.asarray(im.resize((size, size), Image.BILINEAR, box=(left, top, left + cw, top + ch)),
                   dtype=np.uint8)
    return a[:, ::-1] if rng.random() < 0.5 else a


def to_chw(a: np.ndarray) -> torch.Tensor:
    """H×W×C uint8 array -> contiguous C×H×W uint8 tensor."""
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))


# --------------------------------------------------------------------------------------------
# on C×H×W uint8 tensors (CIFAR)


def resize_chw(x: torch.Tensor, size: int) -> torch.Tensor:
    """C×H×W uint8 -> C×size×size uint8, bilinear (antialiased when shrinking) as load_dataset
    resizes, rounded back to uint8."""
    if x.shape[-2:] == (size, size):
        return x
    shrink = size < x.shape[-1] or size < x.shape[-2]
    y = F.interpolate(x[None].float(), size=(size, size), mode="bilinear", align_corners=False,
                      antialias=shrink)[0]
    return y.round_().clamp_(0, 255).to(torch.uint8)


def pad_crop_flip(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """C×S×S uint8: zero-pad by ``PAD``, take a random S×S window, mirror half the time."""
    s = x.shape[-1]
    padded = F.pad(x, (PAD, PAD, PAD, PAD))
    top, left = (int(v) for v in rng.integers(0, 2 * PAD + 1, size=2))
    out = padded[:, top:top + s, left:left + s]
    return (out.flip(-1) if rng.random() < 0.5 else out).contiguous()


def rrc_flip_chw(x: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    """C×H×W uint8: a random-resized crop resized to size×size, mirrored half the time."""
    top, left, ch, cw = rrc_box(x.shape[-2], x.shape[-1], rng)
    crop = x[:, top:top + ch, left:left + cw]
    y = F.interpolate(crop[None].float(), size=(size, size), mode="bilinear",
                      align_corners=False, antialias=ch > size or cw > size)[0]
    y = y.round_().clamp_(0, 255).to(torch.uint8)
    return (y.flip(-1) if rng.random() < 0.5 else y).contiguous()
