"""RunConfig: every option of ``search-and-export``, settable from the CLI or a TOML file."""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import UsageError


@dataclass
class RunConfig:
    method: str = "tfnas"
    dataset: str = "digits"
    input_size: int = 32
    target: str = "openvino:cpu"
    latency_ms: float | None = None
    latency_fraction: float = 0.6
    threads: int = 1
    batch: int = 1
    export: list[str] = field(default_factory=lambda: ["onnx", "openvino"])
    search_epochs: int | None = None  # None: the method's own default
    retrain_epochs: int = 12
    retrain_from: str = "inherit"
    seed: int = 0
    out: str = "nas2deploy-out"
    overwrite: bool = False
    latency_model: str = "flops"
    lut: str | None = None  # a latency table file (e.g. built on the device); implies lut model
    max_rounds: int = 6
    min_width: float = 0.25
    parity_samples: int = 64
    calibration_samples: int = 512
    min_agreement: float = 0.99
    max_accuracy_drop: float = 1.0  # points of top-1 accuracy
    device: str = "auto"  # where search and retrain run: auto (CUDA when present), cpu, cuda[:N]
    amp: str = "auto"  # mixed precision on a GPU: auto (bf16 where supported), bf16, fp16, off
    augment: str = "standard"  # training augmentation of streamed datasets: standard, none
    cache: str | None = None  # a folder for the uint8 cache of a folder dataset
    workers: int | None = None  # DataLoader worker processes (None: min(4, CPUs - 1))
    run_dir: str | None = None  # checkpoints and the measurement journal (None: OUT.run)
    resume: str | None = None  # a run directory to continue
    method_options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name))
        for name in _FLOATS:
            v = getattr(self, name)
            if v is not None and not math.isfinite(v):
                raise UsageError(f"{_flag(name)} must be a finite number, not {v}")
        if self.latency_ms is not None and not self.latency_ms > 0:
            raise UsageError(f"--latency-ms must be > 0, not {self.latency_ms:g}")
        if not 0 < self.latency_fraction <= 1:
            raise UsageError(f"--latency-fraction must be in (0, 1], not {self.latency_fraction:g}")
        if not 8 <= self.input_size <= 512:
            raise UsageError(f"--input-size must be in 8..512, not {self.input_size}")
        for name, lo, hi in _INT_RANGES:
            v = getattr(self, name)
            if v is not None and not lo <= v <= hi:
                raise UsageError(f"{_flag(name)} must be in {lo}..{hi}, not {v}")
        if self.retrain_from not in ("inherit", "scratch"):
            raise UsageError(f"--retrain-from must be 'inherit' or 'scratch', not {self.retrain_from!r}")
        if self.latency_model not in ("flops", "lut", "calibrated"):
            raise UsageError(f"--latency-model must be flops, lut or calibrated, not "
                             f"{self.latency_model!r}")
        if self.lut is not None and self.latency_model == "flops":
            self.latency_model = "lut"
        if not 0 < self.min_width <= 1:
            raise UsageError(f"--min-width must be in (0, 1], not {self.min_width:g}")
        if not 0 <= self.min_agreement <= 1:
            raise UsageError(f"--min-agreement must be in [0, 1], not {self.min_agreement:g}")
        if not self.max_accuracy_drop >= 0:
            raise UsageError(f"--max-accuracy-drop must be >= 0 points, not "
                             f"{self.max_accuracy_drop:g}")
        if self.augment not in ("standard", "none"):
            raise UsageError(f"--augment must be standard or none, not {self.augment!r}")
        if not self.export:
            raise UsageError("--export needs at least one format, e.g. onnx,openvino")
        if not all(isinstance(e, str) for e in self.export):
            raise UsageError(f"--export must be format names, e.g. onnx,openvino, not "
                             f"{self.export!r:.80}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}

# Generous but finite: a typo must not start a run that never ends, or ask a runtime for
# 100,000 threads. Seeds are what numpy's and torch's generators take.
MAX_SEED = 2 ** 32 - 1
MAX_THREADS = 256
MAX_BATCH = 4096
MAX_EPOCHS = 10_000
MAX_ROUNDS = 100
MAX_SAMPLES = 1_000_000
MAX_WORKERS = 64
_INT_RANGES = (("seed", 0, MAX_SEED), ("threads", 1, MAX_THREADS), ("batch", 1, MAX_BATCH),
               ("search_epochs", 1, MAX_EPOCHS), ("retrain_epochs", 0, MAX_EPOCHS),
               ("max_rounds", 1, MAX_ROUNDS), ("parity_samples", 1, MAX_SAMPLES),
               ("calibration_samples", 1, MAX_SAMPLES), ("workers", 0, MAX_WORKERS))
_FLOATS = ("latency_ms", "latency_fraction", "min_width", "min_agreement", "max_accuracy_drop")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a config file into RunConfig field values (the ``[method-options]`` table holds the
    method's own options)."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read config {p}: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"config {p} is not valid TOML: {exc}") from exc
    values: dict[str, Any] = {}
    for key, val in raw.items():
        name = key.replace("-", "_")
        if name not in FIELDS:
            known = ", ".join(sorted(k.replace("_", "-") for k in FIELDS))
            raise UsageError(f"unknown key {key!r} in config {p}; known keys: {known}")
        if name == "export" and isinstance(val, str):
            val = [s.strip() for s in val.split(",") if s.strip()]
        values[name] = val
    return values


def merge(toml_values: dict[str, Any], cli_values: dict[str, Any]) -> RunConfig:
    """Defaults < config file < command line."""
    values = {**toml_values, **cli_values}
    try:
        cfg = RunConfig(**values)
    except TypeError as exc:
        raise UsageError(f"bad configuration: {exc}") from exc
    for name, val in values.items():
        _check_type(name, val)
    cfg.validate()
    return cfg


_TYPES = {"method": str, "latency_model": str, "lut": (str, type(None)), "dataset": str, "target": str, "out": str, "retrain_from": str,
          "input_size": int, "threads": int, "batch": int, "retrain_epochs": int, "seed": int,
          "max_rounds": int, "parity_samples": int,
          "calibration_samples": int, "min_agreement": (int, float),
          "max_accuracy_drop": (int, float), "search_epochs": (int, type(None)),
          "latency_ms": (int, float, type(None)), "latency_fraction": (int, float),
          "min_width": (int, float), "overwrite": bool, "export": list, "method_options": dict,
          "device": str, "amp": str, "augment": str, "cache": (str, type(None)),
          "workers": (int, type(None)), "run_dir": (str, type(None)),
          "resume": (str, type(None))}


def _check_type(name: str, val: Any) -> None:
    want = _TYPES.get(name)
    if want is None:
        return
    if isinstance(val, bool) and want is not bool:
        ok = False
    else:
        ok = isinstance(val, want)
    if not ok:
        raise UsageError(f"option {name.replace('_', '-')} has the wrong type "
                         f"({type(val).__name__}: {val!r})")
