"""Bounds checks and size estimates of a network spec, computed from the spec alone.

``validate_spec`` checks that every op parameter is typed and in range and that shapes agree
along every edge; ``estimate_params`` and ``estimate_state_numel`` size the network the spec
describes; ``check_against_safetensors`` checks a weights file's header against it. Nothing is
built: a crafted architecture.json fails with one line before it can allocate anything.
"""

from __future__ import annotations

import inspect
import json
import math
import re
import struct
from pathlib import Path
from typing import Any

from .errors import UsageError
from .ops import ACTS, OPS

_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# What a spec may ask for, checked before any module is built: an architecture.json is input
# like any other, and a crafted one must fail with one line, not allocate until the OOM killer
# steps in. Each cap is far above anything a search here produces.
MAX_NODES = 10_000
MAX_ID_LENGTH = 200
MAX_CHANNELS = 16_384
MAX_KERNEL = 15
MAX_STRIDE = 4
MAX_INPUT_HW = 4096
MAX_CLASSES = 100_000
MAX_PARAMS = 1_000_000_000  # 4 GB of fp32 weights
MAX_ACTIVATION = 1 << 28  # elements of one image's largest feature map: 1 GiB in fp32
POOL_KINDS = ("max", "avg")


class SpecError(UsageError):
    """A network spec is malformed."""


def validate_spec(spec: Any) -> None:
    """Raise SpecError unless ``spec`` is well formed, every op parameter is typed and in range,
    shapes agree along every edge, and the whole stays under MAX_PARAMS weights and
    MAX_ACTIVATION elements per feature map. Computed from the spec alone: nothing is built."""
    params, _, largest = _analyse(spec)
    if params > MAX_PARAMS:
        raise SpecError(f"network has {params:,} parameters, more than the {MAX_PARAMS:,} "
                        f"nas2deploy builds; the architecture is corrupt or not meant for it")
    nid, elements = largest
    if elements > MAX_ACTIVATION:
        raise SpecError(f"node {nid!r} has a {elements:,}-element activation per image, more than "
                        f"the {MAX_ACTIVATION:,} nas2deploy allows; the architecture is corrupt or "
                        f"not meant for it")


def estimate_params(spec: Any) -> int:
    """Trainable parameters of the network ``spec`` describes (what ``count_params`` would say
    of the built net), from the spec alone."""
    return _analyse(spec)[0]


def estimate_state_numel(spec: Any) -> int:
    """Elements of the built net's ``state_dict`` (parameters and BatchNorm buffers): what its
    weights file holds."""
    return _analyse(spec)[1]


# bytes per element of the safetensors dtypes
_ST_DTYPES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2,
              "F16": 2, "BF16": 2, "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8}
_ST_MAX_HEADER = 100 << 20  # safetensors' own limit


def check_against_safetensors(spec: Any, path: str | Path) -> int:
    """Check that the weights file at ``path`` holds as many elements as ``spec`` needs, reading
    only its header (8 bytes of little-endian length, then JSON), so a file that belongs to
    another network is refused before either is loaded. Returns the element count."""
    expected = estimate_state_numel(spec)
    p = Path(path)
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise SpecError(f"weights {p} are not a safetensors file ({len(head)} bytes)")
            (length,) = struct.unpack("<Q", head)
            if length > min(_ST_MAX_HEADER, size - 8):
                raise SpecError(f"weights {p} are corrupt: header length {length:,} for a file "
                                f"of {size:,} bytes")
            raw = f.read(length)
    except OSError as exc:
        raise SpecError(f"cannot read weights {p}: {exc.strerror or exc}") from exc
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise SpecError(f"weights {p} have a corrupt header ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise SpecError(f"weights {p} have a corrupt header (not a JSON object)")
    total, end = 0, 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        dtype = entry.get("dtype") if isinstance(entry, dict) else None
        if (not isinstance(dtype, str) or dtype not in _ST_DTYPES
                or not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape)
                or not isinstance(offsets, list) or len(offsets) != 2
                or not all(_is_int(o) for o in offsets) or not 0 <= offsets[0] <= offsets[1]):
            raise SpecError(f"weights {p}: tensor {_show(name)} has a malformed header entry")
        numel = math.prod(shape)
        if offsets[1] - offsets[0] != numel * _ST_DTYPES[dtype]:
            raise SpecError(f"weights {p}: tensor {_show(name)} spans {offsets[1] - offsets[0]:,} "
                            f"bytes for {numel:,} {dtype} elements")
        total += numel
        end = max(end, offsets[1])
    if 8 + length + end > size:
        raise SpecError(f"weights {p} are truncated: the header describes {8 + length + end:,} "
                        f"bytes, the file has {size:,}")
    if total != expected:
        raise SpecError(f"weights {p} hold {total:,} elements, the architecture needs "
                        f"{expected:,}; they belong to another network")
    return total


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _show(v: Any) -> str:
    """A short repr, safe for ints too long to print."""
    try:
        text = repr(v)
    except ValueError:  # an int past sys.get_int_max_str_digits()
        return f"<a {v.bit_length()}-bit integer>"
    return text if len(text) <= 60 else text[:57] + "..."


