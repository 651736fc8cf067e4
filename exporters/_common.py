"""Helpers shared by the built-in exporters: quiet library calls, one-line errors, library checks."""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata as md
import logging
import re
import sys
import warnings
from typing import Iterator

from nas2deploy.errors import ExportError


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message``, without colour codes, cut to ``limit`` characters."""
    text = _ANSI.sub("", str(exc)).strip().splitlines()
    msg = f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
    return msg if len(msg) <= limit else msg[: limit - 1] + "…"


def export_error(what: str, exc: BaseException) -> ExportError:
    """An ExportError saying ``what`` failed and why, in one line (chain it with ``from exc``)."""
    return ExportError(f"{what}: {one_line(exc)}")


def missing_modules(*names: str) -> str | None:
    """None when every module imports, else one line naming what is missing or broken."""
    bad = []
    for name in names:
        try:
            if name == "openvino":
                import_openvino()
            else:
                importlib.import_module(name)
        except Exception as exc:  # a broken install is as unusable as a missing one
            bad.append(name if isinstance(exc, ModuleNotFoundError) else f"{name} ({one_line(exc, 80)})")
    if not bad:
        return None
    return f"missing or broken: {', '.join(bad)} (pip install {' '.join(n.split(' ')[0] for n in bad)})"


def dist_versions(*dists: str) -> dict[str, str]:
    """Installed versions of the given distributions, read from metadata (nothing is imported)."""
    out = {}
    for d in dists:
        try:
            out[d] = md.version(d)
        except md.PackageNotFoundError:
            out[d] = "not installed"
    return out


def import_openvino():
    """Import ``openvino`` without its telemetry.

    ``import openvino`` imports ``openvino.tools.ovc``, which sends a usage event over the network
    (in a child process) unless the user opted out; nas2deploy never sends anything. ovc falls
    back to a no-op stub when ``openvino_telemetry`` cannot be imported, so that module is marked
    unimportable for this process before openvino is first imported. If openvino was already
    imported by someone else, the real telemetry object is switched off instead.
    """
    if "openvino" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
    import openvino

    tm = sys.modules.get("openvino_telemetry")
    if tm is not None:  # imported before us: make the existing singleton send nothing
        try:
            from openvino.tools.ovc import telemetry_utils

            tel = getattr(telemetry_utils.tm, "Telemetry", None)
            inst = getattr(tel, "_SingletonMetaClass__single_instance", None)
            if inst is not None and hasattr(inst, "consent"):
                inst.consent = False
        except Exception:
            pass
    return openvino


@contextlib.contextmanager
def quiet(*loggers: str, level: int = logging.ERROR) -> Iterator[None]:
    """Send anything a library prints to stdout to stderr instead (the CLI's stdout is JSON), raise
    the given loggers to ``level`` and hide the libraries' own Deprecation/FutureWarnings (a user cannot
    act on them) for the duration."""
    saved = []
    for name in loggers:
        lg = logging.getLogger(name)
        saved.append((lg, lg.level))
        lg.setLevel(level)
    try:
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        for lg, level in saved:
            lg.setLevel(level)
