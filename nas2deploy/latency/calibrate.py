"""The calibrated estimate: the plain table sum corrected by end-to-end measurements.

``CalibratedLUT`` is a least-squares fit of measured end-to-end latencies of sampled subnets on
the LUT sum and the op count, relative error weighted; the fit and its residuals are in
``describe()``. It corrects what per-op timing cannot see: ops fused or overlapped inside a
network, and memory traffic between them.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from torch import nn

from ..env import utc_now
from ..errors import UsageError
from ..target import Target
from .collect import measure_networks, sample_subnets
from .measure import Progress
from .model import LatencyModel
from .table import VERSION, LatencyTable, table_brief

CALIBRATION_FORMAT = "nas2deploy.latency_calibration"


FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "a+b*lut": ("one", "lut"),
    "a+b*lut+c*ops": ("one", "lut", "ops"),
    # the largest nets run slower per LUT-ms than mid-sized ones (onnxruntime: -9% bias above
    # 0.4 ms with a linear fit on DSO-NAS): a quadratic term takes the curvature
    "a+b*lut+q*lut^2+c*ops": ("one", "lut", "lut2", "ops"),
}


def _features(table: LatencyTable, spec: dict[str, Any]) -> dict[str, float]:
    total, n, _ = table.network_sum(spec)
    lut_ms = total + table.overhead_ms
    return {"one": 1.0, "lut": lut_ms, "lut2": lut_ms * lut_ms, "ops": float(n)}


def _fit(rows: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares on relative error: minimise Σ ((x·β − y) / y)²."""
    w = 1.0 / y
    beta, *_ = np.linalg.lstsq(rows * w[:, None], y * w, rcond=None)
    return beta


