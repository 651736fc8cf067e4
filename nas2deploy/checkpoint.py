"""Checkpoints without pickles: a tree of dicts, lists, numbers, strings and tensors (a
``state_dict``, an optimizer's state, generator states, a method's own record) written as a JSON
skeleton beside a safetensors file of its tensors.

``Store(folder)`` keeps the latest checkpoint of one loop (a search, a retrain): ``save(step,
tree)`` writes ``ckpt-STEP.safetensors`` and then ``ckpt-STEP.json`` (which holds the tensors
file's SHA-256), each atomically, then removes older ones; ``load()`` returns the newest
checkpoint whose two files agree, so a kill at any point leaves the previous one usable.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .distributed import World, share
from .env import write_atomic
from .errors import UsageError

FORMAT = 1
_NAME = re.compile(r"ckpt-(\d{6})\.json")


def encode(tree: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """(JSON-able skeleton, tensors by key) of ``tree``."""
    tensors: dict[str, torch.Tensor] = {}

    def enc(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            key = f"t{len(tensors)}"
            tensors[key] = v.detach().to("cpu", copy=True).contiguous()
            return {"__tensor__": key}
        if isinstance(v, torch.Generator):
            return {"__generator__": enc(v.get_state())}
        if isinstance(v, dict):
            if all(isinstance(k, str) and not k.startswith("__") for k in v):
                return {k: enc(x) for k, x in v.items()}
            return {"__items__": [[enc(k), enc(x)] for k, x in v.items()]}
        if isinstance(v, tuple):
            return {"__tuple__": [enc(x) for x in v]}
        if isinstance(v, list):
            return [enc(x) for x in v]
        if isinstance(v, (bool, int, float, str)) or v is None:
            return v
        if isinstance(v, np.generic):
            return v.item()
        if isinstance(v, np.ndarray):
            return {"__ndarray__": enc(torch.from_numpy(np.ascontiguousarray(v)))}
        raise TypeError(f"cannot checkpoint a {type(v).__name__}")

    return enc(tree), tensors


def decode(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    def dec(v: Any) -> Any:
        if isinstance(v, list):
            return [dec(x) for x in v]
        if not isinstance(v, dict):
            return v
        if "__tensor__" in v:
            return tensors[v["__tensor__"]]
        if "__generator__" in v:
            g = torch.Generator()
            g.set_state(dec(v["__generator__"]))
            return g
        if "__items__" in v:
            return {_hashable(dec(k)): dec(x) for k, x in v["__items__"]}
        if "__tuple__" in v:
            return tuple(dec(x) for x in v["__tuple__"])
        if "__ndarray__" in v:
            return dec(v["__ndarray__"]).numpy()
        return {k: dec(x) for k, x in v.items()}

    return dec(skeleton)


def _hashable(k: Any) -> Any:
    return tuple(k) if isinstance(k, list) else k


class Store:
    """The latest checkpoint of one loop, in ``folder``."""

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)

    def save(self, step: int, tree: Any) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        skeleton, tensors = encode(tree)
        blob = st_save(tensors) if tensors else b""
        stem = f"ckpt-{step:06d}"
        write_atomic(self.folder / f"{stem}.safetensors", blob)
        write_atomic(self.folder / f"{stem}.json", json.dumps(
            {"format": FORMAT, "step": step, "sha256": hashlib.sha256(blob).hexdigest(),
             "tree": skeleton}))
        for old in self.folder.glob("ckpt-*"):
            if not old.name.startswith(stem):
                old.unlink(missing_ok=True)

    def load(self) -> tuple[int, Any] | None:
        """(step, tree) of the newest complete checkpoint; None if there is none. A checkpoint
        whose files do not agree is skipped (a kill between its two writes); one that is not a
        nas2deploy checkpoint at all is an error."""
        if not self.folder.is_dir():
            return None
        for meta in sorted(self.folder.glob("ckpt-*.json"), reverse=True):
            m = _NAME.fullmatch(meta.name)
            blob_path = meta.with_suffix(".safetensors")
            if m is None or not blob_path.is_file():
                continue
            try:
                head = json.loads(meta.read_text())
            except (OSError, ValueError) as exc:
                raise UsageError(f"checkpoint {meta} is not readable JSON ({exc})") from None
            if not isinstance(head, dict) or head.get("format") != FORMAT or "tree" not in head:
                raise UsageError(f"{meta} is not a nas2deploy checkpoint (format {FORMAT})")
            blob = blob_path.read_bytes()
            if hashlib.sha256(blob).hexdigest() != head.get("sha256"):
                continue
            try:
                tensors = st_load(blob) if blob else {}
                return int(head["step"]), decode(head["tree"], tensors)
            except Exception as exc:  # safetensors raises its own types
                raise UsageError(f"checkpoint {blob_path} is corrupt ({exc})") from None
        return None


def share_tree(world: World, tree: Any = None) -> Any:
    """Rank 0's ``tree`` (a checkpoint: dicts, lists, numbers, tensors) on every rank: its JSON
    skeleton through ``share``, its tensors broadcast one by one. Ranks on other nodes need not
    see rank 0's files."""
    if not world.distributed:
        return tree
    skeleton, tensors = encode(tree) if world.leader else (None, {})
    head = share(world, (lambda: {"skeleton": skeleton, "tensors": [
        [k, str(t.dtype).removeprefix("torch."), list(t.shape)] for k, t in tensors.items()]})
        if world.leader else None)
    dev = torch.device("cuda", torch.cuda.current_device()) if world.backend == "nccl" else None
    out: dict[str, torch.Tensor] = {}
    for key, dtype, shape in head["tensors"]:
        t = (tensors[key] if world.leader
             else torch.empty(shape, dtype=getattr(torch, dtype)))
        buf = t.to(dev) if dev is not None else t
        dist.broadcast(buf, src=0)
        out[key] = buf.cpu() if dev is not None else buf
    return decode(head["skeleton"], out)


