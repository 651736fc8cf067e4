"""Architecture: the decision a search hands to everything after it, as versioned JSON."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BundleError
from .speccheck import SpecError, _show, validate_spec

FORMAT = "nas2deploy.architecture"
VERSION = 1
# Ten thousand nodes (netspec.MAX_NODES) take about 2 MB; a larger file is not one of ours.
MAX_FILE_BYTES = 64 << 20


def fingerprint(obj: Any) -> str:
    """Stable short hash of JSON-able data (search-space descriptions, configs)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class Architecture:
    method: str
    network: dict[str, Any]  # a netspec (see nas2deploy.netspec)
    space: dict[str, Any] = field(default_factory=dict)  # {"name", "fingerprint"}
    decisions: dict[str, Any] = field(default_factory=dict)  # method-specific record, JSON only
    width_multiplier: float = 1.0
    seed: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        validate_spec(self.network)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "method": self.method, "space": self.space,
                "seed": self.seed, "width_multiplier": self.width_multiplier,
                "decisions": self.decisions, "metadata": self.metadata, "network": self.network}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=False)

    @classmethod
    def from_dict(cls, d: Any, source: str = "architecture") -> "Architecture":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise BundleError(f"{source} is not a nas2deploy architecture (format key missing)")
        if d.get("version") != VERSION:
            raise BundleError(f"{source} has architecture version {d.get('version')!r}; this "
                              f"nas2deploy reads version {VERSION}")
        for key in ("method", "network"):
            if key not in d:
                raise BundleError(f"{source} lacks key {key!r}")
        width, seed = d.get("width_multiplier", 1.0), d.get("seed")
        checks = (
            ("method", isinstance(d["method"], str), "a string"),
            ("width_multiplier", isinstance(width, (int, float)) and not isinstance(width, bool)
             and math.isfinite(width) and width > 0, "a finite number > 0"),
            ("seed", seed is None or (isinstance(seed, int) and not isinstance(seed, bool)
                                      and 0 <= seed < 2 ** 64), "null or an integer in 0..2**64-1"),
            *((key, isinstance(d.get(key, {}), dict), "an object")
              for key in ("space", "decisions", "metadata")),
        )
        for key, ok, what in checks:
            if not ok:
                raise BundleError(f"{source}: {key} must be {what}, not {_show(d[key])}")
        try:
            return cls(method=d["method"], network=d["network"], space=d.get("space", {}),
                       decisions=d.get("decisions", {}), width_multiplier=float(width),
                       seed=seed, metadata=d.get("metadata", {}))
        except SpecError as exc:
            raise BundleError(f"{source}: {exc}") from exc

    @classmethod
    def from_json(cls, text: str, source: str = "architecture") -> "Architecture":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BundleError(f"{source} is not valid JSON ({exc})") from exc
        except (ValueError, RecursionError) as exc:  # an int too long to parse, nesting too deep
            raise BundleError(f"{source} is not valid JSON ({type(exc).__name__})") from None
        return cls.from_dict(d, source)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "Architecture":
        p = Path(path)
        try:
            size = p.stat().st_size
            if size > MAX_FILE_BYTES:
                raise BundleError(f"{p} is {size:,} bytes, more than an architecture file can be "
                                  f"({MAX_FILE_BYTES:,}); it is not a nas2deploy architecture")
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise BundleError(f"cannot read {p}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise BundleError(f"{p} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        return cls.from_json(text, str(p))
