"""What the pipeline and the CLI ask for: ``make_latency_model`` (the estimate a search is
steered with, of the kind asked for) and ``build_table_cli`` (``nas2deploy lut build``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from torch import nn

from .. import registry
from ..errors import UsageError
from ..method import TaskSpec
from ..target import Target
from .cache import get_or_build_table, get_or_calibrate, table_cache_path
from .grid import WidthGrid
from .measure import Progress
from .model import FlopsProxy, LatencyModel
from .table import LatencyTable, LUTModel

MODEL_KINDS = ("flops", "lut", "calibrated")


def make_latency_model(kind: str, *, method, supernet: nn.Module, target: Target, input_size: int,
                       anchors: Sequence[tuple[int, float]] | None = None,
                       min_width: float = 0.25, progress: Progress | None = None,
                       rebuild: bool = False, calibration_samples: int = 30, seed: int = 1234,
                       table_file: str | Path | None = None,
                       log: Callable[[str], None] = lambda m: None) -> LatencyModel:
    """The latency model the pipeline steers search and width with.

    ``flops``: ``FlopsProxy(anchors)``; ``anchors`` are (MACs, measured ms) pairs, e.g. of the
    largest and smallest subnets the pipeline already measured (required for this kind).
    ``lut``: ``LUTModel`` on the cached (or newly measured) table of this space and target.
    ``calibrated``: ``CalibratedLUT`` on that table, fitted to ``calibration_samples`` sampled
    subnets measured end to end (cached too).
    ``table_file``: use this table (e.g. measured on the device with ``nas2deploy lut build``)
    instead of the cache; it must match the space's fingerprint and the target.
    """
    if kind not in MODEL_KINDS:
        raise UsageError(f"unknown latency model {kind!r}; choose one of {', '.join(MODEL_KINDS)}")
    if kind == "flops":
        if not anchors or len(anchors) < 2:
            raise UsageError("the flops latency model needs two or more (MACs, ms) anchors")
        return FlopsProxy(list(anchors))
    if table_file is not None:
        table = LatencyTable.load(table_file, space_fingerprint=method.space(supernet).get(
            "fingerprint"), target=target)
        log(f"latency table {table_file}: {table.summary()}")
    else:
        table = get_or_build_table(method, supernet, target, input_size=input_size,
                                   grid=WidthGrid(min_width=min_width), progress=progress,
                                   rebuild=rebuild, log=log)
    if kind == "lut":
        return LUTModel(table)
    return get_or_calibrate(table, method, supernet, target, input_size=input_size,
                            samples=calibration_samples, seed=seed, min_width=min_width,
                            progress=progress, rebuild=rebuild, log=log)


def build_table_cli(space: str, target: str, input_size: int, out: Path | None,
                    progress: Progress | None = None, *, input_channels: int = 1,
                    num_classes: int = 10, method_options: dict[str, Any] | None = None,
                    threads: int = 1, batch: int = 1, rebuild: bool = True,
                    grid: "WidthGrid | Sequence[float] | str" = "dense",
                    log: Callable[[str], None] = lambda m: None) -> Path:
    """``nas2deploy lut build``: measure the table of method ``space`` (default options, or
    ``method_options``) for ``target`` at ``input_size``; write it to the cache (and to ``out``
    if given). Returns the path written (``out``, else the cache file)."""
    if not isinstance(input_size, int) or not 8 <= input_size <= 512:
        raise UsageError(f"--input-size must be in 8..512, not {input_size}")
    tgt = Target.parse(target, batch=batch, threads=threads)
    method = registry.methods.get(space)(method_options or {})
    supernet = method.build(TaskSpec(input_channels, input_size, num_classes))
    table = get_or_build_table(method, supernet, tgt, input_size=input_size, progress=progress,
                               rebuild=rebuild, grid=grid, log=log)
    if out is None:
        return table_cache_path(method.space(supernet), tgt, input_size=input_size, grid=grid)
    return table.save(Path(out))
