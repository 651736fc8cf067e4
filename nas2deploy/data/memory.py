"""Memory this process can still allocate: MemAvailable, cgroup limits, the address-space rlimit."""

from __future__ import annotations

import os
from pathlib import Path


def available_memory() -> int | None:
    """Bytes this process can still allocate: the least of the machine's MemAvailable (or
    free pages), the headroom under its cgroup's memory limit (a container's, which
    MemAvailable does not show) and under its address-space rlimit (``ulimit -v``). None where
    none of them can be read."""
    known = [v for v in (_meminfo_available(), _cgroup_headroom(), _rlimit_headroom())
             if v is not None]
    return max(0, min(known)) if known else None


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
        return None if text == "max" else int(text)
    except (OSError, ValueError):
        return None


def _inactive_file(stat: Path, key: str) -> int:
    """Page cache the kernel reclaims before it kills: counted in a cgroup's usage, free for us."""
    try:
        for line in stat.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_headroom() -> int | None:
    try:
        entries = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    heads = []
    for line in entries:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        if controllers == "":  # cgroup v2
            heads += _cgroup_walk(Path("/sys/fs/cgroup"), rel, "memory.max", "memory.current",
                                  "inactive_file")
        elif "memory" in controllers.split(","):  # cgroup v1
            heads += _cgroup_walk(Path("/sys/fs/cgroup/memory"), rel, "memory.limit_in_bytes",
                                  "memory.usage_in_bytes", "total_inactive_file")
    return min(heads) if heads else None


def _cgroup_walk(root: Path, rel: str, limit_file: str, usage_file: str,
                 inactive: str) -> list[int]:
    """Headroom under the limit of the process's cgroup and of each ancestor (a limit may sit on
    any of them)."""
    heads = []
    d = root / rel.strip("/")
    while d == root or root in d.parents:
        limit, used = _read_int(d / limit_file), _read_int(d / usage_file)
        # v1 writes "no limit" as about 2**63
        if limit is not None and used is not None and limit < 1 << 60:
            heads.append(limit - used + _inactive_file(d / "memory.stat", inactive))
        if d == root:
            break
        d = d.parent
    return heads


def _rlimit_headroom() -> int | None:
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError):
        return None
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return soft - int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return soft


def _gib(n: int) -> str:
    return f"{n / 2 ** 30:.1f}" if n >= 2 ** 30 else f"{n / 2 ** 30:.2f}"
