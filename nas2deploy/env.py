"""This machine and this install: package versions, CPU and GPU, atomic file writes, and the
progress bar that shows nothing. One copy of each, for every module that needs one."""

from __future__ import annotations

import datetime as dt
import functools
import importlib.metadata as md
import json
import os
import platform
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import torch

from .errors import BundleError

if TYPE_CHECKING:
    from .target import Target


# --------------------------------------------------------------------------------------------
# package versions


def version(dist: str) -> str | None:
    """The installed version of distribution ``dist``; None if it is not installed."""
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def runtime_version(runtime: str) -> str:
    """The version of the package behind ``runtime`` ("not installed" where there is none)."""
    dist = {"onnxruntime": "onnxruntime", "openvino": "openvino", "torch": "torch",
            "tensorrt": "tensorrt"}.get(runtime, runtime)
    found = version(dist)
    if found is not None:
        return found
    if runtime == "tensorrt":  # JetPack installs the bindings without pip metadata
        try:
            import tensorrt

            return str(tensorrt.__version__)
        except Exception:
            pass
    return "not installed"


# --------------------------------------------------------------------------------------------
# the machine: CPU, GPU, clock


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpuinfo() -> dict[str, str]:
    """The first processor's entries of /proc/cpuinfo (empty where there is none)."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def cpu_isa(flags: Iterable[str]) -> dict[str, bool]:
    """Which of ``flags`` the CPU reports (all False where /proc/cpuinfo is missing)."""
    have = set(cpuinfo().get("flags", "").split())
    return {f: f in have for f in flags}


def gpu_name() -> str | None:
    """The name of CUDA device 0 as torch sees it; None without one."""
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def environment() -> dict[str, Any]:
    """What a bundle's manifest records about the machine and the install it was made with."""
    env: dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(),
        "cpu": cpu_name(), "cpu_count": os.cpu_count(),
    }
    for dist in ("nas2deploy", "torch", "torch-pruning", "onnx", "onnxscript", "onnxruntime",
                 "openvino", "numpy", "safetensors"):
        env[dist.replace("-", "_")] = version(dist)
    gpu = gpu_name()
    if gpu is not None:
        env["gpu"] = gpu
    return env


def machine_info(target: Target) -> dict[str, Any]:
    """What a latency table records about the machine it was measured on, for ``target``."""
    info = {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "runtime": target.runtime,
            "runtime_version": runtime_version(target.runtime), "torch": torch.__version__}
    if target.device == "cuda":
        gpu = gpu_name()
        if gpu is not None:
            info["gpu"] = gpu
    return info


def utc_now() -> str:
    """The time now in UTC, ISO 8601 to the second: what records are dated with."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------
# files: this user's cache, atomic writes


def cache_root() -> Path:
    """``$NAS2DEPLOY_CACHE`` if set, else ``$XDG_CACHE_HOME/nas2deploy`` or ``~/.cache/nas2deploy``;
    latency tables go in its ``luts`` folder."""
    env = os.environ.get("NAS2DEPLOY_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "nas2deploy"


def write_atomic(path: Path, data: bytes | str, *, mode: int | None = None) -> None:
    """``path`` written whole or not at all: a temporary file with a unique name beside it (a
    fixed name could be planted as a symlink), fsync'ed, renamed over ``path``. A symlink at
    ``path`` is refused, never written through. An update keeps the file's mode."""
    path = Path(path)
    if path.is_symlink():
        raise BundleError(f"{path} is a symlink; refusing to write through it")
    if isinstance(data, str):
        data = data.encode()
    if mode is None:
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except FileNotFoundError:
            mode = 0o666 & ~umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_json_atomic(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@functools.lru_cache(maxsize=1)
def umask() -> int:
    """The process's umask."""
    # read, not set-and-restore: os.umask() would change it for every thread meanwhile
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022



# --------------------------------------------------------------------------------------------
# progress


class NullProgress:
    """A tqdm-shaped bar that shows nothing."""

    def update(self, n=1): ...
    def set_postfix(self, **kw): ...
    def close(self): ...


def null_progress(total=None, desc=None) -> NullProgress:
    """A ``progress(total=..., desc=...)`` factory that shows nothing."""
    return NullProgress()


def open_bar(progress, total: int, desc: str):
    """``progress(total=, desc=)``, or a bar that shows nothing when ``progress`` is None."""
    return (progress or null_progress)(total=total, desc=desc)
