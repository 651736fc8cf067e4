"""The ``--out`` directory: a bundle staged in a hidden sibling directory, then swapped in.

Writing: one run at a time per ``--out`` (an flock on ``.NAME.lock`` beside it, holding the
holder's pid, from plan to commit), and only over a nas2deploy bundle or an empty directory, even
with ``--overwrite``. The commit is one atomic exchange of the two directories where the OS has
one (Linux ``renameat2(RENAME_EXCHANGE)``), so some complete bundle is always at ``--out``;
elsewhere two renames, and an old bundle that a kill left parked between them is put back by the
next run. What killed runs leave (staging folders, scratch folders in the temp dir) is removed by
the next run.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import os
import re
import shutil
import stat
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .bundle import read_manifest
from .env import umask
from .errors import BundleError, UsageError

SCRATCH = "nas2deploy-"  # scratch folders in the temp dir: nas2deploy-PID-KIND-random
_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _pause(step: str) -> None:
    """Test hook in the real commit path: with NAS2DEPLOY_PAUSE_AT=STEP a run stops at that
    step (writing its pid to NAS2DEPLOY_PAUSE_FILE) so that tests/test_bundle_safety.py can kill
    it exactly there. Steps: "staged" (bundle complete, before the commit), "exchanged" (new
    bundle in place, old one not yet removed), "parked" (two-rename commit: old bundle moved
    away, new one not yet in); and "LOOP-N" right after a loop's checkpoint of epoch N is
    written ("search-2", "retrain-1-3": see ``nas2deploy.checkpoint.Loop``)."""
    if os.environ.get("NAS2DEPLOY_PAUSE_AT") != step:
        return
    marker = os.environ.get("NAS2DEPLOY_PAUSE_FILE")
    if marker:
        Path(marker).write_text(str(os.getpid()))
    time.sleep(600)


# --------------------------------------------------------------------------------------------
# scratch folders in the temp dir


def scratch_prefix(kind: str) -> str:
    """Prefix for a scratch folder in the temp dir (``tempfile``'s ``prefix=``). The pid in the
    name lets a later run tell a killed run's folder from a live one's (``clear_dead_scratch``)."""
    return f"{SCRATCH}{os.getpid()}-{kind}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def clear_dead_scratch() -> None:
    """Remove this user's scratch folders whose process is gone (a kill -9 skips cleanup)."""
    _clear_scratch(lambda pid: pid != os.getpid() and not _alive(pid))


def clear_own_scratch() -> None:
    """Remove this process's scratch folders, on the way out of an interrupted run: a signal
    that lands between ``mkdtemp`` and the ``with`` that would remove the folder leaves it."""
    _clear_scratch(lambda pid: pid == os.getpid())


def _clear_scratch(remove) -> None:
    base = Path(tempfile.gettempdir())
    try:
        entries = list(base.glob(f"{SCRATCH}*"))
    except OSError:
        return
    for p in entries:
        m = re.fullmatch(rf"{re.escape(SCRATCH)}(\d+)-.+", p.name)
        if m is None or not remove(int(m.group(1))):
            continue
        try:
            st = p.lstat()
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid():
            shutil.rmtree(p, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# --out: check, lock, recover, commit


def is_bundle(path: Path) -> bool:
    try:
        read_manifest(path, check_hashes=False)
    except BundleError:
        return False
    return True


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Fail fast, before any work, if ``out`` cannot receive a bundle: it must be absent, an empty
    directory, or (with ``overwrite``) a nas2deploy bundle."""
    _check_out_path(out)
    if out.is_dir():
        try:
            empty = not any(out.iterdir())
        except OSError as exc:
            raise UsageError(f"cannot read --out {out} ({exc.strerror}); choose another --out")
        if empty:
            return
        if not is_bundle(out):
            raise UsageError(f"{out} is not empty and is not a nas2deploy bundle; nas2deploy "
                             f"replaces only its own bundles (--overwrite included): choose "
                             f"another --out")
        if not overwrite:
            raise UsageError(f"{out} already holds a nas2deploy bundle; pass --overwrite to "
                             f"replace it or choose another --out")


def _check_out_path(out: Path) -> None:
    """``out`` can be created or replaced: not a file, its parent a writable directory."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; choose a directory path")
    if out.is_symlink() and not out.exists():
        raise UsageError(f"--out {out} is a symlink to nothing; choose a directory path")
    parent = out.resolve().parent
    if not parent.is_dir():
        raise UsageError(f"parent directory of --out {out} does not exist; create {parent} first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write in {parent}; choose another --out")


class OutLock:
    """An exclusive ``flock`` on ``.NAME.lock`` beside ``out``, the holder's pid inside. Released
    (and the file removed) by ``release``, by the process that took it; a killed holder's lock
    is free again (the kernel drops it) and the next holder reuses the file."""

    def __init__(self, out: Path):
        self.out = out
        self.path = out.parent / f".{out.name}.lock"
        self._fd: int | None = None
        self._pid = os.getpid()

    def acquire(self) -> "OutLock":
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                             0o644)
            except OSError as exc:
                raise UsageError(f"cannot create the lock {self.path} ({exc.strerror}); choose "
                                 f"another --out") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise UsageError(f"--out {self.out} is in use by another nas2deploy run (pid "
                                 f"{holder}); wait for it to end or choose another --out")
            except OSError as exc:
                os.close(fd)
                raise UsageError(f"cannot lock {self.path} ({exc.strerror}); choose another "
                                 f"--out on a local file system") from exc
            # a holder that released meanwhile removed the file: a lock on it guards nothing
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path, follow_symlinks=False))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self._fd = fd
            return self

    def release(self) -> None:
        if self._fd is None or os.getpid() != self._pid:  # a forked child does not own it
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None

    def __del__(self):
        try:
            self.release()
        except Exception:  # interpreter shutdown
            pass


