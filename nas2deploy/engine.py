"""``nas2deploy build-engine``: finish a bundle's artifact on the machine that runs it.

Some formats can only be finished on the device: a TensorRT engine only runs on the GPU model and
TensorRT version that built it, so the bundle carries the ONNX file and a checked build script,
and the engine is built there. The exporter of such a format (found through the registry, like
every exporter) says so by implementing ``build_engine(bundle_dir, artifact, precision=...,
method=...)`` and declaring which files that build reads and writes; this module reads the
manifest, checks what the build will read, calls it, and writes the manifest back with the new
files recorded and hashed.

Also here: what can be read about the GPU (name, compute capability, clocks) for the records.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable

from . import registry
from .bundle import MANIFEST, bundle_file, read_manifest, sha256, verify_files, write_json_atomic
from .errors import BundleError, UnavailableError, UsageError
from .exporter import Artifact
from .outdir import locked_bundle

# Jetson boards expose the integrated GPU's clock through devfreq, not nvidia-smi
_JETSON_GPU_DEVFREQ = ("gpu", "gv11b", "ga10b", "gp10b", "gb10b")


def gpu_visible() -> bool:
    """A CUDA GPU this machine can build for: torch sees one, nvidia-smi lists one, or a Jetson."""
    try:
        import torch

        if torch.cuda.is_available():
            return True
    except Exception:
        pass
    if Path("/etc/nv_tegra_release").is_file() or Path("/dev/nvhost-ctrl-gpu").exists():
        return True
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            res = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
            return res.returncode == 0 and "GPU" in res.stdout
        except (OSError, subprocess.SubprocessError):
            return False
    return False


def gpu_info() -> dict[str, Any]:
    """Name, compute capability and current clocks (MHz) of GPU 0, as far as they can be read."""
    info: dict[str, Any] = {}
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info["name"] = props.name
            info["compute_capability"] = f"{props.major}.{props.minor}"
            info["memory_mib"] = props.total_memory >> 20
    except Exception:
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            res = subprocess.run([smi, "--query-gpu=name,clocks.sm,clocks.mem,clocks.max.sm",
                                  "--format=csv,noheader,nounits", "-i", "0"],
                                 capture_output=True, text=True, timeout=10)
            if res.returncode == 0 and res.stdout.strip():
                name, sm, mem, max_sm = [v.strip() for v in res.stdout.splitlines()[0].split(",")]
                info.setdefault("name", name)
                for key, value in (("sm_clock_mhz", sm), ("mem_clock_mhz", mem),
                                   ("max_sm_clock_mhz", max_sm)):
                    if value.isdigit():
                        info[key] = int(value)
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
    if "sm_clock_mhz" not in info:
        for dev in sorted(glob.glob("/sys/class/devfreq/*")):
            name = Path(os.path.realpath(dev)).name.lower()
            if any(k in name for k in _JETSON_GPU_DEVFREQ):
                try:
                    info["sm_clock_mhz"] = int(Path(dev, "cur_freq").read_text()) // 1_000_000
                    info["max_sm_clock_mhz"] = int(Path(dev, "max_freq").read_text()) // 1_000_000
                except (OSError, ValueError):
                    pass
                break
    if "name" not in info:
        model = Path("/proc/device-tree/model")
        if model.is_file():
            info["name"] = model.read_text(errors="replace").strip("\x00 \n")
    return info


def build_engine(bundle: str | Path, *, precision: str | None = None, trtexec: bool = False,
                 log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Build the bundle's engine here, record it in the manifest, return the artifact's info."""
    with locked_bundle(bundle) as root:
        return _build_engine(root, precision, trtexec, log)


def _device_builders() -> list[str]:
    """Registered exporters whose artifact is built on the device (they have ``build_engine``)."""
    return [e.name for e in registry.exporters.entries()
            if e.obj is not None and callable(getattr(e.obj, "build_engine", None))]


def _build_engine(root: Path, precision: str | None, trtexec: bool,
                  log: Callable[[str], None]) -> dict[str, Any]:
    manifest = read_manifest(root, check_hashes=False)
    builders = _device_builders()
    if not builders:
        raise UnavailableError(f"no installed exporter builds on the device; installed exporters: "
                               f"{', '.join(registry.exporters.names()) or 'none'}")
    artifacts = manifest.get("artifacts", {})
    name = next((n for n in builders if n in artifacts), builders[0])
    cls = registry.exporters.get(name)
    entry = artifacts.get(name)
    if entry is None:
        chain = ",".join((*cls.needs, name))
        raise UsageError(f"{root} has no {name} artifact; export with --export {chain} "
                         f"(the bundle then carries what the build on the device reads)")
    # every file is verified but those the build writes (they may be missing, or built by
    # hand); the files the build reads must be files the manifest hashes
    verify_files(root, manifest, skip=[rel for key, rel in entry["files"].items()
                                       if key in cls.device_build_writes])
    info = entry.get("info")
    if not isinstance(info, dict):
        raise BundleError(f"{root / MANIFEST} has a malformed {name} artifact (no info)")
    for key in cls.device_build_reads:
        rel = info.get(key)
        if rel is not None and rel not in manifest["hashes"]:
            raise BundleError(f"{root / MANIFEST} names {rel} as the {name} artifact's {key} "
                              f"but records no hash for it")
    artifact = Artifact(name, dict(entry["files"]), dict(info))
    method = "trtexec" if trtexec else "auto"
    built: Artifact = cls().build_engine(root, artifact, precision=precision, method=method,
                                         log=log)

    manifest["artifacts"][name] = {"files": built.files, "info": built.info}
    files = manifest.setdefault("files", {})
    for key, rel in built.files.items():
        files[name if key == "model" else f"{name}_{key}"] = rel
    paths = {rel: bundle_file(root, rel) for key, rel in sorted(files.items()) if key != "manifest"}
    manifest["hashes"] = {rel: sha256(path) for rel, path in paths.items() if path.is_file()}
    write_json_atomic(root / MANIFEST, manifest)
    return built.info