class Loop:
    """Checkpoints of one loop in a data-parallel run: rank 0 writes the loop's state (the same
    on every rank), each rank its own global RNG states (torch, numpy, python, CUDA) under
    ``rng-RANK`` (on its own node). On resume rank 0 reads the state and ``world`` (a
    ``nas2deploy.distributed.World``) hands it to the others. ``key`` names what is being
    trained: a checkpoint of another key is not resumed."""

    def __init__(self, folder: Path | str, rank: int = 0, key: str = "", world: Any = None):
        self.folder, self.rank, self.key, self.world = Path(folder), rank, key, world
        self.state = Store(self.folder)
        self.rng = Store(self.folder / f"rng-{rank}")

    def save(self, step: int, tree: Any) -> None:
        if self.rank == 0:
            self.state.save(step, {"key": self.key, "tree": tree})
        self.rng.save(step, rng_state())
        from .outdir import _pause

        _pause(f"{self.folder.name}-{step}")  # tests kill -9 a run exactly here
        _crash(f"{self.folder.name}-{step}", self.rank)

    def load(self, log: Callable[[str], None] = lambda m: None) -> tuple[int, Any] | None:
        if self.world is not None and self.world.distributed:
            # rank 0 reads; the others receive (their node need not share its filesystem)
            loaded = share_tree(self.world, list(self.state.load() or ()) if self.rank == 0
                                else None)
            loaded = tuple(loaded) if loaded else None
        else:
            loaded = self.state.load()
        if loaded is None:
            return None
        step, wrapped = loaded
        if not isinstance(wrapped, dict) or wrapped.get("key") != self.key:
            log(f"checkpoint in {self.folder} is of another run of this loop; starting it afresh")
            return None
        rng = self.rng.load()
        if rng is not None and rng[0] == step:
            set_rng_state(rng[1])
        else:
            log(f"no RNG state of rank {self.rank} at step {step}: global RNG not restored")
        log(f"resuming {self.folder.name} after epoch {step}")
        return step, wrapped["tree"]


def _crash(step: str, rank: int) -> None:
    """Test hook: with NAS2DEPLOY_CRASH_AT=STEP:RANK, that rank kills itself (SIGKILL) right
    after the checkpoint STEP, in the first worker group torchrun starts only, so that a
    ``--max-restarts`` restart can be seen to resume."""
    if os.environ.get("NAS2DEPLOY_CRASH_AT") != f"{step}:{rank}":
        return
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) == 0:
        os.kill(os.getpid(), signal.SIGKILL)


def module_state(module: torch.nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """Every parameter and every buffer of ``module``, non-persistent ones included (a
    supernet's elastic widths live in such buffers, and their shapes change as it searches)."""
    return {"params": {k: v.detach() for k, v in module.named_parameters()},
            "buffers": {k: v for k, v in module.named_buffers() if v is not None}}


@torch.no_grad()
def load_module_state(module: torch.nn.Module, state: dict[str, dict[str, torch.Tensor]]) -> None:
    """``module_state`` put back in place, each tensor on the device its slot is on now.
    Parameters are written into (optimizers keep referring to them); buffers are replaced."""
    params = dict(module.named_parameters())
    if set(params) != set(state["params"]):
        raise UsageError("checkpoint does not match the supernet (another space?): parameters "
                         f"differ ({sorted(set(params) ^ set(state['params']))[:3]})")
    for name, value in state["params"].items():
        p = params[name]
        if p.shape == value.shape:
            p.copy_(value)
        else:
            p.data = value.to(p.device, p.dtype)
    owners = dict(module.named_modules())
    for name, value in state["buffers"].items():
        owner, _, leaf = name.rpartition(".")
        mod = owners[owner]
        old = mod._buffers.get(leaf)
        mod._buffers[leaf] = value.to(old.device if old is not None else value.device)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(v: Any) -> Any:
    return tuple(_tuples(x) for x in v) if isinstance(v, (list, tuple)) else v
