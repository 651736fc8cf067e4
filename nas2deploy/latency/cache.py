"""The latency cache: tables and calibrations are measured once per (space, target, machine)
and kept under ``env.cache_root()/luts``; these find them there or measure and store them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import nn

from ..env import cache_root, machine_info, write_atomic
from ..errors import UsageError
from ..target import Target
from .calibrate import CalibratedLUT
from .collect import build_table
from .grid import WidthGrid, as_grid
from .measure import Progress, TableProtocol
from .table import VERSION, LatencyTable


def table_cache_path(space: dict[str, Any], target: Target, *, input_size: int,
                     grid: "WidthGrid | Sequence[float] | str" = "dense",
                     fast_export: bool = True) -> Path:
    """Where the table of (space, target, this machine) is cached."""
    info = machine_info(target)
    ident = {"format": VERSION, "fingerprint": space.get("fingerprint"), "target": str(target),
             "batch": target.batch, "threads": target.threads, "cpu": info["cpu"],
             "gpu": info.get("gpu"), "runtime_version": info["runtime_version"],
             "input_size": int(input_size), "grid": as_grid(grid).ident(),
             "fast_export": bool(fast_export)}
    h = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
    name = (f"{space.get('name', 'space')}-{space.get('fingerprint')}-{target.runtime}-"
            f"{target.device}-{target.precision}-b{target.batch}-t{target.threads}-{h}.json")
    return cache_root() / "luts" / name


def get_or_build_table(method, supernet: nn.Module, target: Target, *, input_size: int,
                       progress: Progress | None = None, rebuild: bool = False,
                       grid: "WidthGrid | Sequence[float] | str" = "dense",
                       protocol: TableProtocol = TableProtocol(), fast_export: bool = True,
                       log: Callable[[str], None] = lambda m: None) -> LatencyTable:
    """The cached table of (space, target, machine); measured and cached on first use.

    A cached file that is corrupt is measured again (it is only a cache); one that belongs to
    another space or target cannot be found here, since both are in its name.
    """
    space = method.space(supernet)
    path = table_cache_path(space, target, input_size=input_size, grid=grid,
                            fast_export=fast_export)
    if path.exists() and not rebuild:
        try:
            table = LatencyTable.load(path, space_fingerprint=space.get("fingerprint"),
                                      target=target)
            log(f"latency table from cache: {path}")
            return table
        except UsageError as exc:
            log(f"cached latency table unusable ({exc}); measuring it again")
    log(f"measuring a latency table for {space.get('name')} on {target} (cached at {path})")
    table = build_table(method, supernet, target, input_size=input_size, grid=grid,
                        protocol=protocol, fast_export=fast_export, progress=progress)
    try:
        table.save(path)
    except UsageError as exc:  # an unwritable cache costs time on the next run, nothing else
        log(f"latency table not cached: {exc}")
    return table


def get_or_calibrate(table: LatencyTable, method, supernet: nn.Module, target: Target, *,
                     input_size: int, samples: int = 30, seed: int = 1234,
                     min_width: float = 0.25, progress: Progress | None = None,
                     rebuild: bool = False,
                     log: Callable[[str], None] = lambda m: None) -> CalibratedLUT:
    """``CalibratedLUT.calibrate``, cached next to the table (keyed by the table and options)."""
    path = cache_root() / "luts" / (f"calibration-{table.ident()}-n{samples}-s{seed}"
                                    f"-w{min_width:g}.json")
    if path.exists() and not rebuild:
        try:
            text = path.read_text(encoding="utf-8")
            model = CalibratedLUT.from_dict(table, json.loads(text), f"calibration {path}")
            log(f"latency calibration from cache: {path}")
            return model
        except (OSError, ValueError, UsageError) as exc:
            log(f"cached calibration unusable ({exc}); measuring again")
    model = CalibratedLUT.calibrate(table, method, supernet, target, input_size=input_size,
                                    samples=samples, seed=seed, widths=(min_width, 1.0),
                                    progress=progress)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(model.to_dict(), indent=1))
    except (OSError, UsageError) as exc:
        log(f"latency calibration not cached: {exc}")
    return model
