"""The output bundle, read back: its manifest, the files it names, the subnet it holds.

Every path the manifest names stays inside the bundle and passes through no symlink, and every
file it names has a hash that must match. Writing a bundle to ``--out`` (lock, staging, commit)
is in ``outdir.py``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

import torch
from safetensors.torch import load_file, save_file

from .architecture import Architecture
from .env import write_atomic, write_json_atomic  # noqa: F401  (imported from here by exporters)
from .errors import BundleError
from .netspec import GraphNet, build_network
from .speccheck import SpecError, check_against_safetensors

FORMAT = "nas2deploy.bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_weights(model: torch.nn.Module, path: Path) -> None:
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(path))


def _check_rel(rel: Any, where: str) -> PurePosixPath:
    if not isinstance(rel, str) or not rel or "\x00" in rel or "\\" in rel:
        raise BundleError(f"{where} names {rel!r}, which is not a relative file path")
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise BundleError(f"{where} names {rel}, which is outside the bundle; a bundle's paths "
                          f"are relative and stay inside it")
    return p


def bundle_file(bundle: str | Path, rel: Any) -> Path:
    """``rel`` inside the bundle: relative, no ``..``, through no symlink, the file no symlink."""
    root = Path(bundle).resolve()
    p = root
    for part in _check_rel(rel, MANIFEST).parts:
        p = p / part
        if p.is_symlink():
            raise BundleError(f"bundle file {rel} passes through a symlink "
                              f"({p.relative_to(root)}); a bundle holds plain files")
    if not p.resolve().is_relative_to(root):
        raise BundleError(f"bundle file {rel} is outside the bundle")
    return p


def _named_files(manifest: dict[str, Any], mpath: Path) -> dict[str, str]:
    """Every file path the manifest names (``files``, ``artifacts[*].files``), checked to be
    relative and inside, with where it is named."""
    named: dict[str, str] = {}
    for key, rel in manifest["files"].items():
        _check_rel(rel, f"{mpath} files.{key}")
        if key != "manifest":
            named.setdefault(rel, f"files.{key}")
    artifacts = manifest.get("artifacts", {})
    if not isinstance(artifacts, dict):
        raise BundleError(f"{mpath} has malformed 'artifacts'; re-run search-and-export")
    for name, art in artifacts.items():
        files = art.get("files") if isinstance(art, dict) else None
        if not isinstance(files, dict):
            raise BundleError(f"{mpath} has a malformed artifact {name!r}")
        for key, rel in files.items():
            _check_rel(rel, f"{mpath} artifacts.{name}.files.{key}")
            named.setdefault(rel, f"artifacts.{name}.files.{key}")
    return named


def verify_files(bundle: str | Path, manifest: dict[str, Any], *,
                 skip: Iterable[str] = ()) -> None:
    """Every file the manifest names has a recorded hash, and every hashed file is a plain
    file inside the bundle with that hash. ``skip``: paths not read (a file about to be
    rebuilt)."""
    root = Path(bundle)
    mpath = root / MANIFEST
    hashes = manifest.get("hashes")
    if not isinstance(hashes, dict) or not hashes:
        raise BundleError(f"{mpath} records no file hashes, so its files cannot be verified; "
                          f"re-run search-and-export")
    for rel, where in _named_files(manifest, mpath).items():
        if rel not in hashes:
            raise BundleError(f"bundle file {rel} ({where}) has no recorded hash in {mpath}")
    skip = set(skip)
    for rel, digest in hashes.items():
        f = bundle_file(root, rel)
        if rel in skip:
            continue
        if not f.is_file():
            raise BundleError(f"bundle file {rel} is missing from {root}")
        if not isinstance(digest, str) or sha256(f) != digest:
            raise BundleError(f"bundle file {rel} does not match its recorded hash (corrupt or "
                              f"modified)")


def read_manifest(bundle: str | Path, *, check_hashes: bool = True) -> dict[str, Any]:
    """The manifest, its paths checked; with ``check_hashes`` every file verified as well."""
    root = Path(bundle)
    if not root.is_dir():
        raise BundleError(f"bundle {root} is not a directory; pass the --out folder of a run")
    mpath = root / MANIFEST
    if mpath.is_symlink():
        raise BundleError(f"{mpath} is a symlink; a bundle's manifest is a file inside it")
    if not mpath.is_file():
        raise BundleError(f"{root} has no {MANIFEST}; is it a nas2deploy bundle?")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{mpath} is corrupt ({exc}); re-run search-and-export") from exc
    except OSError as exc:
        raise BundleError(f"cannot read {mpath} ({exc.strerror})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{mpath} is not a nas2deploy manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{mpath} has format version {manifest.get('format_version')!r}; this "
                          f"nas2deploy reads {FORMAT_VERSION}")
    for key in ("files", "target", "latency"):
        if not isinstance(manifest.get(key), dict):
            raise BundleError(f"{mpath} lacks {key!r}; re-run search-and-export")
    _named_files(manifest, mpath)
    if check_hashes:
        verify_files(root, manifest)
    return manifest


def load_bundle(path: str | Path) -> GraphNet:
    """The PyTorch subnet of a bundle, rebuilt from architecture.json + model.safetensors."""
    root = Path(path)
    manifest = read_manifest(root)
    files = manifest["files"]
    for key in ("architecture", "weights"):
        if key not in files:
            raise BundleError(f"{root / MANIFEST} names no {key} file; re-run search-and-export")
    arch = Architecture.load(bundle_file(root, files["architecture"]))
    wpath = bundle_file(root, files["weights"])
    try:  # the weights file's header must describe this network before either is built
        check_against_safetensors(arch.network, wpath)
    except SpecError as exc:
        raise BundleError(str(exc)) from exc
    net = build_network(arch.network)
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