@contextmanager
def locked_bundle(bundle: str | Path) -> Iterator[Path]:
    """Hold a bundle's ``--out`` lock while its manifest is read and written back, so that no
    run replaces the bundle, and no other update is lost, in between."""
    root = Path(bundle)
    if not root.is_dir():
        raise BundleError(f"bundle {root} is not a directory; pass the --out folder of a run")
    lock = OutLock(root.resolve()).acquire()
    try:
        yield root
    finally:
        lock.release()


def claim_out(out: Path, overwrite: bool) -> OutLock:
    """Check ``out``, lock it, put back a bundle that a killed commit left parked, remove what
    killed runs left, and check what is there. The caller releases the lock it gets."""
    _check_out_path(out)
    lock = OutLock(out.resolve()).acquire()
    try:
        _recover(lock.out)
        _clear_leftovers(lock.out)
        clear_dead_scratch()
        check_out_dir(lock.out, overwrite)
    except BaseException:
        lock.release()
        raise
    return lock


def _leftover(out: Path, kind: str) -> re.Pattern[str]:
    # staging/parking folders are .NAME.KIND-PID-XXXXXXXX (tempfile.mkdtemp's 8 random chars)
    return re.compile(rf"\.{re.escape(out.name)}\.{kind}-\d+-[a-z0-9_]{{8}}")


def _recover(out: Path) -> None:
    """A two-rename commit killed between its renames leaves nothing at ``out`` and the previous
    bundle parked in ``.NAME.old-*/bundle``: put the newest complete one back."""
    if os.path.lexists(out):
        return
    pattern = _leftover(out, "old")
    parked = [p / "bundle" for p in out.parent.iterdir()
              if pattern.fullmatch(p.name) and not p.is_symlink()
              and not (p / "bundle").is_symlink() and is_bundle(p / "bundle")]
    if parked:
        newest = max(parked, key=lambda p: p.stat().st_mtime)
        os.rename(newest, out)


def _clear_leftovers(out: Path) -> None:
    """Staging and parking folders of runs that no longer hold the lock (killed ones)."""
    patterns = (_leftover(out, "tmp"), _leftover(out, "old"))
    for p in list(out.parent.iterdir()):
        if any(pat.fullmatch(p.name) for pat in patterns):
            _remove(p)


def _remove(path: Path) -> None:
    if path.is_symlink():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


@functools.lru_cache(maxsize=1)
def _renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a libc without it (glibc < 2.28)
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories atomically; False where the OS or file system cannot."""
    # NAS2DEPLOY_COMMIT=rename takes the two-rename path, as on systems without the exchange
    fn = None if os.environ.get("NAS2DEPLOY_COMMIT") == "rename" else _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _commit(tmp: Path, out: Path) -> None:
    if not os.path.lexists(out):
        os.rename(tmp, out)
        return
    if _exchange(tmp, out):  # the new bundle is at out, the old one in tmp (removed by caller)
        _pause("exchanged")
        return
    park = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-", dir=out.parent))
    os.rename(out, park / "bundle")
    try:
        _pause("parked")
        os.rename(tmp, out)
    except BaseException:
        os.rename(park / "bundle", out)
        raise
    finally:
        _remove(park)


@contextmanager
def staged_bundle(out: Path, overwrite: bool, lock: OutLock | None = None) -> Iterator[Path]:
    """Yield a temporary directory next to ``out``; on success it atomically becomes ``out``.

    ``lock``: the lock ``claim_out`` gave (held since the plan, released by its owner); without
    one, ``out`` is claimed here and released at the end. What is at ``out`` is checked again
    at the commit: it may have changed since the plan."""
    own = lock is None
    if lock is None:
        lock = claim_out(out, overwrite)
    out = lock.out
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
        try:
            yield tmp
            _pause("staged")
            check_out_dir(out, overwrite)
            os.chmod(tmp, 0o777 & ~umask())  # mkdtemp's 0o700 is for staging only
            _commit(tmp, out)
        finally:
            _remove(tmp)  # after an exchange: the previous bundle
    finally:
        if own:
            lock.release()
