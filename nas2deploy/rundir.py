"""The run directory: what a killed run leaves so that ``--resume`` can finish it.

A run is deterministic given its config and seed (bit-identical on the CPU) except for what it
measures on the target. So the directory holds:

* ``run.json``: who made it: nas2deploy's version, the config (less what does not change the
  result: ``--out``, workers, ...), the space's fingerprint and the world size. ``--resume``
  refuses a directory made by anything else;
* ``measurements.json``: every latency measurement rank 0 took, in order, journalled as it is
  taken. A resumed run replays them instead of measuring again, so it steers by the same
  numbers and reaches the same decisions; past the last one it measures afresh;
* ``stages/``: each finished stage's record (the budget, the search's decision), checked against
  what a resumed run remakes;
* ``search/``, ``retrain-N/``: the latest per-epoch checkpoint of the search and of each
  retrain attempt (``nas2deploy.checkpoint.Store``; each rank's RNG states in
  ``rng-RANK/``).

A resumed run goes through the stages again, from the top: measurements replay, the search
and retrain loops restart from their checkpoints, exports are redone (seconds). The directory is
removed once the bundle is committed, and kept whenever the run fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .checkpoint import Loop
from .env import write_json_atomic
from .errors import UsageError

FORMAT = 1
# Options that do not change what a run computes: a resumed run may change them.
NOT_IDENTITY = ("out", "run_dir", "resume", "overwrite", "workers", "quiet")


def identity(config: dict[str, Any], space_fingerprint: str | None, world_size: int) -> dict[str, Any]:
    return {"format": FORMAT, "nas2deploy_version": __version__,
            "config": {k: v for k, v in sorted(config.items()) if k not in NOT_IDENTITY},
            "space_fingerprint": space_fingerprint, "world_size": world_size}


def default_for(out: Path) -> Path:
    """Beside ``--out``: ``OUT.run``."""
    return out.with_name(out.name + ".run")


def spec_key(spec: Any) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


class RunDir:
    """A run directory, made fresh (``create``) or opened to resume (``resume``)."""

    def __init__(self, path: Path, ident: dict[str, Any], resumed: bool, journal: bool = True):
        self.path, self.identity, self.resumed = path, ident, resumed
        self._journal: list[dict[str, Any]] = []
        self._replay: list[dict[str, Any]] = []
        if resumed and journal:  # ranks other than 0 only read checkpoints
            self._replay = self._read_journal()
        self.replayed = 0
        self.diverged: str | None = None

    @classmethod
    def create(cls, path: Path, ident: dict[str, Any]) -> "RunDir":
        if path.exists() or path.is_symlink():
            if (path / "run.json").is_file():
                raise UsageError(f"run directory {path} holds an earlier run that did not finish; "
                                 f"continue it with --resume {path}, or start afresh with "
                                 f"--overwrite")
            raise UsageError(f"--run-dir {path} exists and is not a nas2deploy run directory; "
                             f"choose another with --run-dir")
        try:
            path.mkdir(parents=True)
        except OSError as exc:
            raise UsageError(f"cannot create the run directory {path}: {exc.strerror}") from None
        write_json_atomic(path / "run.json", ident)
        return cls(path, ident, resumed=False)

    @classmethod
    def resume(cls, path: Path, ident: dict[str, Any]) -> "RunDir":
        meta = path / "run.json"
        if not path.is_dir() or not meta.is_file():
            raise UsageError(f"--resume {path}: not a nas2deploy run directory (no run.json)")
        try:
            had = json.loads(meta.read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"--resume {path}: run.json is not readable JSON ({exc})") from None
        if not isinstance(had, dict) or had.get("format") != FORMAT:
            raise UsageError(f"--resume {path}: run.json is not a nas2deploy run record "
                             f"(format {FORMAT})")
        for key, what in (("nas2deploy_version", "nas2deploy"), ("space_fingerprint", "space"),
                          ("world_size", "number of processes")):
            if had.get(key) != ident[key]:
                raise UsageError(f"--resume {path}: made with another {what} ({had.get(key)!r}, "
                                 f"this run {ident[key]!r}); start a new run instead")
        old, new = had.get("config") or {}, ident["config"]
        differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if differ:
            shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differ[:4])
            raise UsageError(f"--resume {path}: made with another config ({shown}); resume "
                             f"with the options it was started with")
        return cls(path, ident, resumed=True)

    # ---- measurements ------------------------------------------------------------------
    @property
    def pending(self) -> list[dict[str, Any]]:
        """Journalled measurements not replayed yet."""
        return list(self._replay)

    def _read_journal(self) -> list[dict[str, Any]]:
        f = self.path / "measurements.json"
        if not f.is_file():
            return []
        try:
            entries = json.loads(f.read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"--resume {self.path}: measurements.json is not readable JSON "
                             f"({exc})") from None
        if not isinstance(entries, list) or not all(
                isinstance(e, dict) and {"kind", "key", "value"} <= set(e) for e in entries):
            raise UsageError(f"--resume {self.path}: measurements.json is not a measurement "
                             f"journal")
        return entries

    def measured(self, kind: str, key: str, take: Callable[[], Any]) -> Any:
        """The JSON value of a measurement: replayed from the journal of the run being resumed
        while its entries match, else taken now (``take()``) and journalled."""
        if self._replay and self.diverged is None:
            nxt = self._replay[0]
            if nxt["kind"] == kind and nxt["key"] == key:
                self._replay.pop(0)
                self.replayed += 1
                self._append(nxt)
                return nxt["value"]
            self.diverged = (f"the resumed run asked for {kind} {key} where the journal has "
                             f"{nxt['kind']} {nxt['key']}; measuring afresh from here")
            self._replay = []
        value = take()
        self._append({"kind": kind, "key": key, "value": value})
        return value

    def skip(self, kind: str, key: str) -> None:
        """A measurement a restored checkpoint already holds: its journal entry is passed over
        (kept in the journal), as if it had been replayed."""
        if self._replay and self.diverged is None:
            nxt = self._replay[0]
            if nxt["kind"] == kind and nxt["key"] == key:
                self._replay.pop(0)
                self._journal.append(nxt)
                return
            self.diverged = (f"the restored search holds {kind} {key} where the journal has "
                             f"{nxt['kind']} {nxt['key']}; measuring afresh from here")
            self._replay = []

    def _append(self, entry: dict[str, Any]) -> None:
        self._journal.append(entry)
        write_json_atomic(self.path / "measurements.json", self._journal + self._replay)

    # ---- stage records -----------------------------------------------------------------
    def record(self, stage: str, value: Any) -> str | None:
        """Keep ``stage``'s record (JSON) as ``stages/STAGE.json``. A resumed run remakes its
        records by replay; one that differs from what the killed run recorded is reported (the
        returned line) and replaced."""
        folder = self.path / "stages"
        folder.mkdir(exist_ok=True)
        f = folder / f"{stage}.json"
        said = None
        if self.resumed and f.is_file():
            try:
                before = json.loads(f.read_text())
            except (OSError, ValueError):
                before = None
            if before != json.loads(json.dumps(value)):
                said = (f"the resumed run's {stage} record differs from the one the killed run "
                        f"kept ({f}); going on with the new one")
        write_json_atomic(f, value)
        return said

    # ---- loops -------------------------------------------------------------------------
    def loop(self, name: str, rank: int, key: str = "", world: Any = None) -> Loop:
        return Loop(self.path / name, rank, key, world)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def restarted_by_torchrun() -> bool:
    """True in a worker group torchrun restarted (``--max-restarts``): it resumes by itself."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0
