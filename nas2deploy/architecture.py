"""Architecture: the decision a search hands to everything after it, as versioned JSON."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BundleError
from .netspec import SpecError, validate_spec

FORMAT = "nas2deploy.architecture"
VERSION = 1


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
        try:
            return cls(method=d["method"], network=d["network"], space=d.get("space", {}),
                       decisions=d.get("decisions", {}),
                       width_multiplier=float(d.get("width_multiplier", 1.0)), seed=d.get("seed"),
                       metadata=d.get("metadata", {}))
        except KeyError as exc:
            raise BundleError(f"{source} lacks key {exc}") from exc
        except SpecError as exc:
            raise BundleError(f"{source}: {exc}") from exc

    @classmethod
    def from_json(cls, text: str, source: str = "architecture") -> "Architecture":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BundleError(f"{source} is not valid JSON ({exc})") from exc
        return cls.from_dict(d, source)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "Architecture":
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise BundleError(f"cannot read {p}: {exc.strerror}") from exc
        return cls.from_json(text, str(p))