class CalibratedLUT(LatencyModel):
    """Latency ≈ a + b·L [+ q·L²] [+ c·ops] with L the plain LUT estimate, fitted to end-to-end
    measurements of sampled subnets by least squares on relative error. Of the forms in
    ``FEATURE_SETS`` the one with the lowest leave-one-out error on the calibration nets is
    kept. Outside the range of L the calibration saw, the curve continues along its tangent
    (a quadratic must not turn over). ``op_cost``/``base_ms`` are the tangent at the median
    calibration net, so gradient methods get additive per-op costs."""

    name = "calibrated"

    def __init__(self, table: LatencyTable, fit: dict[str, Any]):
        self.table = table
        self.fit = fit
        self.coef = {k: float(v) for k, v in fit["coefficients"].items()}
        self.scale = 1.0

    @classmethod
    def from_measurements(cls, table: LatencyTable, specs: Sequence[dict[str, Any]],
                          measured_ms: Sequence[float], *,
                          feature_sets: Iterable[str] = tuple(FEATURE_SETS),
                          info: dict[str, Any] | None = None) -> "CalibratedLUT":
        y = np.asarray(measured_ms, dtype=float)
        if len(specs) != len(y):
            raise UsageError(f"calibration got {len(specs)} subnets but {len(y)} measurements")
        if len(y) < 5:
            raise UsageError(f"calibration needs at least 5 measured subnets, got {len(y)}")
        if not np.all(np.isfinite(y)) or np.any(y <= 0):
            raise UsageError("calibration measurements must be finite and > 0")
        feats = [_features(table, s) for s in specs]
        scored = []  # (parameters, name, leave-one-out MAPE, X), simplest first
        for name in sorted(feature_sets, key=lambda k: len(FEATURE_SETS[k])):
            cols = FEATURE_SETS[name]
            # 5 nets per parameter beyond the intercept (a+b·L from 5 nets), so that a richer
            # form is only tried where the data can support it
            if len(y) < max(4, 5 * (len(cols) - 1)):
                continue
            X = np.array([[f[c] for c in cols] for f in feats])
            loo = []
            for i in range(len(y)):
                keep = np.arange(len(y)) != i
                beta = _fit(X[keep], y[keep])
                loo.append(float(X[i] @ beta / y[i] - 1))
            scored.append((len(cols), name, float(np.mean(np.abs(loo))), X))
        if not scored:
            raise UsageError(f"calibration needs at least 5 measured subnets, got {len(y)}")
        # the simplest form whose leave-one-out error is within 5% of the best one's
        best_loo = min(sc[2] for sc in scored)
        _, name, loo_mape, X = next(sc for sc in scored if sc[2] <= best_loo * 1.05 + 1e-12)
        cols = FEATURE_SETS[name]
        beta = _fit(X, y)
        pred = X @ beta
        resid = pred / y - 1
        raw = np.array([f["lut"] for f in feats])
        fit = {
            "form": name, "coefficients": {c: float(b) for c, b in zip(cols, beta)},
            "lut_range_ms": [float(raw.min()), float(raw.max())],
            "lut_ref_ms": float(np.median(raw)),
            "n": int(len(y)),
            "residuals_pct": [round(float(r) * 100, 3) for r in resid],
            "mape_pct": round(float(np.mean(np.abs(resid))) * 100, 3),
            "max_abs_pct": round(float(np.max(np.abs(resid))) * 100, 3),
            "loo_mape_pct": round(loo_mape * 100, 3),
            "plain_lut_mape_pct": round(float(np.mean(np.abs(raw / y - 1))) * 100, 3),
            "measured_ms": [round(float(v), 6) for v in y],
            "lut_ms": [round(float(v), 6) for v in raw],
            "ops": [int(f["ops"]) for f in feats],
            **(info or {}),
        }
        return cls(table, fit)

    @classmethod
    def calibrate(cls, table: LatencyTable, method, supernet: nn.Module, target: Target, *,
                  input_size: int, samples: int = 30, seed: int = 1234,
                  widths: tuple[float, float] = (0.25, 1.0), progress: Progress | None = None,
                  measure: Callable[[list[nn.Module]], list[float]] | None = None) -> "CalibratedLUT":
        """Sample ``samples`` subnets (``sample_subnets``), measure them end to end on ``target``
        (``measure_networks`` unless ``measure`` is given: nets -> p50 ms) and fit."""
        subs = sample_subnets(method, supernet, samples, seed=seed, widths=widths,
                              progress=progress, desc="calibration subnets")
        nets = [s.net for s in subs]
        if measure is None:
            ch = int(subs[0].spec["input"]["channels"])
            shape = (target.batch, ch, input_size, input_size)
            timings = measure_networks(nets, target, shape, progress=progress)
            ms = [t.p50_ms for t in timings]
        else:
            ms = list(measure(nets))
        return cls.from_measurements(
            table, [s.spec for s in subs], ms,
            info={"seed": seed, "widths": list(widths), "target": str(target),
                  "measured_by": "measure_networks (registered exporters, interleaved p50)"
                  if measure is None else "custom", "date": utc_now()})

    def _curve(self, lut_ms: float) -> tuple[float, float]:
        """(a + b·L + q·L², its slope) with L clamped to the calibrated range, continued
        linearly beyond it."""
        c = self.coef
        a, b, q = c.get("one", 0.0), c.get("lut", 0.0), c.get("lut2", 0.0)
        lo, hi = self.fit.get("lut_range_ms", (lut_ms, lut_ms))
        at = min(max(lut_ms, lo), hi)
        slope = b + 2 * q * at
        return a + b * at + q * at * at + slope * (lut_ms - at), slope

    def predict(self, spec: dict[str, Any]) -> float:
        f = _features(self.table, spec)
        value = self._curve(f["lut"])[0] + self.coef.get("ops", 0.0) * f["ops"]
        return self.scale * max(value, 0.0)

    def op_cost(self, sig) -> float:
        """slope·entry + c at the median calibration net, floored at 0 (a fit with a negative
        per-op term, e.g. OpenVINO fusing cheap ops away, would otherwise give some ops a
        negative cost). For a linear form without flooring, base_ms + Σ op_cost == predict."""
        ref = self.fit.get("lut_ref_ms", 0.0)
        slope = self._curve(ref)[1]
        ms, how = self.table.lookup(sig)
        c = self.coef.get("ops", 0.0) if how != "free" else 0.0
        return self.scale * max(slope * ms + c, 0.0)

    @property
    def base_ms(self) -> float:
        ref = self.fit.get("lut_ref_ms", 0.0)
        value, slope = self._curve(ref)
        return self.scale * (value - slope * ref + slope * self.table.overhead_ms)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "table": table_brief(self.table), "fit": self.fit,
                "scale": self.scale}

    def to_dict(self) -> dict[str, Any]:
        return {"format": CALIBRATION_FORMAT, "version": VERSION,
                "table": {"space": self.table.meta.get("space"), "target": self.table.meta.get("target"),
                          "date": self.table.meta.get("date")},
                "fit": self.fit}

    @classmethod
    def from_dict(cls, table: LatencyTable, d: Any, source: str = "calibration") -> "CalibratedLUT":
        ok = (isinstance(d, dict) and d.get("format") == CALIBRATION_FORMAT
              and d.get("version") == VERSION and isinstance(d.get("fit"), dict)
              and isinstance(d["fit"].get("coefficients"), dict)
              and all(k in ("one", "lut", "lut2", "ops") and isinstance(v, (int, float))
                      and math.isfinite(v)
                      for k, v in d["fit"]["coefficients"].items()))
        if not ok:
            raise UsageError(f"{source} is not a valid nas2deploy latency calibration")
        if (d.get("table") or {}).get("date") != table.meta.get("date") \
                or (d.get("table") or {}).get("space") != table.meta.get("space"):
            raise UsageError(f"{source} was fitted to another latency table")
        return cls(table, d["fit"])
