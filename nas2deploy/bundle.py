"""The output bundle: written into a temporary sibling directory, then renamed into place.

An existing bundle is replaced only when asked, and only after the new one is complete, so a
failed or interrupted run never leaves a half-written bundle where a good one was.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, save_file

from .architecture import Architecture
from .errors import BundleError, UsageError
from .netspec import GraphNet, build_network

FORMAT = "nas2deploy.bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Fail fast, before any work, if ``out`` cannot receive a bundle."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; choose a directory path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"{out} already exists and is not empty; pass --overwrite to replace it "
                         f"or choose another --out")
    parent = out.resolve().parent
    if not parent.is_dir():
        raise UsageError(f"parent directory of --out {out} does not exist; create {parent} first")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"cannot write in {parent}; choose another --out")


@contextmanager
def staged_bundle(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary directory next to ``out``; on success it atomically becomes ``out``."""
    check_out_dir(out, overwrite)
    out = out.resolve()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rename(out, old / "bundle")
        try:
            os.rename(tmp, out)
        except OSError:
            if old is not None:  # put the previous bundle back
                os.rename(old / "bundle", out)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def save_weights(model: torch.nn.Module, path: Path) -> None:
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(path))


def read_manifest(bundle: str | Path, *, check_hashes: bool = True) -> dict[str, Any]:
    root = Path(bundle)
    if not root.is_dir():
        raise BundleError(f"bundle {root} is not a directory; pass the --out folder of a run")
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{root} has no {MANIFEST}; is it a nas2deploy bundle?")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{mpath} is corrupt ({exc}); re-run search-and-export") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{mpath} is not a nas2deploy manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{mpath} has format version {manifest.get('format_version')!r}; this "
                          f"nas2deploy reads {FORMAT_VERSION}")
    for key in ("files", "target", "latency"):
        if not isinstance(manifest.get(key), dict):
            raise BundleError(f"{mpath} lacks {key!r}; re-run search-and-export")
    if check_hashes:
        for rel, digest in manifest.get("hashes", {}).items():
            f = root / rel
            if not f.is_file():
                raise BundleError(f"bundle file {rel} is missing from {root}")
            if sha256(f) != digest:
                raise BundleError(f"bundle file {rel} does not match its recorded hash (corrupt or "
                                  f"modified)")
    return manifest


def load_bundle(path: str | Path) -> GraphNet:
    """The PyTorch subnet of a bundle, rebuilt from architecture.json + model.safetensors."""
    root = Path(path)
    manifest = read_manifest(root)
    files = manifest["files"]
    arch = Architecture.load(root / files.get("architecture", "architecture.json"))
    net = build_network(arch.network)
    wpath = root / files.get("weights", "model.safetensors")
    try:
        state = load_file(str(wpath))
    except Exception as exc:  # safetensors raises its own error types
        raise BundleError(f"cannot read weights {wpath}: {exc}") from exc
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BundleError(f"weights in {wpath} do not fit the architecture: "
                          f"{str(exc).splitlines()[0]}") from exc
    return net.eval()