def _int_in(nid: str, name: str, v: Any, lo: int, hi: int) -> int:
    if not _is_int(v) or not lo <= v <= hi:
        raise SpecError(f"node {nid!r}: {name} must be an integer in {lo}..{hi}, not {_show(v)}")
    return v


def _check_param(nid: str, name: str, v: Any) -> None:
    """One op parameter, typed and in range."""
    if name in ("c_in", "c_out", "c", "mid", "groups"):
        _int_in(nid, name, v, 1, MAX_CHANNELS)
    elif name == "se":
        _int_in(nid, name, v, 0, MAX_CHANNELS)
    elif name == "k":
        if _int_in(nid, name, v, 1, MAX_KERNEL) % 2 == 0:
            raise SpecError(f"node {nid!r}: k must be odd, not {v}")
    elif name == "stride":
        _int_in(nid, name, v, 1, MAX_STRIDE)
    elif name == "num_classes":
        _int_in(nid, name, v, 1, MAX_CLASSES)
    elif name in ("bn", "expand"):
        if not isinstance(v, bool):
            raise SpecError(f"node {nid!r}: {name} must be true or false, not {_show(v)}")
    elif name == "act":
        if not isinstance(v, str) or v not in ACTS:
            raise SpecError(f"node {nid!r}: act must be one of {', '.join(ACTS)}, not {_show(v)}")
    elif name == "kind":
        if not isinstance(v, str) or v not in POOL_KINDS:
            raise SpecError(f"node {nid!r}: kind must be one of {', '.join(POOL_KINDS)}, not "
                            f"{_show(v)}")
    elif name == "dropout":
        if not (_is_num(v) and 0 <= v < 1):
            raise SpecError(f"node {nid!r}: dropout must be a number in [0, 1), not {_show(v)}")
    elif name == "coeffs":
        if v is not None and not (isinstance(v, list) and all(_is_num(c) for c in v)):
            raise SpecError(f"node {nid!r}: coeffs must be a list of finite numbers, not "
                            f"{_show(v)}")
    elif name == "drop_path":
        if v is not None and not (isinstance(v, list) and all(_is_num(q) and 0 <= q < 1
                                                                for q in v)):
            raise SpecError(f"node {nid!r}: drop_path must be a list of probabilities in [0, 1), "
                            f"not {_show(v)}")
    else:  # an op gained a parameter this check does not know: refuse rather than pass it on
        raise SpecError(f"node {nid!r}: parameter {name!r} has no bounds check")


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _op_defaults(op: str) -> dict[str, Any]:
    """Parameter name -> default (inspect.Parameter.empty: required) of an op's constructor."""
    sig = inspect.signature(OPS[op].__init__)
    return {name: prm.default for name, prm in list(sig.parameters.items())[1:]
            if prm.kind not in (prm.VAR_POSITIONAL, prm.VAR_KEYWORD)}


_DEFAULTS = {op: _op_defaults(op) for op in OPS}


def _bn(c: int) -> tuple[int, int]:
    """(parameters, state elements) of a BatchNorm2d: weight, bias; running mean, var, count."""
    return 2 * c, 4 * c + 1


def _op_size(op: str, p: dict[str, Any]) -> tuple[int, int]:
    """(parameters, state elements) of an op, as ops.py builds it."""
    if op == "conv":
        w = p["c_out"] * (p["c_in"] // p["groups"]) * p["k"] ** 2
        if not p["bn"]:
            return w + p["c_out"], w + p["c_out"]
        bp, bs = _bn(p["c_out"])
        return w + bp, w + bs
    if op == "sep":
        w = p["c_in"] * p["k"] ** 2 + p["c_out"] * p["c_in"]
        bp, bs = _bn(p["c_out"])
        return w + bp, w + bs
    if op in ("pool", "bn_act"):
        return _bn(p["c"])
    if op == "mbconv":
        c_in, mid, c_out, se = p["c_in"], p["mid"], p["c_out"], p["se"]
        parts = [(mid * p["k"] ** 2, mid), (mid * c_out, c_out)]
        if p["expand"]:
            parts.append((c_in * mid, mid))
        params = state = 0
        for w, c in parts:  # each conv is followed by a BatchNorm2d
            bp, bs = _bn(c)
            params, state = params + w + bp, state + w + bs
        if se:
            w = 2 * mid * se + se + mid  # reduce and expand 1×1 convs, with biases
            params, state = params + w, state + w
        return params, state
    if op == "head":
        w = p["c_in"] * p["num_classes"] + p["num_classes"]
        return w, w
    return 0, 0  # sum, identity


def _analyse(spec: Any) -> tuple[int, int, tuple[str, int]]:
    """Check ``spec`` without building it: (parameters, state elements, (node id, elements) of
    the largest activation)."""
    if not isinstance(spec, dict):
        raise SpecError("network spec must be an object")
    for key in ("input", "num_classes", "nodes", "output"):
        if key not in spec:
            raise SpecError(f"network spec lacks {key!r}")
    inp = spec["input"]
    size = inp.get("size") if isinstance(inp, dict) else None
    if (not isinstance(inp, dict) or not _is_int(inp.get("channels"))
            or not isinstance(size, list) or len(size) != 2):
        raise SpecError("network spec 'input' must be {'channels': int, 'size': [h, w]}")
    c = inp["channels"]
    if not 1 <= c <= MAX_CHANNELS or not all(_is_int(s) and 1 <= s <= MAX_INPUT_HW for s in size):
        raise SpecError(f"network spec 'input' must have 1..{MAX_CHANNELS} channels and a size of "
                        f"1..{MAX_INPUT_HW} pixels a side, not {_show(inp)}")
    n_cls = spec["num_classes"]
    if not _is_int(n_cls) or not 1 <= n_cls <= MAX_CLASSES:
        raise SpecError(f"network spec num_classes must be an integer in 1..{MAX_CLASSES}, not "
                        f"{_show(n_cls)}")
    nodes = spec["nodes"]
    if not isinstance(nodes, list) or not nodes:
        raise SpecError("network spec has no nodes")
    if len(nodes) > MAX_NODES:
        raise SpecError(f"network spec has {len(nodes):,} nodes, more than the {MAX_NODES:,} "
                        f"nas2deploy builds")
    # a node's output: (channels, h, w), or (classes,) after a head
    shapes: dict[str, tuple[int, ...]] = {"input": (c, size[0], size[1])}
    largest = ("input", c * size[0] * size[1])
    params = state = 0
    for n in nodes:
        if (not isinstance(n, dict) or not isinstance(n.get("id"), str)
                or len(n["id"]) > MAX_ID_LENGTH or not _ID.match(n["id"])):
            raise SpecError(f"bad node id in {_show(n)}")
        nid, op = n["id"], n.get("op")
        if nid in shapes:
            raise SpecError(f"duplicate node id {nid!r}")
        if not isinstance(op, str) or op not in OPS:
            raise SpecError(f"node {nid!r}: unknown op {_show(op)}; known: {', '.join(OPS)}")
        ins = n.get("inputs")
        if not isinstance(ins, list) or not ins:
            raise SpecError(f"node {nid!r} has no inputs")
        if len(ins) > MAX_NODES:
            raise SpecError(f"node {nid!r} has {len(ins):,} inputs")
        for i in ins:
            if not isinstance(i, str) or i not in shapes:
                raise SpecError(f"node {nid!r} reads {_show(i)}, which is not an earlier node")
        defaults = _DEFAULTS[op]
        given = {k: v for k, v in n.items() if k not in ("id", "op", "inputs")}
        unknown = sorted(set(given) - set(defaults))
        if unknown:
            raise SpecError(f"node {nid!r} ({op}): unknown parameter(s) "
                            f"{', '.join(_show(u) for u in unknown)}; known: "
                            f"{', '.join(defaults) or 'none'}")
        p = {**defaults, **given}
        for name, v in p.items():
            if v is inspect.Parameter.empty:
                raise SpecError(f"node {nid!r} ({op}) lacks {name!r}")
            _check_param(nid, name, v)
        out = _out_shape(nid, op, p, [shapes[i] for i in ins])
        shapes[nid] = out
        acts = [out] + ([(p["mid"], *shapes[ins[0]][1:])] if op == "mbconv" else [])
        for a in acts:
            if math.prod(a) > largest[1]:
                largest = (nid, math.prod(a))
        dp, ds = _op_size(op, p)
        params, state = params + dp, state + ds
    out = spec["output"]
    if not isinstance(out, str) or out == "input" or out not in shapes:
        raise SpecError(f"output {_show(out)} is not a node")
    return params, state, largest


def _out_shape(nid: str, op: str, p: dict[str, Any], ins: list[tuple[int, ...]]) -> tuple[int, ...]:
    """The shape a node produces from its inputs' shapes; SpecError where they do not fit."""
    if op == "sum":
        if any(s != ins[0] for s in ins):
            raise SpecError(f"node {nid!r}: a sum needs inputs of one shape, not "
                            f"{', '.join('x'.join(map(str, s)) for s in ins)}")
        if p["coeffs"] is not None and len(p["coeffs"]) != len(ins):
            raise SpecError(f"node {nid!r}: {len(p['coeffs'])} coeffs for {len(ins)} inputs")
        if p["drop_path"] is not None and len(p["drop_path"]) != len(ins):
            raise SpecError(f"node {nid!r}: {len(p['drop_path'])} drop_path probabilities for "
                            f"{len(ins)} inputs")
        return ins[0]
    if len(ins) != 1:
        raise SpecError(f"node {nid!r} ({op}) takes one input, not {len(ins)}")
    (x,) = ins
    if op == "identity":
        return x
    if len(x) != 3:
        raise SpecError(f"node {nid!r} ({op}) reads a head's output; only a sum or an identity "
                        f"may")
    c, h, w = x
    c_in = p["c"] if "c" in p else p["c_in"]
    if c_in != c:
        name = "c" if "c" in p else "c_in"
        raise SpecError(f"node {nid!r} ({op}): {name} is {c_in}, but its input has {c} channels")
    if op == "head":
        return (p["num_classes"],)
    if op == "conv" and (p["c_in"] % p["groups"] or p["c_out"] % p["groups"]):
        raise SpecError(f"node {nid!r}: groups {p['groups']} must divide c_in {p['c_in']} and "
                        f"c_out {p['c_out']}")
    if op == "mbconv" and not p["expand"] and p["mid"] != p["c_in"]:
        raise SpecError(f"node {nid!r}: mid must equal c_in without expansion ({p['mid']} != "
                        f"{p['c_in']})")
    if op == "bn_act":
        return x
    k, s = p["k"], p["stride"]
    return (p.get("c_out", c), _out_hw(h, k, s), _out_hw(w, k, s))


def _out_hw(h: int, k: int, s: int) -> int:
    return (h + 2 * (k // 2) - k) // s + 1
